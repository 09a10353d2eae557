"""Move's copy method at run time: no replication, only ordinary privileges.

The rows go from the source (the local partition for a move out, the shard's table for a move
back) to the destination over two connections, ``COPY (SELECT ...) TO STDOUT`` on one streamed
block by block into ``COPY ... FROM STDIN`` on the other, in one snapshot. A trigger on the
source has logged the primary key of every row the application wrote since before that
snapshot (``ddl.capture.key_log_function``); replays bring the destination up to date
(``ddl.capture.CopyAcross`` says why nothing is lost). The cut-over locks the parent IN
EXCLUSIVE MODE (writes wait, reads go on), replays the last keys, verifies count and hash of
both sides and swaps the partitions as the replication method does. ``ops/move.py`` plans the
steps that name these actions."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import psycopg
from psycopg import sql

from .. import servers
from ..connection import Connection
from ..ddl.capture import PORTABLE_SETTINGS, REPLAY_SETTINGS, CopyAcross
from ..errors import StepFailed
from ..execute import ActionContext
from ..names import QualifiedName
from ..throttle import Throttle
from .move import (
    COPY_CATCHUP_KEYS,
    CopyCutoverParams,
    CopyFields,
    CopyParams,
    RemoteDDLParams,
    capture_drop_sql,
    swap_sql,
)
from .move_run import HASH_RESET, binary_hash_works, hash_query, record_placement

#: Retry pauses of the cut-over stay short: while its EXCLUSIVE request waits, writers queue
#: behind it, so short frequent attempts (each waiting at most lock_timeout) hurt them least.
CUTOVER_RETRY_CAP_S = 0.25

#: Replays outside the lock before the cut-over, until fewer keys than this were logged.
FINAL_REPLAY_KEYS = 200


class _Ends:
    """The two connections of a copy: ``src`` (where the capture trigger and log are) and
    ``dst``, plus ``remote`` (whichever of them is the shard) and the COPY statements."""

    def __init__(self, ctx: ActionContext, p: CopyFields, server: str, columns: list[str]
                 ) -> None:
        self.remote = servers.connect_remote(ctx.conn, server, purpose="move-copy")
        try:
            self.local = ctx.connect("move-copy")
        except BaseException:
            self.remote.close()
            raise
        out = p["source"] == "local"
        self.src, self.dst = (self.local, self.remote) if out else (self.remote, self.local)
        for c in (self.src, self.dst):
            for s in PORTABLE_SETTINGS:
                c.execute(s)
        # what the destination committed survives its crash before the journal says so
        self.dst.execute("SET synchronous_commit = on")
        same_major = (self.src.info.server_version // 10000
                      == self.dst.info.server_version // 10000)
        self.across = CopyAcross(QualifiedName(*p["src"]), QualifiedName(*p["dst"]),
                                 QualifiedName(*p["log"]), columns,
                                 list(p["pk"]), same_major)

    def close(self) -> None:
        for c in (self.remote, self.local):
            if not c.closed:
                c.close()


@contextmanager
def _ends(ctx: ActionContext, p: CopyParams | CopyCutoverParams) -> Iterator[_Ends]:
    e = _Ends(ctx, p, p["server"], p["columns"])
    try:
        yield e
    finally:
        e.close()


def _pipe(src: Connection, out_sql: sql.Composed, dst: Connection, in_sql: sql.Composed,
          check: Callable[[], None] | None = None) -> int:
    """Stream ``COPY ... TO STDOUT`` on ``src`` into ``COPY ... FROM STDIN`` on ``dst``, block
    by block (never the whole table in memory). Returns the rows written. ``check`` (the
    throttle's) is called between blocks: it may pause the stream or stop it (the copy's
    transactions then roll back and a resumed job copies again)."""
    with src.cursor() as sc, dst.cursor() as dc:
        with sc.copy(out_sql) as cout, dc.copy(in_sql) as cin:
            for block in cout:
                cin.write(block)
                if check is not None:
                    check()
        return max(dc.rowcount, 0)


def _bulk(e: _Ends, throttle: Throttle) -> int:
    a = e.across
    with e.dst.transaction():
        e.dst.execute(a.truncate)  # a copy cut short by a kill starts again from nothing
        with e.src.transaction():
            e.src.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            return _pipe(e.src, a.bulk_out, e.dst, a.rows_in, throttle.check)


def _replay(e: _Ends) -> int:
    """One replay (``CopyAcross``): returns how many distinct keys it brought up to date."""
    a = e.across
    with e.src.transaction():
        e.src.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        for s in REPLAY_SETTINGS:
            e.src.execute(s)
        with e.dst.transaction():
            for s in REPLAY_SETTINGS:
                e.dst.execute(s)
            e.dst.execute(a.keys_table)
            n = _pipe(e.src, a.keys_out, e.dst, a.keys_in)
            if n == 0:
                return 0
            e.dst.execute(a.delete)
            _pipe(e.src, a.rows_out, e.dst, a.rows_in)
        # the destination has committed: now the log rows of this snapshot can go
        e.src.execute(a.consume)
    return n


# -- actions -----------------------------------------------------------------------------------
def remote_ddl(ctx: ActionContext) -> None:
    """Statements on a shard in one transaction under the run's lock_timeout, retried."""
    p = cast(RemoteDDLParams, ctx.params)
    with servers.connect_remote(ctx.conn, p["server"], purpose="move-ddl") as rc:
        def attempt() -> None:
            with rc.transaction():
                ctx.set_lock_timeout(rc)
                for s in p["statements"]:
                    rc.execute(s.encode())

        ctx.retry_locks(attempt, what=f"DDL on server {p['server']}",
                        hint=f"a long transaction on server {p['server']} holds the table; "
                             "find it in pg_stat_activity there")


def copy(ctx: ActionContext) -> None:
    """The bulk copy (once: its row count saved when the destination committed it), then
    replays of the key log until fewer than ``catchup_keys`` keys were logged during one."""
    p = cast(CopyParams, ctx.params)
    state = ctx.load()
    t0 = time.monotonic()
    with _ends(ctx, p) as e, ctx.throttle() as throttle:
        if "copied" not in state:
            n = _bulk(e, throttle)
            state = {"copied": n}
            ctx.save(state)
            s = time.monotonic() - t0
            ctx.progress(f"copied {n:,} rows in {s:.1f} s ({n / max(s, 1e-6):,.0f} rows/s, "
                         f"{'binary' if e.across.binary else 'text'} COPY)", copied=n,
                         final=True)
        limit = int(p.get("catchup_keys", COPY_CATCHUP_KEYS))
        for _ in range(50):
            throttle.check()
            k = _replay(e)
            ctx.progress(f"replayed {k:,} logged key(s)", replayed=k)
            if k < limit:
                break
    ctx.progress(f"copied {state['copied']:,} rows and caught up in "
                 f"{time.monotonic() - t0:.1f} s", copied=state["copied"], final=True)


def cutover(ctx: ActionContext) -> None:
    p = cast(CopyCutoverParams, ctx.params)
    conn = ctx.conn
    out = p["direction"] == "out"
    parent, part = QualifiedName(*p["parent"]), QualifiedName(*p["partition"])
    remote, incoming = QualifiedName(*p["remote"]), QualifiedName(*p["incoming"])
    aside = QualifiedName(*p["aside"])
    local_rows = part if out else incoming
    swap = [s.as_string(None) for s in swap_sql(p, parent, part, incoming, aside)]
    if out:  # the source is now the detached table: its trigger goes in the same transaction
        swap.append(capture_drop_sql(p["trigger"], aside).as_string(None))
    with _ends(ctx, p) as e:
        try:
            for s in PORTABLE_SETTINGS:
                conn.execute(s)
            # catch up outside the lock, so the locked part only replays the last writes
            for _ in range(20):
                if _replay(e) < FINAL_REPLAY_KEYS:
                    break
            binary = binary_hash_works([conn, e.remote], [local_rows, remote], p["columns"])
            held, tail, n = ctx.retry_locks(
                lambda: _cutover_once(ctx, e, parent, part if out else None, local_rows,
                                      remote, p, binary, swap),
                what="the cut-over", cap=CUTOVER_RETRY_CAP_S,
                hint="a long transaction holds the table; find it in pg_stat_activity")
        finally:
            if not conn.closed:
                for s in HASH_RESET:
                    conn.execute(s)
    ctx.save({"held_ms": held, "rows": n, "tail_keys": tail})
    ctx.progress(f"cut-over done: {n} rows verified, {tail} key(s) replayed under the lock, "
                 f"writes waited {held:.0f} ms", final=True, held_ms=held)


def _cutover_once(ctx: ActionContext, e: _Ends, parent: QualifiedName,
                  part: QualifiedName | None, local_rows: QualifiedName,
                  remote: QualifiedName, p: CopyCutoverParams, binary: bool, swap: list[str]
                  ) -> tuple[float, int, int]:
    conn = ctx.conn
    columns: list[str] = p["columns"]
    with conn.transaction():
        ctx.set_lock_timeout(conn)
        conn.execute("SET LOCAL pgcleave.allow_ddl = 'on'")
        # Writes through the parent take ROW EXCLUSIVE on it, direct writes to the local
        # partition on the partition: EXCLUSIVE makes them wait while reads go on. Every write
        # committed before we got the locks is visible to the replays' snapshots from now on,
        # and its keys are in the log (a write to a foreign partition commits on the shard
        # before the local transaction commits).
        conn.execute(sql.SQL("LOCK TABLE ONLY {} IN EXCLUSIVE MODE").format(parent.ident))
        if part is not None:
            conn.execute(sql.SQL("LOCK TABLE ONLY {} IN EXCLUSIVE MODE").format(part.ident))
        t0 = time.monotonic()
        tail = 0
        for _ in range(10):
            k = _replay(e)
            tail += k
            if k == 0:
                break
        else:
            raise StepFailed("the key log still grows while the table is locked for writes: "
                             "something writes to the source directly (not through "
                             f"{parent}); nothing was swapped",
                             hint="stop that writer, then `pgcleave resume JOB`")
        remote_result: list[Any] = []

        def remote_hash() -> None:
            try:
                remote_result.append(e.remote.execute(
                    hash_query(remote, columns, binary)).fetchone())
            except psycopg.Error as exc:
                remote_result.append(exc)

        th = threading.Thread(target=remote_hash)
        th.start()
        try:
            here = conn.execute(hash_query(local_rows, columns, binary)).fetchone()
        finally:
            th.join()
        there = remote_result[0]
        if isinstance(there, Exception):
            raise there
        assert here is not None and there is not None
        if tuple(here) != tuple(there):
            raise StepFailed(
                f"verification failed: here {here[0]} rows (hash {here[1]}), on {p['server']} "
                f"{there[0]} rows (hash {there[1]}); nothing was swapped",
                hint="the copy and its replays disagree with the source; "
                     "`pgcleave rollback JOB` undoes the move")
        conn.execute("SET LOCAL synchronous_commit = on")
        for s in swap:
            conn.execute(s.encode())
        record_placement(conn, parent, p["direction"])
    held = (time.monotonic() - t0) * 1000  # from the lock to the commit: what writers waited
    return held, tail, int(here[0])
