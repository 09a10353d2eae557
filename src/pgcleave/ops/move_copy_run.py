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
from contextlib import contextmanager, nullcontext
from typing import Any, cast

import psycopg
from psycopg import sql

from .. import servers
from ..connection import Connection
from ..ddl.capture import PORTABLE_SETTINGS, REPLAY_SETTINGS, CopyAcross
from ..ddl.parallel import key_cuts, run_queue
from ..errors import StepFailed
from ..execute import ActionContext
from ..faults import kill_if_due
from ..journal import save_progress_part
from ..names import QualifiedName
from ..throttle import RateLimit, Throttle
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


class _Paced:
    """What the bulk copy's ``_pipe`` calls after each block: the throttle's check, and the
    count of ``--max-rate`` (``RateLimit``, one for every pair of connections). A block is a
    row: PostgreSQL sends each row of a COPY TO in a CopyData message of its own (the binary
    header rides with the first, the trailer comes alone) and psycopg yields one message per
    block. The rows reach the shared limit a few at a time (about 50 times a second at the
    rate), not one lock per row; ``flush`` hands over the last ones."""

    def __init__(self, throttle: Throttle, rate: RateLimit) -> None:
        self.throttle, self.rate = throttle, rate
        self.every = max(1, min(1000, int((rate.rows_per_s or 0) / 50)))
        self.rows = 0

    def __call__(self) -> None:
        self.throttle.check()
        if self.rate.rows_per_s:
            self.rows += 1
            if self.rows >= self.every:
                self.flush()

    def flush(self) -> None:
        self.rate.add(self.rows)
        self.rows = 0


def _pipe(src: Connection, out_sql: sql.Composed, dst: Connection, in_sql: sql.Composed,
          check: Callable[[], None] | None = None) -> int:
    """Stream ``COPY ... TO STDOUT`` on ``src`` into ``COPY ... FROM STDIN`` on ``dst``, block
    by block (never the whole table in memory). Returns the rows written. ``check`` (the
    throttle's, or a ``_Paced``) is called between blocks: it may pause the stream or stop it
    (the copy's transactions then roll back and a resumed job copies again)."""
    with src.cursor() as sc, dst.cursor() as dc:
        with sc.copy(out_sql) as cout, dc.copy(in_sql) as cin:
            for block in cout:
                cin.write(block)
                if check is not None:
                    check()
        return max(dc.rowcount, 0)


def _bulk(e: _Ends, throttle: Throttle, rate: RateLimit) -> int:
    a = e.across
    with e.dst.transaction():
        e.dst.execute(a.truncate)  # a copy cut short by a kill starts again from nothing
        with e.src.transaction():
            e.src.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            return _pipe(e.src, a.bulk_out, e.dst, a.rows_in, _Paced(throttle, rate))


def _parallel_bulk(ctx: ActionContext, p: CopyParams, e: _Ends, throttle: Throttle,
                   rate: RateLimit) -> int:
    """The bulk copy on ``jobs`` pairs of connections (``--jobs``), each share a range of the
    primary key (``ddl.parallel.key_cuts``), each pair's source transaction importing one
    snapshot that ``e.src`` exports. A share is recorded in the journal once its destination
    committed; a share not recorded (the job was killed) is copied again after deleting
    what it left there (``CopyAcross.range_delete``), in the snapshot of the resumed run:
    a key nobody wrote since the first snapshot has the same row in both, and every key
    written since is in the log, which the replays then apply. Returns the rows copied."""
    a = e.across
    state = ctx.load()
    if "shares" not in state:
        e.dst.execute(a.truncate)  # a copy cut short before its shares were chosen
        cuts = key_cuts(e.src, a.src, a.pk, int(p.get("jobs") or 1))
        state = {"shares": {str(i): {"after": cuts[i], "upto": cuts[i + 1]
                                     if i + 1 < len(cuts) else None} for i in range(len(cuts))}}
        ctx.save(state)
    todo = [k for k, s in sorted(state["shares"].items(), key=lambda kv: int(kv[0]))
            if not s.get("done")]
    if todo:
        _copy_shares(ctx, p, e, state["shares"], todo, throttle, rate)
    return sum(int(s.get("rows", 0)) for s in ctx.load()["shares"].values())


def _copy_shares(ctx: ActionContext, p: CopyParams, e: _Ends, shares: dict[str, Any],
                 todo: list[str], throttle: Throttle, rate: RateLimit) -> None:
    a = e.across
    n_pairs = max(1, min(int(p.get("jobs") or 1), len(todo)))
    pairs: list[_Ends] = []
    lock = threading.Lock()
    saved = [0]
    try:
        for _ in range(n_pairs):
            pairs.append(_Ends(ctx, p, p["server"], p["columns"]))
        with e.src.transaction():
            e.src.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            row = e.src.execute("SELECT pg_export_snapshot()").fetchone()
            assert row is not None
            snap = sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(str(row[0])))

            def copy_share(pair: _Ends, k: str, _stop: threading.Event) -> None:
                share, paced = shares[k], _Paced(throttle, rate)
                cond = a.key_range(list(p["pk_types"]), share["after"], share["upto"])
                with pair.dst.transaction():
                    pair.dst.execute(a.range_delete(cond))
                    with pair.src.transaction():
                        pair.src.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                        pair.src.execute(snap)
                        n = _pipe(pair.src, a.range_out(cond), pair.dst, a.rows_in, paced)
                        paced.flush()
                with lock:  # the job's connection, shared by the pairs' threads
                    save_progress_part(ctx.conn, ctx.job_id, ctx.index, "shares", k,
                                       {**share, "done": True, "rows": n})
                    saved[0] += 1
                    kill_if_due("kill-move-after-shares", saved[0])

            # the pairs are opened (and closed) here, before the snapshot they import
            run_queue(todo, n_pairs, copy_share, open_worker=lambda i: nullcontext(pairs[i]),
                      name="pgcleave-move-copy")
    finally:
        for x in pairs:
            x.close()


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
    replays of the key log until fewer than ``catchup_keys`` keys were logged during one.
    ``max_rate`` paces the bulk copy only: the replays are what keeps the copy up with the
    application, and slowing them would only make the log grow."""
    p = cast(CopyParams, ctx.params)
    state = ctx.load()
    t0 = time.monotonic()
    with _ends(ctx, p) as e, ctx.throttle() as throttle:
        if "copied" not in state:
            parallel = int(p.get("jobs") or 1) > 1
            rate = RateLimit(p.get("max_rate"))
            n = (_parallel_bulk(ctx, p, e, throttle, rate) if parallel
                 else _bulk(e, throttle, rate))
            state = {**(ctx.load() if parallel else {}), "copied": n}
            ctx.save(state)
            s = time.monotonic() - t0
            ctx.progress(f"copied {n:,} rows in {s:.1f} s ({n / max(s, 1e-6):,.0f} rows/s, "
                         f"{'binary' if e.across.binary else 'text'} COPY"
                         + (f", {p['jobs']} connection pairs" if parallel else "")
                         + (f", at most {p['max_rate']:,.0f} rows/s" if p.get("max_rate")
                            else "") + ")",
                         copied=n,
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
