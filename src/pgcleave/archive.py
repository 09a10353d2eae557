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
import shutil
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
    with gzip.open(tmp, "wb", compresslevel=6) as gz, conn.cursor() as cur, \
            cur.copy(query) as cp:
        for chunk in cp:
            data = bytes(chunk)
            sha.update(data)
            rows += data.count(b"\n")
            gz.write(data)
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


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        try:
            from .sandbox import find_bindir
            cand = find_bindir() / name
            if cand.exists():
                return str(cand)
        except PgcleaveError:
            pass
        raise Refused(f"{name} is not installed here", hint="install the PostgreSQL client "
                      "tools, or use --archive-format copy")
    return found


def write_pg_dump(dsn: str, table: QualifiedName, directory: Path, stem: str
                  ) -> tuple[Path, int, int]:
    """``pg_dump --format=custom`` of one table, then its rows counted from pg_restore's
    output. Returns (path, rows, bytes)."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{stem}.dump"
    tmp = directory / f".{stem}.dump.tmp"
    proc = subprocess.run([_pg_bin("pg_dump"), "--format=custom", "--no-owner", "--no-acl",
                           f"--table={table.quoted}", f"--file={tmp}", f"--dbname={dsn}"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise ArchiveError(f"pg_dump of {table} failed: {proc.stderr.strip()[:500]}")
    rows = sum(1 for _ in iter_pg_dump_rows(tmp, count_only=True))
    os.replace(tmp, final)
    return final, rows, final.stat().st_size


def iter_pg_dump_rows(path: Path, *, count_only: bool = False) -> Iterator[bytes]:
    """The COPY data lines of a custom-format dump, via ``pg_restore --data-only -f -``."""
    proc = subprocess.Popen([_pg_bin("pg_restore"), "--data-only", "--file=-", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
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
