"""``pgcleave alter TABLE "ACTION"``: one ALTER TABLE on every server a table lives on.

``ALTER TABLE parent ADD COLUMN`` recurses to local partitions and to the foreign tables' local
definitions, but never reaches the shards' tables: every INSERT and ``SELECT *`` then fails
(seed 000). So pgcleave applies the action itself, atomically, with two-phase commit:

1. in one local transaction: lock the parent (ACCESS EXCLUSIVE, under lock_timeout with retry,
   so no local query is half-way into a shard while the shards are locked);
2. on each shard: ``BEGIN; ALTER TABLE <shard table> ACTION; PREPARE TRANSACTION gid``, after a
   row in ``pgcleave.twophase`` (committed separately) says the gid may exist;
3. still in the local transaction: ``ALTER TABLE parent ACTION`` and mark the gids 'commit' —
   that commit is the decision;
4. ``COMMIT PREPARED`` on each shard (a later step, retried by ``resume`` if a shard is away).

``recover_prepared(conn)`` settles what a kill left behind: gids marked 'commit' are committed,
gids still 'preparing' whose job is not running are rolled back. ``resume``/``rollback`` run it
(``execute.recovery_hook``); ``maintain`` can call it too.
"""

from __future__ import annotations

import re
import uuid
from typing import NotRequired, TypedDict, cast

import psycopg
from psycopg import sql

from .. import faults, preflight, servers
from ..catalog import TableInfo, snapshot
from ..connection import Connection
from ..errors import Refused, StepFailed
from ..execute import RETRYABLE, ActionContext
from ..names import QualifiedName
from ..plan import Lock, LockTaken, Plan, Step


class ShardChange(TypedDict):
    server: str
    partition: str  # the foreign partition, quoted
    remote: list[str]  # [schema, name] of its table on the shard
    statement: NotRequired[str]  # the ALTER TABLE run there


class AlterParams(TypedDict):
    table: list[str]
    target: str
    statement: str  # the ALTER TABLE run here
    shards: list[ShardChange]

_REFUSED_ACTIONS = re.compile(r"^\s*(ATTACH|DETACH)\s+PARTITION\b", re.I)


def plan_alter(conn: Connection, table: str, change: str) -> Plan:
    """Plan ``ALTER TABLE table <change>`` on this server and on every shard of the table."""
    text = change.strip().rstrip(";").strip()
    if not text:
        raise Refused("empty ALTER TABLE action", hint='e.g. pgcleave alter t "ADD c int"')
    if re.match(r"^\s*ALTER\s+TABLE\b", text, re.I):
        raise Refused("give only the action, not the ALTER TABLE command itself",
                      hint=f'pgcleave alter {table} "ADD difficulty SMALLINT"')
    if ";" in _strip_literals(text):
        raise Refused("one ALTER TABLE action (or a comma-separated list), not several "
                      "statements")
    if _REFUSED_ACTIONS.match(text):
        raise Refused("ATTACH/DETACH PARTITION concerns this server only",
                      hint="run it with plain ALTER TABLE (the guard lets it through), or use "
                           "`pgcleave move` for remote partitions")
    info = snapshot(conn, table)
    if info.parent is not None:
        raise Refused(f"{info.name} is a partition; alter the partitioned table "
                      f"{info.parent} instead")
    shards: list[ShardChange] = []
    if info.partitioning is not None:
        for leaf in info.partitioning.leaves():
            if leaf.kind != "f":
                continue
            row = conn.execute(
                "SELECT s.srvname, w.fdwname, ft.ftoptions FROM pg_foreign_table ft"
                " JOIN pg_foreign_server s ON s.oid = ft.ftserver"
                " JOIN pg_foreign_data_wrapper w ON w.oid = s.srvfdw WHERE ft.ftrelid = %s",
                [leaf.oid]).fetchone()
            assert row is not None
            if row[1] != "postgres_fdw":
                raise Refused(f"partition {leaf.name} uses {row[1]}, not postgres_fdw")
            opts = dict(o.split("=", 1) for o in (row[2] or []))
            shards.append(ShardChange(server=row[0], partition=leaf.name.quoted,
                                      remote=[opts.get("schema_name", leaf.name.schema),
                                              opts.get("table_name", leaf.name.name)]))
    stmt = sql.SQL("ALTER TABLE {} {}").format(info.name.ident, sql.SQL(text))
    for s in shards:
        s["statement"] = sql.SQL("ALTER TABLE {} {}").format(
            QualifiedName(*s["remote"]).ident, sql.SQL(text)).as_string(None)
    dbl = servers.dblink_schema(conn) if shards else "pgcleave"
    # asked once per server, however many partitions it holds
    without_2pc = sorted(srv for srv in {s["server"] for s in shards}
                         if _max_prepared(conn, dbl, srv) == 0)
    requires = [preflight.owner(info.name)]
    for srv in sorted({s["server"] for s in shards}):
        requires += [preflight.on_server(preflight.owner(QualifiedName(*s["remote"])), srv, dbl)
                     for s in shards if s["server"] == srv]
        if srv not in without_2pc:
            requires.append(preflight.on_server(preflight.prepared_transactions(), srv, dbl))
    steps: list[Step] = []
    notes: list[str] = []
    if shards and without_2pc:
        steps = _steps_without_2pc(info, text, stmt, shards, dbl, without_2pc)
        notes.append(f"{', '.join(without_2pc)} cannot prepare transactions "
                     "(max_prepared_transactions = 0): the change is applied server by server, "
                     "in the order that keeps every statement working between two steps")
    elif shards:
        shown = [sql.SQL("LOCK TABLE ONLY {} IN ACCESS EXCLUSIVE MODE").format(
            info.name.ident).as_string(None)]
        for s in shards:
            shown.append(f"-- on {s['server']}: BEGIN; {s['statement']}; "
                         "PREPARE TRANSACTION '<gid>'")
        shown += [stmt.as_string(None),
                  "UPDATE pgcleave.twophase SET state = 'commit' WHERE gid IN (<gids>)"]
        steps.append(Step(
            name="alter", description=f"prepare the change on {len(shards)} shard table(s), "
            f"then apply it to {info.name} and decide (two-phase commit)",
            statements=shown, action="alter.apply",
            params=AlterParams(table=[info.name.schema, info.name.name], target=str(info.name),
                               statement=stmt.as_string(None), shards=shards),
            locks=[LockTaken(Lock.ACCESS_EXCLUSIVE, str(info.name))]))
        steps.append(Step(
            name="commit-prepared", description="commit the prepared change on every shard",
            statements=[f"-- on {s['server']}: COMMIT PREPARED '<gid>'" for s in shards],
            action="alter.commit", params={}, ddl=False, transactional=False))
    else:
        steps.append(Step.sql("alter", f"apply the change to {info.name}", [
            sql.SQL("SET LOCAL pgcleave.allow_ddl = 'on'"), stmt],
            locks=[LockTaken(Lock.ACCESS_EXCLUSIVE, str(info.name))]))
    plan = Plan("alter", info.name.quoted, {"table": info.name.quoted, "action": text,
                                          "servers": sorted({s["server"] for s in shards})},
                steps, notes=notes, requires=requires)
    if shards:
        plan = plan.add(notes=["remote partitions on: " + ", ".join(
            f"{s['partition']} ({s['server']})" for s in shards)])
    else:
        plan = plan.add(notes=[f"{info.name} has no remote partition: this is a plain ALTER TABLE"])
    return plan


_COLUMN_ACTION = re.compile(
    r'^\s*(ADD|DROP)\s+(?:COLUMN\s+)?(?:IF\s+(?:NOT\s+)?EXISTS\s+)?("(?:[^"]|"")+"|[^\s"]+)(.*)$',
    re.I | re.S)


def _max_prepared(conn: Connection, dbl: str, server: str) -> int:
    """max_prepared_transactions of the shard behind ``server``, asked through dblink."""
    try:
        row = conn.execute(sql.SQL(
            "SELECT n FROM {}.dblink({}, 'SELECT current_setting(''max_prepared_transactions'')"
            "::int') AS t(n int)").format(sql.Identifier(dbl), sql.Literal(server))).fetchone()
    except psycopg.Error as exc:
        raise Refused(f"cannot ask server {server} whether it can prepare transactions: "
                      f"{str(exc).strip().splitlines()[0]}",
                      hint="start the server or fix the network; nothing was changed") from None
    return int(row[0]) if row else 0


def _steps_without_2pc(info: TableInfo, text: str, stmt: sql.Composable,
                       shards: list[ShardChange], dbl: str, servers_: list[str]) -> list[Step]:
    """ADD COLUMN: the shards first, then here (the shard tables' extra column takes its
    default on INSERTs through the foreign tables until then); DROP COLUMN: here first, then
    the shards (their NOT NULL dropped first, so INSERTs that no longer name the column keep
    working). Each step is guarded by the column's presence, so a resumed job skips what is
    done. Other changes need two-phase commit: refused."""
    m = _COLUMN_ACTION.match(text)
    why = ("needs two-phase commit on " + ", ".join(servers_) + " (max_prepared_transactions "
           "= 0 there): without it only ADD COLUMN and DROP COLUMN can be applied safely, one "
           "server at a time")
    fix = ("set max_prepared_transactions > 0 on " + ", ".join(servers_) + " and restart "
           "(RDS: in the parameter group), or make the change as ADD/DROP COLUMN")
    if (m is None or "," in _strip_literals(m.group(3)) or m.group(2).lower() in (
            "constraint", "primary", "unique", "check", "foreign", "exclude")):
        raise Refused(f"ALTER TABLE ... {text} {why}", hint=fix)
    verb, col_text, tail = m.group(1).upper(), m.group(2), m.group(3)
    col = (col_text[1:-1].replace('""', '"') if col_text.startswith('"') else col_text.lower())
    if verb == "ADD" and re.search(r"\bNOT\s+NULL\b", tail, re.I) and not re.search(
            r"\bDEFAULT\b", tail, re.I):
        raise Refused(f"ADD COLUMN {col_text} NOT NULL without a DEFAULT {why}: rows inserted "
                      "through the foreign tables before the last step would have no value",
                      hint="give it a DEFAULT, or " + fix)

    def has_col(table: QualifiedName) -> sql.Composable:
        return sql.SQL("SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass({}) AND attname "
                       "= {} AND attnum > 0 AND NOT attisdropped").format(
            table.literal, sql.Literal(col))

    here = Step.sql(
        f"alter:{info.name.name}", f"apply the change to {info.name}",
        [sql.SQL("SET LOCAL pgcleave.allow_ddl = 'on'"), stmt,
         sql.SQL("UPDATE pgcleave.sharded_tables SET columns = pgcleave.columns_signature(relid),"
                 " updated_at = clock_timestamp() WHERE relid = {}::regclass").format(
             info.name.literal)],
        locks=[LockTaken(Lock.ACCESS_EXCLUSIVE, str(info.name))],
        guard=sql.SQL("SELECT {} EXISTS ({})").format(
            sql.SQL("" if verb == "ADD" else "NOT"), has_col(info.name)),
        nothing_to_undo=True)
    remote_steps: list[Step] = []
    for s in shards:
        remote = QualifiedName(*s["remote"])
        todo: list[sql.Composable] = [sql.SQL(s["statement"])]
        if verb == "DROP":
            todo.insert(0, sql.SQL(
                "DO $pgcleave$ BEGIN IF EXISTS ({}) THEN EXECUTE {}; END IF; END $pgcleave$"
            ).format(sql.SQL("SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass({}) AND "
                             "attname = {} AND attnotnull").format(remote.literal,
                                                                   sql.Literal(col)),
                     sql.Literal(sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL").format(
                         remote.ident, sql.Identifier(col)).as_string(None))))
        remote_steps.append(Step.sql(
            f"alter:{s['server']}:{remote.name}", f"apply the change to {remote} on {s['server']}",
            [servers.remote_sql(dbl, s["server"], sql.SQL("; ").join(todo))],
            locks=[LockTaken(Lock.ACCESS_EXCLUSIVE, f"{remote} on {s['server']}")],
            guard=servers.remote_exists(dbl, s["server"], has_col(remote)) if verb == "ADD"
            else sql.SQL("SELECT NOT ({})").format(servers.remote_exists(
                dbl, s["server"], has_col(remote))),
            nothing_to_undo=True, transactional=False))
    return [*remote_steps, here] if verb == "ADD" else [here, *remote_steps]


def _strip_literals(text: str) -> str:
    return re.sub(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"", "''", text)


def _gid_prefix(conn: Connection) -> str:
    row = conn.execute("SELECT (SELECT system_identifier FROM pg_control_system()),"
                       " (SELECT oid FROM pg_database WHERE datname = current_database())"
                       ).fetchone()
    assert row is not None
    return f"pgcleave:{row[0]}:{row[1]}"


def apply(ctx: ActionContext) -> None:
    p = cast(AlterParams, ctx.params)
    conn = ctx.conn
    decided = conn.execute("SELECT count(*) FROM pgcleave.twophase WHERE job_id = %s AND"
                           " state IN ('commit', 'done')", [ctx.job_id]).fetchone()
    if decided and decided[0]:
        return  # a killed run got as far as the decision: only the commits are left
    table = QualifiedName(*p["table"])
    side = ctx.connect("alter-log")
    try:
        ctx.retry_locks(lambda: _attempt(ctx, side, table),
                        hint="a long transaction holds the table here or on a shard")
    finally:
        side.close()


def _attempt(ctx: ActionContext, side: Connection, table: QualifiedName) -> None:
    p = cast(AlterParams, ctx.params)
    conn = ctx.conn
    prefix = _gid_prefix(conn)
    remotes: list[tuple[str, str, Connection]] = []  # gid, server, connection
    try:
        with conn.transaction():
            ctx.set_lock_timeout(conn)
            conn.execute("SET LOCAL pgcleave.allow_ddl = 'on'")
            # ONLY: LOCK would recurse into the foreign partitions, which cannot be locked
            conn.execute(sql.SQL("LOCK TABLE ONLY {} IN ACCESS EXCLUSIVE MODE").format(
                table.ident))
            for i, s in enumerate(p["shards"]):
                gid = f"{prefix}:{ctx.job_id}:{uuid.uuid4().hex[:8]}:{i}"
                side.execute("INSERT INTO pgcleave.twophase (gid, server, job_id, target,"
                             " statement) VALUES (%s, %s, %s, %s, %s)",
                             [gid, s["server"], ctx.job_id, p["target"], s["statement"]])
                rc = servers.connect_remote(conn, s["server"], purpose="alter")
                remotes.append((gid, s["server"], rc))
                rc.execute("BEGIN")
                ctx.set_lock_timeout(rc)
                rc.execute(s["statement"].encode())
                rc.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
                faults.kill_at("kill-in", "alter-prepared")
            conn.execute(p["statement"].encode())
            conn.execute("UPDATE pgcleave.twophase SET state = 'commit', updated_at ="
                         " clock_timestamp() WHERE gid = ANY(%s)", [[g for g, _, _ in remotes]])
            conn.execute("UPDATE pgcleave.sharded_tables SET columns ="
                         " pgcleave.columns_signature(relid), updated_at = clock_timestamp()"
                         " WHERE relid = %s::regclass", [table.quoted])
            faults.kill_at("kill-in", "alter-before-decision")
    except BaseException as exc:
        gids = [g for g, _, _ in remotes]
        row = side.execute("SELECT count(*) FROM pgcleave.twophase WHERE gid = ANY(%s) AND"
                           " state = 'commit'", [gids]).fetchone() if gids else (0,)
        if row and row[0]:
            raise  # the decision committed after all: the commits step finishes it
        # not decided: undo what was prepared (the recovery pass would do it otherwise)
        for gid, _server, rc in remotes:
            try:
                if rc.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    rc.execute("ROLLBACK")
                else:
                    _finish(rc, gid, commit=False)
                side.execute("UPDATE pgcleave.twophase SET state = 'aborted', updated_at ="
                             " clock_timestamp() WHERE gid = %s", [gid])
            except psycopg.Error:
                pass  # shard gone: recover_prepared rolls it back later
        if isinstance(exc, psycopg.Error) and not isinstance(exc, RETRYABLE):
            raise StepFailed(f"the change failed, nothing was changed anywhere: "
                             f"{str(exc).strip()}", job_id=ctx.job_id,
                             hint=f"fix the action, then `pgcleave rollback {ctx.job_id}` and "
                                  "run `pgcleave alter` again") from None
        raise
    finally:
        for _gid, _server, rc in remotes:
            if not rc.closed:
                rc.close()


def _finish(rc: Connection, gid: str, *, commit: bool) -> bool:
    """COMMIT/ROLLBACK PREPARED gid if it is still pending there. True when it was."""
    row = rc.execute("SELECT count(*) FROM pg_prepared_xacts WHERE gid = %s", [gid]).fetchone()
    if not row or not row[0]:
        return False
    verb = "COMMIT PREPARED {}" if commit else "ROLLBACK PREPARED {}"
    rc.execute(sql.SQL(verb).format(sql.Literal(gid)))
    return True


def commit(ctx: ActionContext) -> None:
    rows = ctx.conn.execute("SELECT gid, server FROM pgcleave.twophase WHERE job_id = %s"
                            " AND state = 'commit' ORDER BY gid", [ctx.job_id]).fetchall()
    for gid, server in rows:
        with servers.connect_remote(ctx.conn, server, purpose="alter-commit") as rc:
            _finish(rc, gid, commit=True)
        ctx.conn.execute("UPDATE pgcleave.twophase SET state = 'done', updated_at ="
                         " clock_timestamp() WHERE gid = %s", [gid])


def recover_prepared(conn: Connection) -> list[tuple[str, str]]:
    """Settle prepared transactions of ``pgcleave alter`` on the shards: commit those decided
    here, roll back those never decided whose job is not running. Shards that cannot be
    reached are skipped (run again later). Returns ``(gid, what was done)`` pairs."""
    if conn.execute("SELECT to_regclass('pgcleave.twophase')").fetchone() == (None,):
        return []
    rows = conn.execute("SELECT gid, server, target, state FROM pgcleave.twophase"
                        " WHERE state IN ('preparing', 'commit') ORDER BY gid").fetchall()
    done: list[tuple[str, str]] = []
    for gid, server, target, state in rows:
        key = "pgcleave:" + str(target)
        if state == "preparing":
            # the job that prepared it holds this advisory lock while it may still decide
            got = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                               [key]).fetchone()
            if not (got and got[0]):
                continue
        try:
            try:
                rc = servers.connect_remote(conn, server, purpose="recover", timeout=5)
            except (StepFailed, Refused):
                continue
            with rc:
                _finish(rc, gid, commit=state == "commit")
            new = "done" if state == "commit" else "aborted"
            conn.execute("UPDATE pgcleave.twophase SET state = %s, updated_at ="
                         " clock_timestamp() WHERE gid = %s", [new, gid])
            done.append((gid, "committed" if new == "done" else "rolled back"))
        finally:
            if state == "preparing":
                conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", [key])
    return done
