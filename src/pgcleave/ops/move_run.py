"""Move's runtime actions: the subscription (initial copy, then every write), the catch-up
with its marker round trips, and the cut-over that verifies count and hash under a short
EXCLUSIVE lock and swaps the partitions. ``ops/move.py`` plans the steps that name them."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any, cast

import psycopg
from psycopg import sql

from .. import servers
from ..connection import Connection
from ..ddl.capture import PORTABLE_SETTINGS
from ..errors import StepFailed
from ..execute import ActionContext
from ..names import QualifiedName
from .move import (
    ORIGIN_DSN_SECRET,
    SUBSCRIBE_SQL,
    CutoverParams,
    MoveParams,
    SubscribeParams,
    swap_sql,
)

#: Session settings that make ``ROW(...)::text`` identical on both servers for the hash.
HASH_SETTINGS = PORTABLE_SETTINGS
HASH_RESET = ["RESET TimeZone", "RESET DateStyle", "RESET IntervalStyle",
              "RESET extra_float_digits", "RESET bytea_output"]


# -- actions -----------------------------------------------------------------------------------
def subscribe(ctx: ActionContext) -> None:
    """CREATE SUBSCRIPTION, run here so the connection string (which may hold a password) is
    built at run time and never journaled."""
    p = cast(SubscribeParams, ctx.params)
    if p.get("side", p.get("direction")) in ("remote", "out"):
        with servers.connect_remote(ctx.conn, p["server"], purpose="move") as rc:
            _create_subscription(ctx, rc)
    else:
        ctx.conn.execute("SET synchronous_commit = on")
        try:
            _create_subscription(ctx, ctx.conn)
        finally:
            ctx.conn.execute("RESET synchronous_commit")


def _create_subscription(ctx: ActionContext, subscriber: Connection) -> None:
    p = cast(SubscribeParams, ctx.params)
    name = sql.Identifier(p["name"])
    if p.get("side", p.get("direction")) in ("remote", "out"):
        origin = ctx.secret(ORIGIN_DSN_SECRET) if p.get("origin_dsn") else None
        if p.get("origin_dsn") and origin is None:
            raise StepFailed(
                "this move was planned with --origin-dsn, which is never journaled, and this "
                "run was not given it", hint="run the same command with --origin-dsn DSN "
                "(e.g. `pgcleave resume JOB --origin-dsn DSN`)")
        origin = origin or servers.origin_conninfo(ctx.conn)
    else:
        origin = servers.remote_dsn(ctx.conn, p["server"])
    if subscriber.execute("SELECT count(*) FROM pg_subscription WHERE subname = %s",
                          [p["name"]]).fetchone() == (0,):
        subscriber.execute(sql.SQL(SUBSCRIBE_SQL).format(name, sql.Literal(origin), name))


class _Sides:
    """The two connections of a move: where the rows come from and where they go."""

    def __init__(self, ctx: ActionContext) -> None:
        p = cast(MoveParams, ctx.params)
        self.remote = servers.connect_remote(ctx.conn, p["server"], purpose="move")
        self.writer = ctx.connect("move-marker")
        if p["direction"] == "out":
            self.publisher, self.subscriber = self.writer, self.remote
        else:
            self.publisher, self.subscriber = self.remote, self.writer
        # the walsender only sends WAL that is flushed: a marker committed asynchronously
        # would wait for the WAL writer (up to wal_writer_delay)
        self.publisher.execute("SET synchronous_commit = on")

    def close(self) -> None:
        for c in (self.remote, self.writer):
            if not c.closed:
                c.close()


def _sync_state(sub: Connection, name: str) -> tuple[bool, str, list[tuple[int, int]]]:
    """Whether every table of the subscription is ready, their states as text, and the
    (subscription, table) oids of those in state 'f' (``_sync_slot_lost`` looks at those)."""
    rows = sub.execute(
        "SELECT sr.srrelid::regclass::text, sr.srsubstate::text, sr.srsubid, sr.srrelid"
        " FROM pg_subscription_rel sr JOIN pg_subscription s ON s.oid = sr.srsubid"
        " WHERE s.subname = %s"
        " AND s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
        [name]).fetchall()
    ready = bool(rows) and all(r[1] == "r" for r in rows)
    return (ready, ", ".join(f"{r[0]}={r[1]}" for r in rows),
            [(int(r[2]), int(r[3])) for r in rows if r[1] == "f"])


def _sub_errors(sub: Connection, name: str) -> str:
    row = sub.execute("SELECT apply_error_count, sync_error_count FROM"
                      " pg_stat_subscription_stats WHERE subname = %s", [name]).fetchone()
    if row and (row[0] or row[1]):
        return f" (subscription errors so far: apply {row[0]}, sync {row[1]}; see the " \
               "subscriber's server log)"
    return ""


def _marker_round_trip(sides: _Sides, timeout_s: float) -> float:
    """Write a marker on the publisher, wait until the subscriber has applied it. Returns ms."""
    token = uuid.uuid4().hex
    t0 = time.monotonic()
    sides.publisher.execute("INSERT INTO pgcleave.move_markers (token) VALUES (%s)", [token])
    delay = 0.001
    while True:
        row = sides.subscriber.execute(
            "SELECT EXISTS (SELECT 1 FROM pgcleave.move_markers WHERE token = %s)",
            [token]).fetchone()
        if row and row[0]:
            return (time.monotonic() - t0) * 1000
        if time.monotonic() - t0 > timeout_s:
            raise StepFailed(f"the subscriber did not apply a marker within {timeout_s:.0f}s",
                             hint="check the subscriber's log; then `pgcleave resume JOB`")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def catch_up(ctx: ActionContext) -> None:
    p = cast(MoveParams, ctx.params)
    timeout = float(p.get("timeout_s", 3600))
    sides = _Sides(ctx)
    try:
        _heal_subscription(ctx, sides)
        t0 = time.monotonic()
        stuck_since: float | None = None
        while True:
            ready, state, copied = _sync_state(sides.subscriber, p["name"])
            if ready:
                break
            if _sync_slot_lost(sides, copied):
                stuck_since = stuck_since or time.monotonic()
                if time.monotonic() - stuck_since > SYNC_SLOT_GRACE_S:
                    _copy_again(ctx, sides, "a table's copy finished but its synchronization "
                                "slot is gone (the shard stopped between the two)")
                    stuck_since = None
                    continue
            else:
                stuck_since = None
            if time.monotonic() - t0 > timeout:
                raise StepFailed(f"initial copy not done after {timeout:.0f}s: {state}"
                                 + _sub_errors(sides.subscriber, p["name"]),
                                 hint="check the subscriber's log; then `pgcleave resume JOB`")
            ctx.progress(f"initial copy: {state}{_sub_errors(sides.subscriber, p['name'])}"
                         f" ({time.monotonic() - t0:.0f}s)")
            time.sleep(0.1)
        lag = _marker_round_trip(sides, timeout)
        ctx.progress(f"subscriber caught up (marker applied in {lag:.0f} ms)", final=True)
    finally:
        sides.close()


#: How long a table may stay "copied, slot gone" before the copy starts again. A table sync
#: worker drops its slot on the publisher just before it commits the table's next state, so
#: the pair is seen for a moment in normal operation; a retrying worker takes 5 s per try.
SYNC_SLOT_GRACE_S = 5.0


def _sync_slot_lost(sides: _Sides, copied: list[tuple[int, int]]) -> bool:
    """True when a table in state 'f' (copied, catching up; ``copied``: its subscription
    and table oids) no longer has its table sync slot on the publisher. PostgreSQL's sync
    worker drops that slot before it commits the table's next state; a subscriber that stops
    between the two comes back with a worker that retries START_REPLICATION on the missing
    slot forever."""
    for subid, relid in copied:
        found = sides.publisher.execute(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE %s",
            [f"pg\\_{subid}\\_sync\\_{relid}\\_%"]).fetchone()
        if found == (0,):
            return True
    return False


def _copy_again(ctx: ActionContext, sides: _Sides, why: str) -> None:
    """Start the initial copy again from scratch. Nothing reads the receiving table before the
    cut-over (the origin keeps every row until then), so emptying it loses nothing."""
    p = cast(MoveParams, ctx.params)
    ctx.progress(f"{why}: copying again from the start", final=True)
    sides.subscriber.execute(sql.SQL("DROP SUBSCRIPTION IF EXISTS {}").format(
        sql.Identifier(p["name"])))
    _resubscribe(ctx, sides)


def _heal_subscription(ctx: ActionContext, sides: _Sides) -> None:
    """A subscriber that crashed right after CREATE SUBSCRIPTION may have lost it (its commit
    was not yet flushed). Start the copy again from scratch: empty the receiving table, drop
    the publisher's orphaned slot, subscribe again."""
    p = cast(MoveParams, ctx.params)
    if sides.subscriber.execute("SELECT count(*) FROM pg_subscription WHERE subname = %s",
                                [p["name"]]).fetchone() != (0,):
        return
    ctx.progress("the subscription is missing on the subscriber (lost in a crash?): "
                 "copying again from the start", final=True)
    _resubscribe(ctx, sides)


def _resubscribe(ctx: ActionContext, sides: _Sides) -> None:
    p = cast(MoveParams, ctx.params)
    receiving = QualifiedName(*p["remote"])
    sides.subscriber.execute(sql.SQL("TRUNCATE {}").format(receiving.ident))
    sides.publisher.execute("SELECT pg_drop_replication_slot(slot_name) FROM"
                            " pg_replication_slots WHERE slot_name = %s AND NOT active",
                            [p["name"]])
    if p["direction"] == "back":
        sides.subscriber.execute("SET synchronous_commit = on")
    _create_subscription(ctx, sides.subscriber)


def hash_query(table: QualifiedName, columns: list[str], binary: bool = False
                ) -> sql.Composed:
    """count + order-independent sum of row hashes. ``binary`` hashes the values themselves
    (hash_record_extended, PG14+, about twice as fast as hashing the row's text); it needs a
    hash function for every column type, else the text form is hashed."""
    row = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    fn = "hash_record_extended(ROW({}), 0)" if binary else "hashtextextended(ROW({})::text, 0)"
    return sql.SQL("SELECT count(*), coalesce(sum(" + fn + "), 0)::text FROM ONLY {}").format(
        row, table.ident)


def binary_hash_works(conns: list[Connection], tables: list[QualifiedName],
                       columns: list[str]) -> bool:
    for c, t in zip(conns, tables, strict=True):
        if c.info.server_version < 140000:
            return False
        try:
            with c.transaction():
                c.execute(sql.SQL("SELECT hash_record_extended(ROW({}), 0) FROM ONLY {} LIMIT 1"
                                  ).format(sql.SQL(", ").join(map(sql.Identifier, columns)),
                                           t.ident))
        except psycopg.Error:
            return False
    return True


def cutover(ctx: ActionContext) -> None:
    p = cast(CutoverParams, ctx.params)
    conn = ctx.conn
    parent = QualifiedName(*p["parent"])
    part = QualifiedName(*p["partition"])
    remote = QualifiedName(*p["remote"])
    incoming = QualifiedName(*p["incoming"])
    aside = QualifiedName(*p["aside"])
    out = p["direction"] == "out"
    local_rows = part if out else incoming  # the local table holding the rows
    swap = [s.as_string(None) for s in swap_sql(p, parent, part, incoming, aside)]
    sides = _Sides(ctx)
    try:
        for s in HASH_SETTINGS:
            conn.execute(s)
            sides.remote.execute(s)
        # catch up once more before locking, so the locked part only waits for the last writes
        _marker_round_trip(sides, 600)
        p = CutoverParams(**{**p, "binary_hash": binary_hash_works(
            [conn, sides.remote], [local_rows, remote], p["columns"])})
        held, lag, n = ctx.retry_locks(
            lambda: _cutover_once(ctx, sides, parent, local_rows, remote, p, swap),
            what="the cut-over",
            hint="a long transaction holds the table; find it in pg_stat_activity")
        ctx.save({"held_ms": held, "rows": n, "lag_ms": lag})
        ctx.progress(f"cut-over done: {n} rows verified, writes waited {held:.0f} ms "
                     f"(replication lag {lag:.0f} ms)", final=True, held_ms=held)
    finally:
        for s in HASH_RESET:
            if not conn.closed:
                conn.execute(s)
        sides.close()


def _cutover_once(ctx: ActionContext, sides: _Sides, parent: QualifiedName,
                  local_rows: QualifiedName, remote: QualifiedName, p: CutoverParams,
                  swap: list[str]) -> tuple[float, float, int]:
    conn = ctx.conn
    columns: list[str] = p["columns"]
    with conn.transaction():
        ctx.set_lock_timeout(conn)
        conn.execute("SET LOCAL pgcleave.allow_ddl = 'on'")
        # Writes through the parent take ROW EXCLUSIVE on it: EXCLUSIVE makes them wait while
        # reads go on. Every write committed before we got the lock is in the WAL before the
        # marker, and replication applies in commit order.
        conn.execute(sql.SQL("LOCK TABLE ONLY {} IN EXCLUSIVE MODE").format(parent.ident))
        if p["direction"] == "out":
            conn.execute(sql.SQL("LOCK TABLE ONLY {} IN EXCLUSIVE MODE").format(
                local_rows.ident))
        t0 = time.monotonic()
        lag = _marker_round_trip(sides, 60)
        # count + hash on both servers at once
        remote_result: list[Any] = []

        def remote_hash() -> None:
            try:
                remote_result.append(sides.remote.execute(
                    hash_query(remote, columns, p["binary_hash"])).fetchone())
            except psycopg.Error as exc:
                remote_result.append(exc)

        th = threading.Thread(target=remote_hash)
        th.start()
        here = conn.execute(hash_query(local_rows, columns, p["binary_hash"])).fetchone()
        th.join()
        there = remote_result[0]
        if isinstance(there, Exception):
            raise there
        assert here is not None and there is not None
        if tuple(here) != tuple(there):
            raise StepFailed(
                f"verification failed: here {here[0]} rows (hash {here[1]}), on {p['server']} "
                f"{there[0]} rows (hash {there[1]}); nothing was swapped",
                hint="replication lost or changed rows (see the subscriber's log); "
                     "`pgcleave rollback JOB` undoes the move")
        # The subscriber applied the rows with asynchronous commits: make them durable before
        # the local copy stops being the live one (a commit with synchronous_commit = on
        # flushes all WAL before it).
        if p["direction"] == "out":
            with sides.remote.transaction():
                sides.remote.execute("SET LOCAL synchronous_commit = on")
                sides.remote.execute("INSERT INTO pgcleave.move_markers (token) VALUES ('flush')")
        else:
            conn.execute("SET LOCAL synchronous_commit = on")
        for s in swap:
            conn.execute(s.encode())
        record_placement(conn, parent, p["direction"])
    held = (time.monotonic() - t0) * 1000  # from the lock to the commit: what writers waited
    return held, lag, int(here[0])


def record_placement(conn: Connection, parent: QualifiedName, direction: str) -> None:
    """In the cut-over's transaction: ``pgcleave.sharded_tables`` lists the tables with a
    partition on another server (what the DDL guard and ``alter`` look at)."""
    if direction == "out":
        conn.execute(
            "INSERT INTO pgcleave.sharded_tables (relid, columns) VALUES (%s::regclass,"
            " pgcleave.columns_signature(%s::regclass)) ON CONFLICT (relid) DO UPDATE SET"
            " columns = excluded.columns, updated_at = clock_timestamp()",
            [parent.quoted, parent.quoted])
    else:
        conn.execute(
            "DELETE FROM pgcleave.sharded_tables WHERE relid = %s::regclass AND NOT EXISTS"
            " (SELECT 1 FROM pg_partition_tree(%s::regclass) t JOIN pg_class c ON"
            " c.oid = t.relid WHERE c.relkind = 'f')", [parent.quoted, parent.quoted])
