"""``pgcleave move PARTITION --to SERVER|local``: put a partition on another server, online.

The recipe (DESIGN.md section 3), for a move out (local table -> postgres_fdw foreign partition):

1. create the shard's table from the local definition (columns, NOT NULL, CHECKs, keys,
   indexes) plus ``CHECK`` equal to the partition constraint, so an UPDATE that would move a row
   out of the foreign partition fails on the shard instead of silently changing it in place;
2. publish the partition (and the tiny ``pgcleave.move_markers`` table) and subscribe the shard
   to it: the initial copy and every later write of the application reach the shard;
3. wait until the copy is done and the shard has caught up (a marker row written here is seen
   there: replication applies in commit order, so everything committed before it is there too);
4. give the DEFAULT partition a validated ``CHECK (NOT <partition constraint>)`` online, so the
   ATTACH at cut-over does not scan the DEFAULT under an exclusive lock;
5. cut over in one short transaction: ``LOCK parent IN EXCLUSIVE MODE`` (writes wait, reads go
   on), marker round trip, count + hash of the rows on both sides, then DETACH the local table,
   ATTACH the foreign table (its bound proven by the constraints, no scan) and give it the
   partition's name. The old local table stays, renamed ``<name>_pgc_local``, until
   ``--drop-source``;
6. drop the subscription, publication and helper CHECK.

A move back (``--to local``) runs the same recipe the other way: the shard publishes, this
database subscribes into a new local table, and the cut-over swaps the foreign partition for it.

Every step has a guard and (before the cut-over) an undo: a kill or an unreachable shard at any
point leaves a job that ``pgcleave resume`` finishes or ``pgcleave rollback`` undoes. Until the
cut-over commits the application writes to the local rows only; after it, to the shard only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NotRequired, TypedDict

from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from .. import servers
from ..catalog import Partition, TableInfo, relation_exists, snapshot
from ..connection import Connection, redact
from ..ddl.bounds import portable_hash_check
from ..ddl.capture import CopyAcross, key_log_function
from ..ddl.exclusion import default_exclusion, drop_default_exclusion
from ..ddl.parallel import Jobs, resolve_jobs
from ..ddl.shards import (
    BOUND_CHECK,
    ddl_guard_step,
    first_move_warnings,
    foreign_table_ddl,
    is_superuser,
    refuse_parent_keys,
    require_logical,
    require_replica_identity,
    shard_table_step,
)
from ..ddl.tables import collist, parse_indexdef
from ..errors import NotFound, Refused, StepFailed
from ..names import QualifiedName, child_name
from ..plan import Lock, LockTaken, Plan, Statement, Step


# -- the parameters of move's actions (move_run.py), as journaled -------------------------------
class SubscribeParams(TypedDict):
    side: NotRequired[str]  # remote: the shard subscribes; local: this database does
    direction: NotRequired[str]  # what jobs of earlier versions journaled instead of side
    server: str
    name: str  # publication, subscription and slot
    origin_dsn: NotRequired[bool]  # True: the run must be given --origin-dsn (a secret)


class MoveParams(TypedDict):
    direction: str  # out (to a server) or back
    server: str
    name: str
    parent: list[str]
    partition: list[str]
    remote: list[str]
    timeout_s: NotRequired[float]


class CutoverParams(MoveParams):
    incoming: list[str]
    aside: list[str]
    bound: str  # FOR VALUES ... of the partition
    columns: list[str]
    binary_hash: NotRequired[bool]  # set by the action: whether both servers hash row bytes


class CopyFields(TypedDict):
    """What the copy method's actions (move_copy_run.py) add: where the rows come from and go,
    and the key log that the capture trigger on the source fills."""

    source: str  # local (move out: the partition) or remote (move back: the shard's table)
    src: list[str]
    dst: list[str]
    log: list[str]  # on the source's server, like the trigger
    trigger: str
    pk: list[str]
    catchup_keys: NotRequired[int]  # replay until fewer keys than this were logged
    jobs: NotRequired[int]  # the copy step's: --jobs N > 1, key ranges on N connection pairs
    max_rate: NotRequired[float]  # the copy step's --max-rate, rows/s over every pair
    pk_types: NotRequired[list[str]]  # the key's types, for the ranges' bounds


class CopyParams(MoveParams, CopyFields):
    columns: list[str]


class CopyCutoverParams(CutoverParams, CopyFields):
    pass


class RemoteDDLParams(TypedDict):
    server: str
    statements: list[str]  # run on the server in one transaction, under lock_timeout

#: one connection, as before --jobs
ONE = Jobs(1, "--jobs 1")

# synchronous_commit = on: the rows a subscriber applied survive its crash (an asynchronous
# apply can lose its last commits, and the initial copy's progress with them)
SUBSCRIBE_SQL = ("CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {}"
              " WITH (synchronous_commit = on)")


@dataclass
class _Ctx:
    """What the planner knows about one move."""

    parent: TableInfo
    part: Partition
    server: str
    direction: str  # 'out' (to a server) or 'back' (to local)
    remote: QualifiedName  # the shard's table
    constraint_def: str  # pg_get_partition_constraintdef of the partition
    tag: str  # unique suffix of publication/subscription names
    jobs: Jobs = ONE  # the copy method's connections (--jobs)
    max_rate: float | None = None  # the copy method's bulk copy, rows/s (--max-rate)


def plan_move(conn: Connection, partition: str, *, to: str, drop_source: bool = False,
              origin_dsn: str | None = None, method: str = "auto",
              jobs: str | int = 1, max_rate: float | None = None) -> Plan:
    """Plan moving ``partition`` to server ``to`` (or back with ``to='local'``), by logical
    replication or by copy with a key log (``method``: auto, replication or copy; auto takes
    replication where the roles and settings allow it). ``jobs``: the copy method's bulk copy
    on that many pairs of connections, ``max_rate``: its rows per second over all of them
    (both refused for replication)."""
    if method not in METHODS:
        raise Refused(f"unknown move method {method!r}", hint="use auto, replication or copy")
    info = snapshot(conn, partition)
    if info.parent is None:
        raise Refused(f"{info.name} is not a partition",
                      hint="move takes a partition of a partitioned table; `pgcleave status "
                           "TABLE` lists them")
    parent = snapshot(conn, info.parent.quoted)
    if parent.parent is not None:
        raise Refused(f"{info.name} is a sub-partition ({parent.name} is itself a partition); "
                      "only partitions of a top-level table can move")
    assert parent.partitioning is not None
    part = next(p for p in parent.partitioning.partitions if p.oid == info.oid)
    if part.is_default:
        raise Refused(f"{info.name} is the DEFAULT partition of {parent.name}; it cannot move",
                      hint="a foreign table cannot be a DEFAULT partition, and rows of any value "
                           "land there: carve the rows you want to move into their own partition "
                           "first")
    if part.kind == "p":
        raise Refused(f"{info.name} is itself partitioned; move its partitions one by one")
    if part.detach_pending:
        raise Refused(f"{info.name} is being detached (DETACH PENDING)",
                      hint=f"finish it: ALTER TABLE {parent.name} DETACH PARTITION {info.name} "
                           "FINALIZE")
    row = conn.execute("SELECT pg_get_partition_constraintdef(%s::oid)", [info.oid]).fetchone()
    assert row is not None and row[0]
    cdef = str(row[0])
    if part.modulus and len(parent.partitioning.key_columns) == 1:
        # the shard has no parent for satisfies_hash_partition('<oid>') to name
        cdef = portable_hash_check(conn, parent.name, parent.partitioning.key_columns[0],
                                   part.modulus, part.remainder or 0)
    tag = f"pgcleave_move_{info.oid}"

    if to == "local":
        if part.kind != "f":
            raise Refused(f"{info.name} is already local",
                          hint=f"`pgcleave move {info.name} --to SERVER` moves it out")
        srow = conn.execute(
            "SELECT s.srvname, ft.ftoptions FROM pg_foreign_table ft JOIN pg_foreign_server s"
            " ON s.oid = ft.ftserver WHERE ft.ftrelid = %s", [info.oid]).fetchone()
        assert srow is not None
        opts = dict(o.split("=", 1) for o in (srow[1] or []))
        remote = QualifiedName(opts.get("schema_name", info.name.schema),
                               opts.get("table_name", info.name.name))
        ctx = _Ctx(parent, part, str(srow[0]), "back", remote, cdef, tag)
        chosen, why = _choose_method(conn, ctx, method, origin_dsn)
        ctx.jobs, ctx.max_rate = _copy_jobs(conn, chosen, jobs), _copy_rate(chosen, max_rate)
        plan = (_plan_back(conn, ctx, info, drop_source) if chosen == "replication"
                else _plan_copy_back(conn, ctx, info, drop_source))
        return plan.add(notes=[why])

    server = servers.get_server(conn, to)
    if part.kind == "f":
        raise Refused(f"{info.name} is already on server {part.server}",
                      hint=f"move it back first: pgcleave move {info.name} --to local")
    ctx = _Ctx(parent, part, server.name, "out", info.name, cdef, tag)
    chosen, why = _choose_method(conn, ctx, method, origin_dsn)
    ctx.jobs, ctx.max_rate = _copy_jobs(conn, chosen, jobs), _copy_rate(chosen, max_rate)
    plan = (_plan_out(conn, ctx, info, drop_source, origin_dsn) if chosen == "replication"
            else _plan_copy_out(conn, ctx, info, drop_source))
    return plan.add(notes=[why])


# -- which method ----------------------------------------------------------------------------
METHODS = ("auto", "replication", "copy")

#: The most pairs of connections one move by copy uses.
MAX_MOVE_JOBS = 8


def _copy_jobs(conn: Connection, chosen: str, jobs: str | int) -> Jobs:
    """``--jobs`` of a move: the copy method's; a subscription copies each table with one
    sync worker, so more than one is refused rather than silently not used."""
    if str(jobs) == "1":
        return ONE
    if chosen == "replication":
        raise Refused(f"--jobs {jobs}: a move by replication copies the partition with one "
                      "table sync worker of the subscription; nothing was changed",
                      hint="add --method copy to copy on several connections, or leave "
                           "--jobs out")
    return resolve_jobs(conn, jobs, limit=MAX_MOVE_JOBS)


def _copy_rate(chosen: str, max_rate: float | None) -> float | None:
    """``--max-rate`` of a move: the copy method's; the sync worker of a subscription copies
    at its own pace, which nothing here can slow, so it is refused rather than ignored."""
    if max_rate and chosen == "replication":
        raise Refused(f"--max-rate {max_rate:g}: a move by replication copies the partition "
                      "with the subscription's table sync worker, which pgcleave cannot pace; "
                      "nothing was changed",
                      hint="add --method copy to copy at a bounded rate, or leave --max-rate out")
    return float(max_rate) if max_rate else None

#: Replication slots and WAL senders a move's subscription uses on the publisher at most: its
#: own, plus one per table during the initial copy (the partition and the marker table).
_SLOTS_NEEDED = 3

_COPY_HOW = ("rows are streamed with COPY between the servers in one snapshot, writes made "
             "meanwhile are captured by a trigger into a key log and replayed")


def replication_blockers(pub: Connection, sub: Connection, *, pub_where: str, sub_where: str,
                         pub_password: bool) -> list[str]:
    """Why a subscription on ``sub`` to a publication on ``pub`` cannot work (empty: it can):
    wal_level, slot and sender headroom and the REPLICATION attribute on the publisher; the
    right to create subscriptions on the subscriber (superuser, or on 16+
    pg_create_subscription, which also needs a password to the publisher)."""
    out: list[str] = []
    row = pub.execute(
        "SELECT current_setting('wal_level'), current_setting('max_replication_slots')::int"
        " - (SELECT count(*) FROM pg_replication_slots), current_setting('max_wal_senders')::int"
        " - (SELECT count(*) FROM pg_stat_replication), current_user,"
        " (SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user)"
    ).fetchone()
    assert row is not None
    wal, slots, senders, user, repl = row
    if wal != "logical":
        out.append(f"wal_level = {wal} on {pub_where} (logical replication needs logical)")
    if int(slots) < _SLOTS_NEEDED:
        out.append(f"{pub_where} has {slots} free replication slot(s) of max_replication_slots "
                   f"(a move needs {_SLOTS_NEEDED})")
    if int(senders) < _SLOTS_NEEDED:
        out.append(f"{pub_where} has {senders} free WAL sender(s) of max_wal_senders "
                   f"(a move needs {_SLOTS_NEEDED})")
    if not repl:
        out.append(f"role {user} on {pub_where} has neither SUPERUSER nor REPLICATION, so a "
                   "subscription cannot connect as it")
    row = sub.execute(
        "SELECT current_user, (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),"
        " EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = 'pg_create_subscription'"
        " AND pg_has_role(current_user, r.oid, 'USAGE'))"
        " AND has_database_privilege(current_database(), 'CREATE')").fetchone()
    assert row is not None
    user, superuser, may_subscribe = row
    if not superuser and not may_subscribe:
        out.append(f"role {user} on {sub_where} may not create subscriptions (superuser, or on "
                   "PostgreSQL 16+ membership in pg_create_subscription, is needed)")
    elif not superuser and not pub_password:
        out.append(f"role {user} on {sub_where} is no superuser, so its subscription must log "
                   f"in to {pub_where} with a password, and there is none")
    return out


def _choose_method(conn: Connection, c: _Ctx, method: str, origin_dsn: str | None
                   ) -> tuple[str, str]:
    if method == "copy":
        return "copy", f"method copy (asked for): {_COPY_HOW}"
    here, there = "this database", f"server {c.server}"
    with _plan_connect(conn, c.server) as rc:
        if c.direction == "out":
            pw = "password" in conninfo_to_dict(origin_dsn or servers.origin_conninfo(conn))
            blockers = replication_blockers(conn, rc, pub_where=here, sub_where=there,
                                            pub_password=pw)
        else:
            pw = "password" in conninfo_to_dict(servers.remote_dsn(conn, c.server))
            blockers = replication_blockers(rc, conn, pub_where=there, sub_where=here,
                                            pub_password=pw)
    if not blockers:
        return "replication", ("method replication" + (" (asked for)" if method != "auto" else
                               "") + ": wal_level = logical and the roles may publish and "
                               "subscribe; rows are replicated, then the cut-over swaps")
    if method == "replication":
        raise Refused("the move cannot use logical replication: " + "; ".join(blockers),
                      hint="use --method copy (it needs only ownership of the table and the "
                           "user mapping), or fix the settings and roles named")
    return "copy", (f"method copy: logical replication is not possible ({'; '.join(blockers)}), "
                    f"so {_COPY_HOW}")


# -- moving out ------------------------------------------------------------------------------
def _plan_out(conn: Connection, c: _Ctx, info: TableInfo, drop_source: bool,
              origin_dsn: str | None) -> Plan:
    parent, part, srv = c.parent, c.part, c.server
    require_logical(conn, "this database (the publisher of the rows)")
    require_replica_identity(conn, info)
    refuse_parent_keys(parent)
    if any(col.generated for col in info.columns):
        raise Refused(f"{info.name} has generated columns; foreign partitions cannot carry them")
    local_aside = part.name.sibling(child_name(part.name.name, "pgc_local"))
    staging = part.name.sibling(child_name(part.name.name, "pgc_remote"))
    for n in (local_aside, staging):
        if relation_exists(conn, n):
            raise Refused(f"{n} already exists (left by an earlier move)",
                          hint=f"drop it if it is no longer needed: DROP TABLE {n}")
    with _plan_connect(conn, srv) as rc:
        if rc.execute("SELECT to_regclass(%s)", [c.remote.quoted]).fetchone() != (None,):
            raise Refused(f"table {c.remote} already exists on server {srv}",
                          hint="drop or rename it there, or move another partition")
        if rc.execute("SELECT count(*) FROM pg_subscription WHERE subname = %s",
                      [c.tag]).fetchone() != (0,):
            raise Refused(f"subscription {c.tag} already exists on server {srv}",
                          hint=f"an earlier move left it; drop it there: DROP SUBSCRIPTION {c.tag}")
    dbl = servers.dblink_schema(conn)
    pname, tname = str(part.name), str(parent.name)
    steps: list[Step] = []

    steps.append(shard_table_step(conn, info, srv, c.remote, c.constraint_def, dbl=dbl))
    steps.append(Step.sql(
        "publish", f"publish {pname} (and pgcleave.move_markers) for the shard",
        [sql.SQL("CREATE PUBLICATION {} FOR TABLE {}, pgcleave.move_markers").format(
            sql.Identifier(c.tag), part.name.ident)],
        locks=[LockTaken(Lock.SHARE_UPDATE_EXCLUSIVE, pname)],
        guard=sql.SQL("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = {})").format(
            sql.Literal(c.tag)),
        undo=[sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(c.tag))]))
    steps.append(Step(
        name="subscribe", description=f"subscribe {srv} to the publication (initial copy, then "
        "every write)",
        statements=[servers.remote_sql(dbl, srv, sql.SQL(SUBSCRIBE_SQL).format(
            sql.Identifier(c.tag), sql.Literal(_shown_origin(conn, origin_dsn)),
            sql.Identifier(c.tag)), durable=False).as_string(None)],
        action="move.subscribe",
        params=SubscribeParams(side="remote", server=srv, name=c.tag,
                               origin_dsn=bool(origin_dsn)),
        guard=servers.remote_exists(dbl, srv, sql.SQL(
            "SELECT 1 FROM pg_subscription WHERE subname = {}").format(sql.Literal(c.tag))
        ).as_string(None),
        undo=[servers.remote_sql(dbl, srv, sql.SQL("DROP SUBSCRIPTION IF EXISTS {}").format(
            sql.Identifier(c.tag)), durable=False).as_string(None)],
        transactional=False, ddl=False))
    steps += _common_tail(conn, c, dbl, staging, local_aside, drop_source, info)
    plan = Plan("move", tname, {"partition": part.name.quoted, "to": srv,
                                "drop_source": drop_source}, steps)
    plan = plan.add(notes=[f"rows of {pname} stay readable and writable through {tname} during the "
                      "whole move; writes wait only during the cut-over"])
    if not any(p.kind == "f" for p in parent.partitioning.leaves()):  # type: ignore[union-attr]
        plan = plan.add(warnings=first_move_warnings(parent))
    return plan


# -- moving back -----------------------------------------------------------------------------
def _plan_back(conn: Connection, c: _Ctx, info: TableInfo, drop_source: bool) -> Plan:
    parent, part, srv = c.parent, c.part, c.server
    aside = part.name.sibling(child_name(part.name.name, "pgc_remote"))
    target = c.remote  # the local table that receives the rows has the shard table's name
    _refuse_back_names(conn, c, target, aside)
    with _plan_connect(conn, srv) as rc:
        require_logical(rc, f"server {srv} (the publisher of the rows)")
        rrow = rc.execute("SELECT c.oid, c.relreplident::text, EXISTS (SELECT 1 FROM pg_index i"
                          " WHERE i.indrelid = c.oid AND i.indisprimary) FROM pg_class c"
                          " WHERE c.oid = to_regclass(%s)", [c.remote.quoted]).fetchone()
        if rrow is None:
            raise NotFound(f"the table {c.remote} behind {part.name} does not exist on {srv}")
        if rrow[1] == "n" or (rrow[1] == "d" and not rrow[2]):
            raise Refused(f"{c.remote} on {srv} has no primary key or replica identity, so its "
                          "UPDATEs and DELETEs cannot be replicated",
                          hint=f"on {srv}: ALTER TABLE {c.remote} REPLICA IDENTITY FULL (or add "
                               "a primary key), then retry")
        remote_defs = _remote_definitions(rc, int(rrow[0]))
        if rc.execute("SELECT count(*) FROM pg_publication WHERE pubname = %s",
                      [c.tag]).fetchone() != (0,):
            raise Refused(f"publication {c.tag} already exists on server {srv}",
                          hint=f"an earlier move left it; drop it there: DROP PUBLICATION {c.tag}")
    if conn.execute("SELECT count(*) FROM pg_subscription WHERE subname = %s",
                    [c.tag]).fetchone() != (0,):
        raise Refused(f"subscription {c.tag} already exists here",
                      hint=f"an earlier move left it: DROP SUBSCRIPTION {c.tag}")
    dbl = servers.dblink_schema(conn)
    pname = str(part.name)
    steps = _back_first_steps(c, target, aside, remote_defs)
    steps.append(Step.sql(
        "publish", f"publish {c.remote} (and pgcleave.move_markers) on {srv}",
        [servers.remote_sql(dbl, srv, sql.SQL("; ").join([
            sql.SQL("CREATE SCHEMA IF NOT EXISTS pgcleave"),
            sql.SQL("CREATE TABLE IF NOT EXISTS pgcleave.move_markers (token text NOT NULL,"
                    " at timestamptz NOT NULL DEFAULT clock_timestamp())"),
            sql.SQL("ALTER TABLE pgcleave.move_markers REPLICA IDENTITY FULL"),
            sql.SQL("CREATE PUBLICATION {} FOR TABLE {}, pgcleave.move_markers").format(
                sql.Identifier(c.tag), c.remote.ident)]))],
        guard=servers.remote_exists(dbl, srv, sql.SQL(
            "SELECT 1 FROM pg_publication WHERE pubname = {}").format(sql.Literal(c.tag))),
        undo=[servers.remote_sql(dbl, srv, sql.SQL("DROP PUBLICATION IF EXISTS {}").format(
            sql.Identifier(c.tag)))],
        transactional=False, ddl=False))
    steps.append(Step(
        name="subscribe", description=f"subscribe this database to {srv}'s publication",
        statements=[sql.SQL(SUBSCRIBE_SQL).format(
            sql.Identifier(c.tag), sql.Literal(f"<server {srv}: options and user mapping>"),
            sql.Identifier(c.tag)).as_string(None)],
        action="move.subscribe", params=SubscribeParams(side="local", server=srv, name=c.tag),
        guard=sql.SQL("SELECT EXISTS (SELECT 1 FROM pg_subscription WHERE subname = {})").format(
            sql.Literal(c.tag)).as_string(None),
        undo=[sql.SQL("DROP SUBSCRIPTION IF EXISTS {}").format(sql.Identifier(c.tag)
                                                               ).as_string(None)],
        transactional=False, ddl=False))
    steps += _common_tail(conn, c, dbl, target, aside, drop_source, info)
    return Plan("move", parent.name.quoted, {"partition": part.name.quoted, "to": "local",
                                           "from": srv, "drop_source": drop_source}, steps,
                notes=[f"rows of {pname} stay readable and writable through {parent.name} "
                       "during the whole move; writes wait only during the cut-over"])


def _refuse_back_names(conn: Connection, c: _Ctx, target: QualifiedName,
                       aside: QualifiedName) -> None:
    part = c.part
    if target != part.name and relation_exists(conn, target):
        raise Refused(f"{target} exists here, so the shard's table {c.remote} cannot be "
                      "copied into a new local table of that name",
                      hint=f"rename or drop the local {target}")
    if target.schema != part.name.schema:
        raise Refused(f"the shard's table {c.remote} is in another schema than {part.name}",
                      hint="move back supports shard tables in the partition's schema only")
    if relation_exists(conn, aside):
        raise Refused(f"{aside} already exists (left by an earlier move)",
                      hint=f"drop it if it is no longer needed: DROP FOREIGN TABLE {aside}")


def _back_first_steps(c: _Ctx, target: QualifiedName, aside: QualifiedName,
                      remote_defs: _RemoteDefs) -> list[Step]:
    """Rename the foreign partition out of the way (when the local table takes its name) and
    create the local table that receives the rows."""
    part, pname = c.part, str(c.part.name)
    steps: list[Step] = []
    if target == part.name:
        steps.append(Step.sql(
            "rename-foreign", f"rename the foreign partition {pname} to {aside.name} so the "
            "returning rows can land in a local table of its name",
            [sql.SQL("ALTER FOREIGN TABLE {} RENAME TO {}").format(
                part.name.ident, sql.Identifier(aside.name))],
            locks=[LockTaken(Lock.ACCESS_EXCLUSIVE, pname)],
            guard=sql.SQL("SELECT to_regclass({}) IS NOT NULL").format(aside.literal),
            undo=[sql.SQL("ALTER FOREIGN TABLE {} RENAME TO {}").format(
                aside.ident, sql.Identifier(part.name.name))]))
    steps.append(Step.sql(
        "local-table", f"create the local table {target} from the parent's and the shard's "
        f"definitions, with CHECK ({c.constraint_def})",
        _local_ddl(c, target, remote_defs),
        guard=sql.SQL("SELECT to_regclass({}) IS NOT NULL AND (SELECT relkind = 'r' FROM pg_class"
                      " WHERE oid = to_regclass({}))").format(target.literal, target.literal),
        undo=[sql.SQL("DROP TABLE IF EXISTS {}").format(target.ident)]))
    return steps


# -- the copy method: COPY across, a capture trigger and its key log, replays -----------------
#: The copy step replays the key log until fewer keys than this were logged during a replay.
COPY_CATCHUP_KEYS = 1000

CAPTURE_TRIGGER = "pgcleave_move_capture"


@dataclass
class _Capture:
    """The copy method of one move: the rows go from ``src`` to ``dst``; the capture trigger
    on ``src`` (and its function and key log, on the same server) records what the
    application writes meanwhile."""

    source: str  # local (out) or remote (back)
    src: QualifiedName
    dst: QualifiedName
    log: QualifiedName
    fn: QualifiedName
    pk: list[str]
    columns: list[str]
    binary: bool
    trigger: str = CAPTURE_TRIGGER

    def across(self) -> CopyAcross:
        return CopyAcross(self.src, self.dst, self.log, self.columns, self.pk, self.binary)

    def fields(self) -> CopyFields:
        return CopyFields(source=self.source, src=[self.src.schema, self.src.name],
                          dst=[self.dst.schema, self.dst.name],
                          log=[self.log.schema, self.log.name], trigger=self.trigger,
                          pk=list(self.pk), catchup_keys=COPY_CATCHUP_KEYS)

    def create(self) -> list[sql.Composable]:
        return [
            sql.SQL("CREATE TABLE {} AS SELECT {} FROM ONLY {} WITH NO DATA").format(
                self.log.ident, collist(self.pk), self.src.ident),
            key_log_function(self.fn, self.log, self.pk, definer=True),
            sql.SQL("CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW "
                    "EXECUTE FUNCTION {}()").format(sql.Identifier(self.trigger),
                                                   self.src.ident, self.fn.ident)]

    def exists(self) -> sql.Composable:
        return sql.SQL("SELECT 1 FROM pg_trigger WHERE tgname = {} AND tgrelid = to_regclass({})"
                       ).format(sql.Literal(self.trigger), self.src.literal)

    def drop(self, table: QualifiedName | None = None) -> list[sql.Composable]:
        """Trigger (on ``table``, the source by default), function and log."""
        return [capture_drop_sql(self.trigger, table or self.src),
                sql.SQL("DROP FUNCTION IF EXISTS {}() CASCADE").format(self.fn.ident),
                sql.SQL("DROP TABLE IF EXISTS {}").format(self.log.ident)]


def capture_drop_sql(trigger: str, table: QualifiedName) -> sql.Composable:
    return sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(sql.Identifier(trigger), table.ident)


def _capture_for(c: _Ctx, source: str, src: QualifiedName, dst: QualifiedName, pk: list[str],
                 info: TableInfo, versions: tuple[int, int]) -> _Capture:
    oid = c.part.oid
    return _Capture(source, src, dst, QualifiedName("pgcleave", f"move_{oid}_log"),
                    QualifiedName("pgcleave", f"move_{oid}_capture"), pk,
                    [col.name for col in info.columns if not col.generated],
                    versions[0] // 10000 == versions[1] // 10000)


def _copy_notes(c: _Ctx, cap: _Capture) -> list[str]:
    where = "this database" if cap.source == "local" else f"server {c.server}"
    return [f"rows of {c.part.name} stay readable and writable through {c.parent.name} during "
            f"the whole move; writes wait only during the cut-over (EXCLUSIVE on "
            f"{c.parent.name}: reads go on)",
            f"until the cut-over every row written to {cap.src} on {where} also logs its key in "
            f"{cap.log} (trigger {cap.trigger})"]


def _copy_args(c: _Ctx) -> dict[str, object]:
    """The job's args of a move by copy: what ``pgcleave jobs`` and ``report`` show of how
    it copies (the copy step journals the same ``jobs`` and ``max_rate``: resume uses them)."""
    return {"method": "copy", **({"jobs": c.jobs.n} if c.jobs.n > 1 else {}),
            **({"max_rate": c.max_rate} if c.max_rate else {})}


def _plan_copy_out(conn: Connection, c: _Ctx, info: TableInfo, drop_source: bool) -> Plan:
    parent, part, srv = c.parent, c.part, c.server
    refuse_parent_keys(parent)
    if any(col.generated for col in info.columns):
        raise Refused(f"{info.name} has generated columns; foreign partitions cannot carry them")
    if info.primary_key is None:
        raise Refused(f"{info.name} has no primary key: the copy method logs the keys of the "
                      "rows written during the move and needs one",
                      hint=f"add a primary key to {info.name}, then retry")
    local_aside = part.name.sibling(child_name(part.name.name, "pgc_local"))
    staging = part.name.sibling(child_name(part.name.name, "pgc_remote"))
    with _plan_connect(conn, srv) as rc:
        if rc.execute("SELECT to_regclass(%s)", [c.remote.quoted]).fetchone() != (None,):
            raise Refused(f"table {c.remote} already exists on server {srv}",
                          hint="drop or rename it there, or move another partition")
        cap = _capture_for(c, "local", part.name, c.remote, info.primary_key.columns, info,
                           (conn.info.server_version, rc.info.server_version))
    for n in (local_aside, staging, cap.log):
        if relation_exists(conn, n):
            raise Refused(f"{n} already exists (left by an earlier move)",
                          hint=f"drop it if it is no longer needed: DROP TABLE {n}")
    dbl = servers.dblink_schema(conn)
    steps = [shard_table_step(conn, info, srv, c.remote, c.constraint_def, dbl=dbl,
                              markers=False),
             Step.sql("capture", f"create the key log {cap.log} and the capture trigger on "
                      f"{part.name} that fills it", [*cap.create()],
                      locks=[LockTaken(Lock.SHARE_ROW_EXCLUSIVE, f"{part.name} (CREATE TRIGGER,"
                                       " brief)")],
                      guard=sql.SQL("SELECT EXISTS ({})").format(cap.exists()),
                      undo=[*cap.drop()])]
    steps += _common_tail(conn, c, dbl, staging, local_aside, drop_source, info, cap)
    plan = Plan("move", parent.name.quoted, {"partition": part.name.quoted, "to": srv,
                                           "drop_source": drop_source, **_copy_args(c)},
                steps, notes=_copy_notes(c, cap))
    if not any(p.kind == "f" for p in parent.partitioning.leaves()):  # type: ignore[union-attr]
        plan = plan.add(warnings=first_move_warnings(parent))
    return plan


def _plan_copy_back(conn: Connection, c: _Ctx, info: TableInfo, drop_source: bool) -> Plan:
    parent, part, srv = c.parent, c.part, c.server
    aside = part.name.sibling(child_name(part.name.name, "pgc_remote"))
    target = c.remote  # the local table that receives the rows has the shard table's name
    _refuse_back_names(conn, c, target, aside)
    with _plan_connect(conn, srv) as rc:
        row = rc.execute(
            "SELECT c.oid, (SELECT array_agg(a.attname::text ORDER BY k.n) FROM pg_index i"
            " CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, n) JOIN pg_attribute a"
            " ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
            " WHERE i.indrelid = c.oid AND i.indisprimary) FROM pg_class c"
            " WHERE c.oid = to_regclass(%s)", [c.remote.quoted]).fetchone()
        if row is None:
            raise NotFound(f"the table {c.remote} behind {part.name} does not exist on {srv}")
        if not row[1]:
            raise Refused(f"{c.remote} on {srv} has no primary key: the copy method logs the "
                          "keys of the rows written during the move and needs one",
                          hint=f"on {srv}: add a primary key to {c.remote}, then retry")
        remote_defs = _remote_definitions(rc, int(row[0]))
        cap = _capture_for(c, "remote", c.remote, target, list(row[1]), info,
                           (rc.info.server_version, conn.info.server_version))
        if rc.execute("SELECT to_regclass(%s)", [cap.log.quoted]).fetchone() != (None,):
            raise Refused(f"{cap.log} already exists on server {srv} (left by an earlier move)",
                          hint=f"drop it there if it is no longer needed: DROP TABLE {cap.log}")
    dbl = servers.dblink_schema(conn)
    steps = _back_first_steps(c, target, aside, remote_defs)
    create = [sql.SQL("CREATE SCHEMA IF NOT EXISTS pgcleave"), *cap.create()]
    steps.append(Step.act(
        "capture", f"create the key log {cap.log} and the capture trigger on {c.remote} that "
        f"fills it, on server {srv} (one transaction there, under lock_timeout)",
        action="move.remote_ddl",
        params=RemoteDDLParams(server=srv, statements=[x.as_string(None) for x in create]),
        shown=[sql.SQL(f"-- on server {srv}:"), *create],
        locks=[LockTaken(Lock.SHARE_ROW_EXCLUSIVE, f"{c.remote} on {srv} (CREATE TRIGGER, "
                         "brief)")],
        guard=servers.remote_exists(dbl, srv, cap.exists()),
        undo=[servers.remote_sql(dbl, srv, sql.SQL("; ").join(cap.drop()))]))
    steps += _common_tail(conn, c, dbl, target, aside, drop_source, info, cap)
    return Plan("move", parent.name.quoted, {"partition": part.name.quoted, "to": "local",
                                           "from": srv, "drop_source": drop_source,
                                           **_copy_args(c)}, steps, notes=_copy_notes(c, cap))


def _uncapture_step(cap: _Capture, dbl: str, srv: str) -> Step:
    if cap.source == "local":  # the trigger went with the cut-over
        return Step.sql("uncapture", f"drop the capture function and the key log {cap.log}",
                        [*cap.drop()[1:]], ddl=False)
    return Step.sql("uncapture", f"drop the capture trigger, its function and the key log "
                    f"{cap.log} on server {srv}",
                    [servers.remote_sql(dbl, srv, sql.SQL("; ").join(cap.drop()))],
                    transactional=False, ddl=False)


# -- the steps both directions share -------------------------------------------------------
def _common_tail(conn: Connection, c: _Ctx, dbl: str, incoming: QualifiedName,
                 aside: QualifiedName, drop_source: bool, info: TableInfo,
                 cap: _Capture | None = None) -> list[Step]:
    """catch-up (replication) or copy (``cap``), DEFAULT check, foreign table (out),
    cut-over, clean-up."""
    parent, part, srv = c.parent, c.part, c.server
    out = c.direction == "out"
    steps: list[Step] = []
    if cap is None:
        steps.append(Step(
            name="catch-up", description="wait for the initial copy and for the subscriber to "
            "catch up with the writes",
            statements=["-- poll pg_subscription_rel until every table is ready, then write a "
                        "marker row on the publisher and wait until the subscriber has it"],
            action="move.catch_up", params=_action_params(c), ddl=False, transactional=False))
    else:
        m = _action_params(c)
        src_at, dst_at = (("this database", f"server {srv}") if out else
                          (f"server {srv}", "this database"))
        cp = CopyParams(**m, **cap.fields(), columns=cap.columns)
        shown = cap.across().shown(src_at, dst_at, COPY_CATCHUP_KEYS)
        how = ""
        if c.jobs.n > 1:
            cp["jobs"] = c.jobs.n
            cp["pk_types"] = [info.column(k).type for k in cap.pk]
            how = (f" on {c.jobs.n} pairs of connections ({c.jobs.reason}), each a disjoint "
                   "range of the primary key, each range's destination transaction first "
                   "deleting what an earlier try of it left")
            shown = [sql.SQL(f"-- {c.jobs.n} pairs of connections, each copying a range "
                             "($lo, $hi] of the primary key: the source's transactions import "
                             "one exported snapshot (SELECT pg_export_snapshot()), each "
                             "COPY (SELECT ... WHERE (key) > $lo AND (key) <= $hi)"), *shown]
        if c.max_rate:
            cp["max_rate"] = c.max_rate
            how += f", at most {c.max_rate:,.0f} rows/s" + (" together" if c.jobs.n > 1 else "")
        steps.append(Step.act(
            "copy", f"copy the rows of {cap.src} ({src_at}) into {cap.dst} ({dst_at}) with "
            f"COPY in one snapshot{how}, {'binary' if cap.binary else 'text'} format, streamed;"
            " then replay the key log until few keys are left",
            action="move.copy", params=cp, shown=shown,
            locks=[LockTaken(Lock.ACCESS_SHARE, f"{cap.src} (reads only)")],
            transactional=False, nothing_to_undo=True))
    default = parent.partitioning.default if parent.partitioning else None
    excl = f"pgcleave_not_{part.oid}"
    if default is not None and default.kind == "r":
        steps += default_exclusion(
            default.name, excl, sql.SQL("({})").format(sql.SQL(c.constraint_def)),
            names=("default-check", "default-validate"), what=f"the bound of {part.name.name}")
    if out:
        steps.append(Step.sql(
            "foreign-table", f"create the foreign table {incoming} for {c.remote} on {srv} "
            "(not attached yet)",
            [foreign_table_ddl(parent, incoming, srv, c.remote)],
            guard=sql.SQL("SELECT to_regclass({}) IS NOT NULL OR EXISTS (SELECT 1 FROM pg_class"
                          " WHERE oid = to_regclass({}) AND relkind = 'f')").format(
                incoming.literal, part.name.literal),
            undo=[sql.SQL("DROP FOREIGN TABLE IF EXISTS {}").format(incoming.ident)]))
        if is_superuser(conn):
            steps.append(ddl_guard_step("ddl-guard"))
    kind = "f" if out else "r"
    m = _action_params(c)
    p = CutoverParams(direction=m["direction"], server=m["server"], name=m["name"],
                      parent=m["parent"], partition=m["partition"], remote=m["remote"],
                      incoming=[incoming.schema, incoming.name],
                      aside=[aside.schema, aside.name], bound=part.bound,
                      columns=[col.name for col in info.columns if not col.generated])
    swap: list[sql.Composable] = [
        sql.SQL("LOCK TABLE ONLY {} IN EXCLUSIVE MODE").format(parent.name.ident)]
    if cap is None:
        swap.append(sql.SQL("-- marker round trip; count + hash of the rows on both servers "
                            "must match"))
    else:
        if out:
            swap.append(sql.SQL("LOCK TABLE ONLY {} IN EXCLUSIVE MODE").format(part.name.ident))
        swap.append(sql.SQL("-- replay the key log (the statements of the copy step) until it "
                            "is empty; count + hash of the rows on both servers must match"))
    swap += swap_sql(p, parent.name, part.name, incoming, aside)
    if cap is not None and out:
        swap.append(capture_drop_sql(cap.trigger, aside))
    action, params = ("move.cutover", p) if cap is None else (
        "move.copy_cutover", CopyCutoverParams(**p, **cap.fields()))
    steps.append(Step(
        name="cutover", description=f"cut over: swap the {'local' if out else 'foreign'} "
        f"partition for the {'foreign' if out else 'local'} one after verifying every row",
        statements=[s.as_string(None) for s in swap], action=action, params=params,
        locks=[LockTaken(Lock.EXCLUSIVE, str(parent.name)),
               *([LockTaken(Lock.EXCLUSIVE, str(part.name))] if cap is not None and out else []),
               LockTaken(Lock.ACCESS_EXCLUSIVE, str(parent.name))],
        guard=sql.SQL("SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_inherits i ON"
                      " i.inhrelid = c.oid WHERE c.oid = to_regclass({}) AND c.relkind = {}"
                      " AND i.inhparent = {}::regclass)").format(
            part.name.literal, sql.Literal(kind), parent.name.literal).as_string(None)))
    # clean-up: the replication objects (or the capture), the helper CHECK, optionally the source
    if cap is not None:
        steps.append(_uncapture_step(cap, dbl, srv))
    elif out:
        steps.append(Step.sql(
            "unsubscribe", f"drop the subscription on {srv} (and its slot here)",
            [servers.remote_sql(dbl, srv, sql.SQL("DROP SUBSCRIPTION IF EXISTS {}").format(
                sql.Identifier(c.tag)), durable=False)], transactional=False, ddl=False))
        steps.append(Step.sql(
            "unpublish", "drop the publication",
            [sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(c.tag))],
            ddl=False))
    else:
        steps.append(Step.sql(
            "unsubscribe", f"drop the subscription here (and its slot on {srv})",
            [sql.SQL("DROP SUBSCRIPTION IF EXISTS {}").format(sql.Identifier(c.tag))],
            transactional=False, ddl=False))
        steps.append(Step.sql(
            "unpublish", f"drop the publication on {srv}",
            [servers.remote_sql(dbl, srv, sql.SQL("DROP PUBLICATION IF EXISTS {}").format(
                sql.Identifier(c.tag)))], transactional=False, ddl=False))
    if default is not None and default.kind == "r":
        steps.append(drop_default_exclusion(
            default.name, excl, sql.SQL("({})").format(sql.SQL(c.constraint_def)),
            name="default-uncheck"))
    if drop_source:
        if out:
            steps.append(Step.sql(
                "drop-source", f"drop the old local table {aside}",
                [sql.SQL("DROP TABLE IF EXISTS {}").format(aside.ident)],
                locks=[LockTaken(Lock.ACCESS_EXCLUSIVE, str(aside))]))
        else:
            steps.append(Step.sql(
                "drop-source", f"drop the old foreign table {aside} and {c.remote} on {srv}",
                [servers.remote_sql(dbl, srv, sql.SQL("DROP TABLE IF EXISTS {}").format(
                    c.remote.ident)),
                 sql.SQL("DROP FOREIGN TABLE IF EXISTS {}").format(aside.ident)],
                transactional=False, ddl=False))
    return steps


def _action_params(c: _Ctx) -> MoveParams:
    return MoveParams(direction=c.direction, server=c.server, name=c.tag,
                      parent=[c.parent.name.schema, c.parent.name.name],
                      partition=[c.part.name.schema, c.part.name.name],
                      remote=[c.remote.schema, c.remote.name])


@dataclass
class _RemoteDefs:
    constraints: list[tuple[str, str, str]]  # name, type, definition
    indexes: list[str]  # index definitions, constraint-backed ones excluded


def _remote_definitions(rc: Connection, oid: int) -> _RemoteDefs:
    cons = [(str(r[0]), str(r[1]), str(r[2])) for r in rc.execute(
        "SELECT conname, contype::text, pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conrelid = %s AND contype IN ('c', 'p', 'u', 'x') ORDER BY conname", [oid])]
    idx = [str(r[0]) for r in rc.execute(
        "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i WHERE i.indrelid = %s"
        " AND i.indisvalid AND NOT EXISTS (SELECT 1 FROM pg_constraint c"
        " WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid)", [oid])]
    return _RemoteDefs(cons, idx)


def _local_ddl(c: _Ctx, target: QualifiedName, defs: _RemoteDefs) -> list[Statement]:
    """The local table that receives a partition's rows back: LIKE the parent (columns, CHECKs,
    and the parent's indexes, which ATTACH then adopts instead of building them under lock),
    plus the shard table's own keys, CHECKs and indexes, plus the bound CHECK."""
    t = target.ident
    stmts: list[Statement] = [sql.SQL(
        "CREATE TABLE {} (LIKE {} INCLUDING CONSTRAINTS INCLUDING INDEXES INCLUDING STORAGE)"
    ).format(t, c.parent.name.ident)]
    parent_checks = {con.name for con in c.parent.constraints}
    for name, ctype, definition in defs.constraints:
        if name == BOUND_CHECK or (ctype == "c" and name in parent_checks):
            continue
        if ctype == "c":
            stmts.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                t, sql.Identifier(name), sql.SQL(definition)))
        else:  # unnamed: the old local copy may still hold an index of the same name
            stmts.append(sql.SQL("ALTER TABLE {} ADD {}").format(t, sql.SQL(definition)))
    stmts.append(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({})").format(
        t, sql.Identifier(BOUND_CHECK), sql.SQL(c.constraint_def)))
    parent_keys = {(d.unique, d.tail) for d in
                   (parse_indexdef(ix.definition) for ix in c.parent.indexes)}
    for d in map(parse_indexdef, defs.indexes):
        if (d.unique, d.tail) in parent_keys:
            continue
        stmts.append(sql.SQL("CREATE {}INDEX ON {} {}").format(
            sql.SQL("UNIQUE " if d.unique else ""), t, sql.SQL(d.tail)))
    return stmts


def _plan_connect(conn: Connection, server: str) -> Connection:
    """Connect to a shard while planning: unreachable means refused, nothing changed."""
    try:
        return servers.connect_remote(conn, server, purpose="move-check", timeout=5)
    except StepFailed as exc:
        raise Refused(exc.message + "; nothing was changed",
                      hint="start the remote server or fix the network (or its options: "
                           f"ALTER SERVER {server} OPTIONS (SET port '...')), then retry"
                      ) from None


#: The key under which the CLI (or a library caller) hands ``--origin-dsn`` to the run.
ORIGIN_DSN_SECRET = "origin_dsn"


def _shown_origin(conn: Connection, origin_dsn: str | None) -> str:
    return redact(origin_dsn or servers.origin_conninfo(conn))


def swap_sql(p: CutoverParams, parent: QualifiedName, part: QualifiedName,
                          incoming: QualifiedName, aside: QualifiedName) -> list[sql.Composable]:
    bound = sql.SQL(p["bound"])
    if p["direction"] == "out":
        return [
            sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent.ident, part.ident),
            sql.SQL("ALTER TABLE {} RENAME TO {}").format(part.ident, sql.Identifier(aside.name)),
            sql.SQL("ALTER TABLE {} ATTACH PARTITION {} {}").format(parent.ident, incoming.ident,
                                                                    bound),
            sql.SQL("ALTER FOREIGN TABLE {} RENAME TO {}").format(
                incoming.ident, sql.Identifier(part.name)),
        ]
    same = incoming == part
    stmts: list[sql.Composable] = [
        sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent.ident,
                                                             (aside if same else part).ident)]
    if not same:
        stmts.append(sql.SQL("ALTER FOREIGN TABLE {} RENAME TO {}").format(
            part.ident, sql.Identifier(aside.name)))
    stmts.append(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} {}").format(
        parent.ident, incoming.ident, bound))
    if not same:
        stmts.append(sql.SQL("ALTER TABLE {} RENAME TO {}").format(
            incoming.ident, sql.Identifier(part.name)))
    return stmts


