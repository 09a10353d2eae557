"""Retention: retire range partitions whose upper bound is past the policy's horizon.

Per partition, oldest first (ordered by bounds, never by name):
1. detach. ``DETACH ... CONCURRENTLY`` (SHARE UPDATE EXCLUSIVE on the parent: writers never
   wait) when the parent has no DEFAULT partition. PostgreSQL refuses CONCURRENTLY when a DEFAULT
   exists; then a plain ``DETACH`` runs under ``lock_timeout`` with retries: it takes ACCESS
   EXCLUSIVE on the parent, the partition and the DEFAULT for a few milliseconds (no scan).
   A concurrent detach interrupted in its second phase (a crash, or ``lock_timeout`` while it
   waits for older snapshots) leaves the partition "detach pending"; the action sees that and
   runs ``DETACH ... FINALIZE`` instead, so a rerun or ``resume`` always completes it.
2. ``archive``: under a SHARE lock on the detached table, stream it to a file, read the file
   back and compare row count (and checksum), write the manifest, then drop the table in the
   same transaction. ``drop``: drop the detached table.

With ``archive``, the archive is written *before* the detach (step ``prearchive``), from one
REPEATABLE READ snapshot of the partition while it is still attached (readers and writers go on;
pg_dump reads the same exported snapshot). The manifest records the row count and an
order-independent digest of the rows (``sum(hashtextextended(row::text, 0))``) in that snapshot.
Whatever fails there (pg_dump, a full disk, a cancelled scan) leaves the partition attached and
visible. After the detach, the archive step recomputes the digest of the detached table under
its SHARE lock: equal, it only drops the table; different (the application wrote to that old
range between the snapshot and the detach), it writes the archive again from the detached table,
as 0.1.0 did. So rows are hidden only from the detach to the drop, with no file written in
between in the usual case.

Rows that arrive later for a retired range go to the DEFAULT partition, where they stay
visible; ``check`` reports them and ``maintain`` never recreates a partition that old.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path
from typing import Any, TypedDict, cast

from psycopg import sql

from .. import archive as arch
from .. import preflight
from ..ddl.exclusion import default_exclusion
from ..execute import ActionContext
from ..levels import Level, RangePart
from ..names import QualifiedName, child_name
from ..plan import Lock, LockTaken, Plan, Residue, Statement, Step
from ..policy import Policy


class Name(TypedDict):
    schema: str
    name: str


class DetachParams(TypedDict):
    parent: Name
    partition: Name
    concurrently: bool


class ArchiveParams(TypedDict):
    parent: Name
    partition: Name
    bound: str
    key_column: str
    key_type: str
    dir: str
    format: str  # copy or pg_dump


class LoadParams(TypedDict):
    manifest: str
    table: Name
    cols: list[str]


def _qn(d: Name) -> QualifiedName:
    return QualifiedName(d["schema"], d["name"])


def _qd(q: QualifiedName) -> Name:
    return Name(schema=q.schema, name=q.name)


def attached_guard(parent: QualifiedName, part: QualifiedName) -> sql.Composable:
    """True once ``part`` is no longer (even pending) a partition of ``parent``."""
    return sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = "
                   "to_regclass({}) AND inhparent = to_regclass({}))").format(
        part.literal, parent.literal)


def gone_guard(part: QualifiedName) -> sql.Composable:
    return sql.SQL("SELECT to_regclass({}) IS NULL").format(part.literal)


def detach_sql(parent: QualifiedName, part: QualifiedName, mode: str) -> sql.Composed:
    suffix = {"concurrently": " CONCURRENTLY", "finalize": " FINALIZE", "plain": ""}[mode]
    return sql.SQL("ALTER TABLE {} DETACH PARTITION {}" + suffix).format(parent.ident, part.ident)


def retention_steps(policy: Policy, level: Level, parts: list[RangePart],
                    archive_dir: str | None) -> list[Step]:
    steps: list[Step] = []
    concurrently = level.default is None
    for rp in parts:
        part = rp.part.name
        step = detach_step(level.parent, part, concurrently=concurrently,
                           pending=rp.part.detach_pending)
        if policy.retention_action in ("archive", "drop"):
            # until the next step archives (or drops) it, its rows are neither visible through
            # the parent nor archived; the next maintain run resumes the job
            step = dataclasses.replace(
                step, residue=Residue.HIDES,
                residue_note=f"rows of {part} are not visible through {level.parent} and not "
                             f"{'archived' if policy.retention_action == 'archive' else 'dropped'}"
                             " yet (detached by retention)")
        if policy.retention_action == "archive":
            assert archive_dir is not None
            steps.append(prearchive_step(level, rp, archive_dir, policy.archive_format))
        steps.append(step)
        if policy.retention_action == "archive":
            assert archive_dir is not None
            steps.append(archive_step(level, rp, archive_dir, policy.archive_format))
        elif policy.retention_action == "drop":
            steps.append(Step.sql(
                f"drop:{part.name}", f"drop retired partition {part} (detached)",
                [sql.SQL("DROP TABLE IF EXISTS {}").format(part.ident)],
                locks=[LockTaken(Lock.ACCESS_EXCLUSIVE, f"{part} (detached)")],
                guard=gone_guard(part)))
        else:
            steps.append(Step.sql(
                f"record:{part.name}", f"record that {part} was detached by retention",
                [record_sql(level.parent, part, rp.part.bound, "detach", None, None, None)],
                ddl=False, guard=sql.SQL(
                    "SELECT EXISTS (SELECT 1 FROM pgcleave.archives WHERE partition = {} AND "
                    "action = 'detach' AND restored_at IS NULL)").format(
                    sql.Literal(part.quoted))))
    return steps


def require_archive_tools(conn: Any, plan: Plan) -> None:
    """Refuse, while planning and before anything is detached, a plan that archives with
    pg_dump when no pg_dump as new as the server is found (pg_dump refuses a newer server, and
    it would only say so after the detach)."""
    if any(s.action == "retention.archive" and s.params.get("format") == "pg_dump"
           for s in plan.steps):
        arch.require_pg_dump(int(conn.info.server_version),
                             server_bindir=arch.local_server_bindir(conn))


def detach_step(parent: QualifiedName, part: QualifiedName, *, concurrently: bool,
                pending: bool = False) -> Step:
    mode = "finalize" if pending else ("concurrently" if concurrently else "plain")
    if mode == "plain":
        desc = (f"detach {part} from {parent} (plain DETACH: CONCURRENTLY is refused while the "
                "table has a DEFAULT partition; brief ACCESS EXCLUSIVE, no scan)")
        locks = [LockTaken(Lock.ACCESS_EXCLUSIVE, str(parent)),
                 LockTaken(Lock.ACCESS_EXCLUSIVE, str(part)),
                 LockTaken(Lock.ACCESS_EXCLUSIVE, "the DEFAULT partition")]
    else:
        desc = (f"{'finish the pending detach of' if pending else 'detach'} {part} from "
                f"{parent} concurrently")
        locks = [LockTaken(Lock.SHARE_UPDATE_EXCLUSIVE, str(parent)),
                 LockTaken(Lock.ACCESS_EXCLUSIVE, f"{part} (waits for older snapshots)")]
    return Step(
        name=f"detach:{part.name}", description=desc,
        statements=[detach_sql(parent, part, mode).as_string(None)], locks=locks,
        transactional=False, guard=attached_guard(parent, part).as_string(None),
        action="retention.detach",
        params=DetachParams(parent=_qd(parent), partition=_qd(part),
                            concurrently=mode != "plain"))


def detach(ctx: ActionContext) -> None:
    """Detach, finalizing a pending detach whenever one is found (from this or an earlier
    run), retrying lock timeouts with jittered backoff up to the retry limit."""
    dp = cast(DetachParams, ctx.params)
    parent, part = _qn(dp["parent"]), _qn(dp["partition"])
    concurrently = dp["concurrently"]
    conn = ctx.conn
    hint = ("a long transaction holds the table; the next maintain run finishes the detach "
            "(it is left pending or attached, never half-done)")

    def once() -> bool:
        """One detach statement for the state the partition is in now; True once it is gone.
        Read again on every attempt: a CONCURRENTLY that gave up in its second phase leaves
        the partition pending, and what it needs next is FINALIZE."""
        row = conn.execute(
            "SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = to_regclass(%s)"
            " AND inhparent = to_regclass(%s)", [part.quoted, parent.quoted]).fetchone()
        if row is None:
            return True
        if row[0]:
            ctx.progress(f"finalizing the pending detach of {part}")
        how = "finalize" if row[0] else "concurrently" if concurrently else "plain"
        if how == "plain":
            with conn.transaction():
                ctx.set_lock_timeout(conn)
                conn.execute(detach_sql(parent, part, how))
            return False
        # FINALIZE and CONCURRENTLY refuse to run in a transaction block
        ctx.set_lock_timeout(conn, local=False)
        try:
            conn.execute(detach_sql(parent, part, how))
        finally:
            conn.execute("RESET lock_timeout")
        return False

    while not ctx.retry_locks(once, what=f"detaching {part}", hint=hint):
        pass  # done, or pending after an interrupted phase two: look again


def archive_step(level: Level, rp: RangePart, archive_dir: str, fmt: str) -> Step:
    part = rp.part.name
    where = _archive_path(archive_dir, part, fmt)
    shown: list[str] = [
        sql.SQL("LOCK TABLE {} IN SHARE MODE").format(part.ident).as_string(None),
        digest_sql(part).as_string(None) + "  -- as in the manifest: only the DROP; otherwise "
        "(written to after the archive) the COPY again",
        (sql.SQL("COPY (SELECT * FROM ONLY {}) TO STDOUT").format(part.ident).as_string(None)
         + f"  -- gzip into {where}, read back and counted" if fmt == "copy"
         else f"-- pg_dump --format=custom --table={part.quoted} --file={where}; rows counted "
              "with pg_restore"),
        sql.SQL("DROP TABLE {}").format(part.ident).as_string(None),
    ]
    return Step(
        name=f"archive:{part.name}",
        description=f"check {part} ({rp.part.bound}) against its archive {where} (write it "
                    "again if the table changed since), then drop it",
        statements=shown,
        locks=[LockTaken(Lock.SHARE, f"{part} (detached)"),
               LockTaken(Lock.ACCESS_EXCLUSIVE, f"{part} (detached, to drop it)")],
        transactional=True, guard=gone_guard(part).as_string(None), action="retention.archive",
        params=_archive_params(level, rp, archive_dir, fmt))


def prearchive_step(level: Level, rp: RangePart, archive_dir: str, fmt: str) -> Step:
    part = rp.part.name
    where = _archive_path(archive_dir, part, fmt)
    shown = [
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        digest_sql(part).as_string(None) + "  -- recorded in the manifest",
        (sql.SQL("COPY (SELECT * FROM ONLY {}) TO STDOUT").format(part.ident).as_string(None)
         + f"  -- gzip into {where}, read back and counted" if fmt == "copy"
         else "SELECT pg_export_snapshot()  -- then pg_dump --format=custom --snapshot=... "
              f"--table={part.quoted} --file={where}; rows counted with pg_restore"),
    ]
    return Step(
        name=f"prearchive:{part.name}",
        description=f"archive {part} ({rp.part.bound}) to {where} while it is still attached, "
                    "from one snapshot (readers and writers go on)",
        statements=shown, locks=[LockTaken(Lock.ACCESS_SHARE, str(part))],
        transactional=True, action="retention.prearchive", residue=Residue.SPACE,
        residue_note=f"{where} and its manifest (the partition stays attached)",
        params=_archive_params(level, rp, archive_dir, fmt))


def _archive_path(archive_dir: str, part: QualifiedName, fmt: str) -> str:
    stem = arch.base_name(part)
    return str(Path(archive_dir) / (stem + (".copy.gz" if fmt == "copy" else ".dump")))


def _archive_params(level: Level, rp: RangePart, archive_dir: str, fmt: str) -> ArchiveParams:
    return ArchiveParams(parent=_qd(level.parent), partition=_qd(rp.part.name),
                         bound=rp.part.bound, key_column=level.key, key_type=level.key_type,
                         dir=archive_dir, format=fmt)


def digest_sql(part: QualifiedName) -> sql.Composed:
    """Row count and an order-independent digest of a table's rows (a heap scan's order is not
    stable: synchronized scans start anywhere)."""
    return sql.SQL("SELECT count(*) || ':' || coalesce(sum(hashtextextended(t::text, 0)), 0)"
                   " FROM ONLY {} t").format(part.ident)


def _one(conn: Any, query: sql.Composable) -> Any:
    row = conn.execute(query).fetchone()
    return row[0] if row else None


def _digest(conn: Any, part: QualifiedName) -> str:
    return str(_one(conn, digest_sql(part)))


def record_sql(parent: QualifiedName, part: QualifiedName, bound: str, what: str,
               path: str | None, rows: int | None, sha: str | None) -> sql.Composed:
    return sql.SQL(
        "INSERT INTO pgcleave.archives (table_schema, table_name, partition, bound, action, "
        "path, rows, sha256) VALUES ({}, {}, {}, {}, {}, {}, {}, {})").format(
        sql.Literal(parent.schema), sql.Literal(parent.name), sql.Literal(part.quoted),
        sql.Literal(bound), sql.Literal(what), sql.Literal(path), sql.Literal(rows),
        sql.Literal(sha))


def _write_archive(ctx: ActionContext, p: ArchiveParams, digest: str, *,
                   snapshot: str | None = None) -> tuple[arch.Manifest, Path, Path]:
    """Write the data file and its manifest from the caller's transaction (which holds the
    snapshot or the lock that keeps the rows still); returns (manifest, its path, data path)."""
    parent, part = _qn(p["parent"]), _qn(p["partition"])
    directory, stem, conn = Path(p["dir"]), arch.base_name(part), ctx.conn
    expected = int(digest.split(":", 1)[0])
    columns = arch.columns_of(conn, part)
    if p["format"] == "pg_dump":
        path, rows, size = arch.write_pg_dump(ctx.settings.resolved_dsn(), part, directory,
                                              stem, snapshot=snapshot)
        sha, encoding = None, "pg_dump-custom"
    else:
        path, rows, sha, size = arch.write_copy(conn, part, directory, stem)
        encoding = "copy-text+gzip"
    if rows != expected:
        raise arch.ArchiveError(f"{path} holds {rows} rows, {part} has {expected}; nothing "
                                "dropped")
    ver = conn.execute("SHOW server_version_num").fetchone()
    m = arch.Manifest(
        table={"schema": parent.schema, "name": parent.name},
        partition={"schema": part.schema, "name": part.name}, bound=p["bound"],
        key_column=p["key_column"], key_type=p["key_type"], columns=columns, rows=rows,
        sha256=sha, data_file=path.name, encoding=encoding, bytes=size,
        server_version=int(ver[0]) if ver else 0, extra={"digest": digest})
    return m, arch.write_manifest(m, directory, stem), path


def prearchive(ctx: ActionContext) -> None:
    """Archive the still-attached partition from one REPEATABLE READ snapshot: no lock that
    any application statement waits for, and nothing hidden if it fails."""
    p = cast(ArchiveParams, ctx.params)
    part = _qn(p["partition"])
    conn = ctx.conn

    def attempt() -> tuple[arch.Manifest, Path, str] | None:
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            ctx.set_lock_timeout(conn)  # waits for a lock only as the first scan starts
            if not _one(conn, sql.SQL("SELECT to_regclass({}) IS NOT NULL").format(
                    sql.Literal(part.quoted))):
                return None  # already archived and dropped by an earlier run
            digest = _digest(conn, part)
            snapshot = (str(_one(conn, sql.SQL("SELECT pg_export_snapshot()")))
                        if p["format"] == "pg_dump" else None)
            m, _, path = _write_archive(ctx, p, digest, snapshot=snapshot)
            return m, path, digest

    done = ctx.retry_locks(attempt, what=f"archiving {part}")
    if done is None:
        return
    m, path, digest = done
    ctx.save({"rows": m.rows, "path": str(path), "digest": digest})
    ctx.progress(f"archived {m.rows} rows of {part} to {path} (still attached)")


def archive(ctx: ActionContext) -> None:
    p = cast(ArchiveParams, ctx.params)
    parent, part = _qn(p["parent"]), _qn(p["partition"])
    directory = Path(p["dir"])
    stem = arch.base_name(part)
    conn = ctx.conn
    result: dict[str, Any] = {}

    def attempt() -> float:
        t0 = time.monotonic()
        with conn.transaction():
            ctx.set_lock_timeout(conn)
            exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [part.quoted]
                                  ).fetchone()
            if not (exists and exists[0]):
                return 0.0
            conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(part.ident))
            ctx.set_lock_timeout(conn, 0)
            digest = _digest(conn, part)
            found = _prewritten(directory, stem, digest)
            if found is None:
                if (directory / f"{stem}.json").exists():
                    ctx.progress(f"{part} changed after its archive was written: writing it "
                                 "again")
                m, mpath, path = _write_archive(ctx, p, digest)
            else:
                m, mpath = found
                path = m.data_path(mpath)
            ctx.set_lock_timeout(conn)
            conn.execute(sql.SQL("DROP TABLE {}").format(part.ident))
            conn.execute(record_sql(parent, part, p["bound"], "archive", str(mpath), m.rows,
                                    m.sha256))
            result.update(rows=m.rows, path=str(path), manifest=str(mpath), bytes=m.bytes)
            ctx.save(dict(result))
        return (time.monotonic() - t0) * 1000

    ctx.retry_locks(attempt)
    if result:
        ctx.progress(f"archived {result['rows']} rows of {part} to {result['path']}",
                     final=True)


def _prewritten(directory: Path, stem: str, digest: str
                ) -> tuple[arch.Manifest, Path] | None:
    """The archive ``prearchive`` wrote, with its manifest's path, if it holds exactly these
    rows; None when there is none (a plan of 0.1.0 archived only after the detach) or the
    table changed since."""
    mpath = directory / f"{stem}.json"
    if not mpath.exists():
        return None
    m, mpath = arch.Manifest.read(mpath)
    if m.extra.get("digest") == digest and m.data_path(mpath).exists():
        return m, mpath
    return None


# -- restore -----------------------------------------------------------------------------------
def plan_restore(conn: Any, path: str, *, as_table: str | None = None) -> Plan:
    """Bring an archived partition back: recreate it with the parent's definition and a
    CHECK of its bound, COPY the rows in (verified against the manifest), then attach it
    without any scan (and, with a DEFAULT partition, after an excluding CHECK on it is
    validated). ``as_table`` restores into a standalone table instead."""
    from ..catalog import snapshot
    from ..catalog.table import RANGE_BOUND_RE, split_literals
    from ..errors import Refused
    from ..policy import load as load_policy

    m, mpath = arch.Manifest.read(path)
    data = m.data_path(mpath)
    if not data.exists():
        raise Refused(f"the archive's data file {data} is missing")
    info = snapshot(conn, m.parent.quoted)
    have = [(c.name, c.type) for c in info.columns]
    want = [(c["name"], c["type"]) for c in m.columns]
    if have != want:
        raise Refused(f"{info.name} no longer has the columns the archive recorded",
                      hint=f"archive: {want}; table now: {have}")
    target = (resolve_name(conn, as_table, info.name) if as_table else m.partition_name)
    exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [target.quoted]).fetchone()
    if exists and exists[0]:
        raise Refused(f"{target} already exists", hint="restore under another name with "
                      "--as-table NAME")
    mt = RANGE_BOUND_RE.match(m.bound)
    if mt is None:
        raise Refused(f"unsupported bound in the manifest: {m.bound}")
    lo_s, hi_s = split_literals(mt.group(1))[0], split_literals(mt.group(2))[0]
    key = sql.Identifier(m.key_column)
    typ = sql.SQL(m.key_type)

    def val(s: str) -> sql.Composable:
        if s.upper() in ("MINVALUE", "MAXVALUE") or not (s.startswith("'") or
                                                         s.replace(".", "").lstrip("-")
                                                         .isdigit()):
            raise Refused(f"unsupported bound value {s!r} in the manifest")
        return sql.SQL("({})::{}").format(sql.SQL(s), typ)

    in_range = sql.SQL("({k} IS NOT NULL AND {k} >= {lo} AND {k} < {hi})").format(
        k=key, lo=val(lo_s), hi=val(hi_s))
    warnings: list[str] = []
    notes = [f"restore {m.rows} rows of {m.partition_name} ({m.bound}) from {data}"]
    steps: list[Step] = [Step.sql(
        "restore:create", f"create {target} like {info.name}, with a CHECK of its bound",
        [sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
                 "INCLUDING INDEXES INCLUDING GENERATED INCLUDING STORAGE)").format(
            target.ident, info.name.ident),
         sql.SQL("ALTER TABLE {} ADD CONSTRAINT pgcleave_bound CHECK {}").format(
             target.ident, in_range)],
        guard=sql.SQL("SELECT to_regclass({}) IS NOT NULL").format(target.literal),
        undo=[sql.SQL("DROP TABLE IF EXISTS {}").format(target.ident)])]
    cols = [c["name"] for c in m.columns if not c.get("generated")]
    steps.append(Step(
        name="restore:load", description=f"COPY the {m.rows} archived rows into {target} and "
        "check count and checksum against the manifest",
        statements=[sql.SQL("COPY {} ({}) FROM STDIN").format(
            target.ident, sql.SQL(", ").join(map(sql.Identifier, cols))).as_string(None)
            + f"  -- from {data}"],
        locks=[LockTaken(Lock.ROW_EXCLUSIVE, f"{target} (new)")], transactional=True,
        ddl=False, action="retention.load",
        params=LoadParams(manifest=str(mpath), table=_qd(target), cols=cols)))
    if as_table is None:
        if info.partitioning is None or info.partitioning.strategy != "range":
            raise Refused(f"{info.name} is not range-partitioned any more",
                          hint="restore with --as-table NAME")
        d = info.partitioning.default
        if d is not None:
            late = conn.execute(sql.SQL("SELECT count(*) FROM ONLY {} WHERE {}").format(
                d.name.ident, in_range)).fetchone()
            if late and late[0]:
                raise Refused(
                    f"{late[0]} rows for this range arrived later and sit in {d.name}",
                    hint="restore with --as-table NAME and merge them by hand, or delete the "
                         "late rows first")
            # named after the target: a leftover of another restore never passes for this one's
            guard_name = child_name("pgcleave_restore", target.name)
            steps += default_exclusion(
                d.name, guard_name, in_range, names=("restore:guard", "restore:validate"),
                what=f"the range of {target}")
        attach: list[Statement] = [sql.SQL("ALTER TABLE {} ATTACH PARTITION {} {}").format(
            info.name.ident, target.ident, sql.SQL(m.bound))]
        if d is not None:
            attach.append(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                d.name.ident, sql.Identifier(guard_name)))
        steps.append(Step.sql(
            "restore:attach", f"attach {target} to {info.name} (no scan: CHECKs prove it)",
            attach, locks=[LockTaken(Lock.SHARE_UPDATE_EXCLUSIVE, str(info.name)),
                           LockTaken(Lock.ACCESS_EXCLUSIVE, f"{target} and the DEFAULT")],
            guard=attached_guard(info.name, target).as_string(None).replace(
                "SELECT NOT EXISTS", "SELECT EXISTS")))
        policy = load_policy(conn, info.name)
        if policy is not None and policy.retention:
            warnings.append(f"the policy of {info.name} retires data older than "
                            f"{policy.retention}: if this range is that old, the next "
                            "`maintain` retires it again (change it with `pgcleave config "
                            "--retention`, or restore with --as-table)")
    steps.append(Step.sql(
        "restore:record", "mark the archive restored",
        [sql.SQL("UPDATE pgcleave.archives SET restored_at = now() WHERE partition = {} AND "
                 "path = {} AND restored_at IS NULL").format(
            sql.Literal(m.partition_name.quoted), sql.Literal(str(mpath)))], ddl=False))
    return Plan("restore", info.name.quoted if as_table is None else target.quoted,
                {"archive": str(mpath), "as_table": as_table}, steps, notes=notes,
                warnings=warnings, requires=preflight.table_change(
                    info.name if as_table is None else target))


def resolve_name(conn: Any, name: str, like: QualifiedName) -> QualifiedName:
    """A new table's name as the user typed it (``x`` lands in the parent's schema)."""
    row = conn.execute("SELECT parse_ident(%s)", [name]).fetchone()
    parts = list(row[0]) if row else [name]
    return QualifiedName(parts[0], parts[1]) if len(parts) == 2 else like.sibling(parts[0])


def load(ctx: ActionContext) -> None:
    p = cast(LoadParams, ctx.params)
    m, mpath = arch.Manifest.read(p["manifest"])
    target = _qn(p["table"])
    conn = ctx.conn
    with conn.transaction():
        conn.execute(sql.SQL("TRUNCATE {}").format(target.ident))
        query = sql.SQL("COPY {} ({}) FROM STDIN").format(
            target.ident, sql.SQL(", ").join(map(sql.Identifier, p["cols"])))
        sha = hashlib.sha256()
        with conn.cursor() as cur, cur.copy(query) as cp:
            for chunk in arch.data_rows(m, mpath):
                sha.update(chunk)
                cp.write(chunk)
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(target.ident)).fetchone()
        n = int(row[0]) if row else -1
        if n != m.rows:
            raise arch.ArchiveError(f"loaded {n} rows from {mpath}, the manifest says {m.rows}")
        if m.sha256 and sha.hexdigest() != m.sha256:
            raise arch.ArchiveError(f"{mpath}: checksum differs from the manifest")
        ctx.save({"rows": n})
    ctx.progress(f"loaded {n} rows into {target}", final=True)
