"""Carve's runtime actions: the bulk copy in one snapshot with its index builds on two
connections, the key-log replays, the count and hash verification, and the swap in short bounded
transactions. ``ops/carve.py`` plans the steps that name these actions."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from psycopg import sql

from .. import journal
from ..connection import Connection, pipelined_transaction
from ..ddl.parallel import block_layout, block_shares, run_queue
from ..errors import StepFailed
from ..execute import ActionContext
from ..faults import kill_if_due
from ..throttle import RateLimit, Throttle
from .carve import FINAL_REPLAY_ROWS
from .carve_state import CopyParams, ParallelCopy, SwapParams, VerifyParams

T = TypeVar("T")


# The swap transactions are cut-overs: each one's lock request waits at most this long (or
# the configured lock_timeout if shorter) and is retried after pauses of at most
# SWAP_RETRY_CAP_S. A waiting ACCESS EXCLUSIVE request blocks every writer queued behind it,
# so a writer waits at most about this timeout plus the (tens of ms) hold.
SWAP_LOCK_TIMEOUT_MS = 50


SWAP_RETRY_CAP_S = 0.25

#: The most rows one range of the bulk copy reads (``--batch-time`` sizes them below this).
BULK_RANGE_ROWS = 200_000

#: A range of a parallel bulk copy is its own transaction and journal row, sized to last
#: about this long (or --batch-time if longer): no application write ever waits on these
#: rows, and longer ranges cost fewer commits.
PARALLEL_RANGE_MS = 250


def _replay(conn: Connection, statements: list[str]) -> int:
    """One replay in one REPEATABLE READ snapshot; returns how many log rows it consumed."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        for s in statements[:-1]:
            conn.execute(s.encode())
        return conn.execute(statements[-1].encode()).rowcount


def _begun(conn: Connection, params: CopyParams | VerifyParams) -> bool:
    if "begun" not in params:
        return False
    row = conn.execute(params["begun"].encode()).fetchone()
    return bool(row and row[0])


def _snapshot_id(conn: Connection) -> str:
    row = conn.execute("SELECT pg_export_snapshot()").fetchone()
    assert row is not None
    return str(row[0])


def _on_side(ctx: ActionContext, fn: Callable[[Connection], T]) -> Callable[[], T]:
    """Start ``fn`` on a second connection in a thread; the returned function waits for it
    and returns its result (or raises its exception). The connection is closed either way."""
    side = ctx.connect("carve-side")
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["out"] = fn(side)
        except BaseException as exc:  # re-raised in the caller's thread
            box["exc"] = exc

    th = threading.Thread(target=run, name="pgcleave-carve-side", daemon=True)
    th.start()

    def wait() -> T:
        th.join()
        side.close()
        if "exc" in box:
            raise box["exc"]
        out: T = box["out"]
        return out

    return wait


def _build_indexes(ctx: ActionContext, p: CopyParams) -> None:
    """Each leaf's indexes (and ANALYZE) in one transaction, the leaves shared out between
    two connections as they free up; a leaf that has an index already was done by a killed
    run. Then the holder's indexes, which attach the leaves' ones (catalog only)."""
    conn = ctx.conn
    queue = list(p.get("leaf_jobs", []))
    lock = threading.Lock()

    def worker(c: Connection) -> None:
        while True:
            with lock:
                if not queue:
                    return
                leaf, stmts = queue.pop(0)
            row = c.execute("SELECT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = "
                            "to_regclass(%s))", [leaf]).fetchone()
            if row and row[0]:
                continue
            with c.transaction():
                for stmt in stmts:
                    c.execute(stmt.encode())

    wait = _on_side(ctx, worker)
    try:
        worker(conn)
    finally:
        wait()
    with conn.transaction():
        for stmt in p.get("index_top", []):
            conn.execute(stmt.encode())
        ctx.save({**ctx.load(), "indexed": True})


#: The bulk copy statement as carve plans it: ``INSERT ... SELECT ... FROM ONLY source``.
_ENDS_WITH_SOURCE = re.compile(r'FROM ONLY (?:"(?:[^"]|"")*"\.)?"(?:[^"]|"")*"$')


def _bulk_copy(ctx: ActionContext, statement: str, throttle: Throttle) -> int:
    """The bulk copy in the caller's REPEATABLE READ transaction, in block ranges (TID range
    scans) sized by ``--batch-time`` so the throttle is asked between two of them; the
    snapshot is the same for every range, so together they copy what the one statement
    would. The application never waits on these rows (they go to tables it does not see;
    its writes only log keys), so the ranges are for the throttle's sake. Each range's
    statement is the planned one with a ctid condition added; a statement of another shape
    (an older plan) runs whole."""
    conn = ctx.conn
    if not _ENDS_WITH_SOURCE.search(statement):
        return conn.execute(statement.encode()).rowcount
    source = statement[statement.rindex("FROM ONLY ") + len("FROM ONLY "):]
    layout = block_layout(conn, source)
    blocks = layout.blocks
    cap = max(1, round(BULK_RANGE_ROWS / max(layout.per_block, 1.0)))
    pacer = ctx.pacer(cap=cap, first=max(1, cap // 100))
    lo, n = 0, 0
    while True:
        throttle.check()
        hi = lo + pacer.size
        last = hi >= blocks
        cond = (sql.SQL(" WHERE ctid >= {}::tid").format(sql.Literal(f"({lo},0)")) if last
                else sql.SQL(" WHERE ctid >= {}::tid AND ctid < {}::tid").format(
                    sql.Literal(f"({lo},0)"), sql.Literal(f"({hi},0)")))
        t = time.monotonic()
        n += max(conn.execute(sql.Composed([sql.SQL(statement), cond])).rowcount, 0)
        if last:
            return n
        pacer.record(hi - lo, time.monotonic() - t)
        pacer.rest()
        lo = hi


# -- the bulk copy on several connections (--jobs) -------------------------------------------
@dataclass
class _Run:
    """What the connections of one parallel copy share."""

    ctx: ActionContext
    par: ParallelCopy
    shares: list[dict[str, Any]]
    snapshot: str
    throttle: Throttle
    rate: RateLimit
    lock: threading.Lock = field(default_factory=threading.Lock)
    rows: int = 0
    ranges: int = 0


def _fresh_shares(conn: Connection, par: ParallelCopy) -> dict[str, Any]:
    """A first run's shares: each source cut into ``jobs`` contiguous block ranges (its last
    one open-ended: rows added at the end are the key log's, but copying them is harmless)."""
    shares: list[dict[str, Any]] = []
    nodes: list[int] = []
    for i, src in enumerate(par["sources"]):
        layout = block_layout(conn, src["source"])
        nodes.append(layout.filenode)
        shares += [{"source": i, "lo": lo, "hi": hi, "per_block": layout.per_block}
                   for lo, hi in block_shares(layout.blocks, int(par["jobs"]))]
    return {"filenodes": nodes, "shares": shares}


def _positions(shares: list[dict[str, Any]], parts: dict[str, dict[str, Any]]
               ) -> tuple[list[int], list[bool]]:
    """Where each share stands: the end of its last committed range, and whether that was
    its last. A share's ranges commit in order on one connection, so they form a prefix."""
    at = [int(s["lo"]) for s in shares]
    done = [False] * len(shares)
    for part in parts.values():
        k = int(part["share"])
        if part.get("last"):
            done[k] = True
        elif part.get("hi") is not None:
            at[k] = max(at[k], int(part["hi"]))
    return at, done


def _copy_share(run: _Run, conn: Connection, k: int, lo: int,
                stop: threading.Event) -> None:
    """One share, range after range, each in its own REPEATABLE READ transaction that
    imports the run's snapshot and journals the range (``step_parts``) before it commits."""
    ctx, share = run.ctx, run.shares[k]
    src = run.par["sources"][int(share["source"])]
    hi_share = share["hi"]
    per_block = max(float(share["per_block"]), 1.0)
    # --max-rate: a range holds at most PARALLEL_RANGE_MS of the rate, so the copy goes at
    # the rate in small steps rather than in bursts at full speed with long rests between
    rows = min(BULK_RANGE_ROWS, run.rate.rows_per_s * PARALLEL_RANGE_MS / 1000
               if run.rate.rows_per_s else BULK_RANGE_ROWS)
    cap = max(1, round(rows / per_block))
    pacer = ctx.pacer(cap, max(1, cap // 100),
                      target_ms=max(ctx.settings.batch_time_ms, PARALLEL_RANGE_MS))
    end = int(hi_share) if hi_share is not None else block_layout(conn, src["source"]).blocks
    set_snapshot = sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(run.snapshot))
    while not stop.is_set():
        run.throttle.check()
        last = lo + pacer.size >= end
        hi: int | None = hi_share if last else lo + pacer.size
        cond = (sql.SQL(" WHERE ctid >= {}::tid").format(sql.Literal(f"({lo},0)")) if hi is None
                else sql.SQL(" WHERE ctid >= {}::tid AND ctid < {}::tid").format(
                    sql.Literal(f"({lo},0)"), sql.Literal(f"({hi},0)")))
        t = time.monotonic()
        with pipelined_transaction(conn) as sync:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            conn.execute(set_snapshot)
            cur = conn.execute(sql.Composed([sql.SQL(src["copy"]), cond]))
            sync()
            n = max(cur.rowcount, 0)
            journal.insert_part(conn, ctx.job_id, ctx.index, f"{k}:{lo}",
                                {"share": k, "lo": lo, "hi": hi, "rows": n, "last": last})
        with run.lock:
            run.rows += n
            run.ranges += 1
            ranges = run.ranges
        kill_if_due("kill-carve-after-ranges", ranges)
        run.rate.add(n)  # the last range's rows too: the copy ends no sooner than the rate
        if last:
            return
        assert hi is not None
        pacer.record(hi - lo, time.monotonic() - t)
        pacer.rest()
        lo = hi


def _parallel_copy(ctx: ActionContext, p: CopyParams, par: ParallelCopy,
                   throttle: Throttle) -> int:
    """The bulk copy on ``jobs`` connections (see ``carve_state.parallel_copy``); returns the rows
    copied, in this run and the ones before.

    Resumed after a kill, the shares go on from their last committed range in a new snapshot
    T1, the ranges already copied being of the first one, T0. What the copies then hold is
    still exact for every key no replay will touch: a row nobody wrote since T0 is the same
    tuple at the same place in both snapshots, in one range, copied once; every row written
    since T0 has its key in the log (the trigger was there before T0). A row an UPDATE moved
    from a range not yet copied to one copied already (or back) may be missing or there
    twice: its key is logged, and a replay before the indexes are built (a unique index
    would refuse the second copy) sets it right. Only a rewrite of a source (VACUUM FULL,
    CLUSTER: new tuple places, nothing logged) breaks that; its new filenode shows it, and
    the copy then starts again from nothing."""
    conn = ctx.conn
    state = ctx.load()
    parts = journal.load_parts(conn, ctx.job_id, ctx.index)
    nodes = [block_layout(conn, s["source"]).filenode for s in par["sources"]]
    if parts and state.get("filenodes") != nodes:
        ctx.progress("a source was rewritten (VACUUM FULL, CLUSTER) since the copy began: "
                     "copying again from the start", final=True)
        with conn.transaction():
            conn.execute(par["truncate"].encode())
            journal.clear_parts(conn, ctx.job_id, ctx.index)
        parts = {}
    if not parts:
        state = _fresh_shares(conn, par)
        ctx.save(state)
    shares: list[dict[str, Any]] = state["shares"]
    at, done = _positions(shares, parts)
    todo = [k for k in range(len(shares)) if not done[k]]
    before = sum(int(x.get("rows", 0)) for x in parts.values())
    if todo and parts and not state.get("mixed"):
        state = {**state, "mixed": True}
        ctx.save(state)
    if todo:
        _run_shares(ctx, par, shares, at, todo, throttle, before)
    if state.get("mixed"):
        n = _replay(conn, [s for s in p["replay"] if not s.startswith("SET LOCAL")])
        ctx.progress(f"replayed {n:,} logged key(s) before the index builds (the copy was "
                     "resumed in a second snapshot)", replayed=n, final=True)
    return sum(int(x.get("rows", 0))
               for x in journal.load_parts(conn, ctx.job_id, ctx.index).values())


def _run_shares(ctx: ActionContext, par: ParallelCopy, shares: list[dict[str, Any]],
                at: list[int], todo: list[int], throttle: Throttle, before: int) -> None:
    """The shares left, on up to ``jobs`` connections taking them in turn, while the job's
    connection holds the snapshot they import open."""
    conn = ctx.conn
    t0 = time.monotonic()
    jobs = max(1, min(int(par["jobs"]), len(todo)))
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        run = _Run(ctx, par, shares, _snapshot_id(conn), throttle,
                   RateLimit(float(par["max_rate"]) if par.get("max_rate") else None))

        def report() -> None:
            s = max(time.monotonic() - t0, 1e-6)
            ctx.progress(f"copied {before + run.rows:,} rows ({run.rows / s:,.0f} rows/s, "
                         f"{jobs} connections)", done=before + run.rows, rate=run.rows / s)

        run_queue(todo, jobs, lambda c, k, stop: _copy_share(run, c, k, at[k], stop),
                  open_worker=lambda i: ctx.connect(f"carve-copy {i + 1}/{jobs}"),
                  report=report, name="pgcleave-carve")


def copy(ctx: ActionContext) -> None:
    """The bulk copy (one statement, its progress saved in its transaction so a resumed job
    does not copy twice; or, with ``--jobs``, ranges on several connections, each journaled
    as it commits), the index builds (two connections), then replays of the key log until
    fewer than ``catchup_rows`` keys changed during the last one."""
    conn = ctx.conn
    p = cast(CopyParams, ctx.params)
    if _begun(conn, p):
        return
    state = ctx.load()
    t0 = time.monotonic()
    with ctx.throttle() as throttle:
        if "copied" not in state and "parallel" in p:
            n = _parallel_copy(ctx, p, p["parallel"], throttle)
            state = {"copied": n}
            ctx.save(state)
            s = time.monotonic() - t0
            ctx.progress(f"copied {n:,} rows in {s:.1f} s on {p['parallel']['jobs']} "
                         f"connection(s) ({n / max(s, 1e-6):,.0f} rows/s)", copied=n,
                         final=True)
        if "copied" not in state:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                n = _bulk_copy(ctx, p["copy"], throttle)
                state = {"copied": n}
                ctx.save(state)
            s = time.monotonic() - t0
            ctx.progress(f"copied {n:,} rows in {s:.1f} s ({n / max(s, 1e-6):,.0f} rows/s)",
                         copied=n, final=True)
        _index_and_catch_up(ctx, p, state, throttle, t0)


def _index_and_catch_up(ctx: ActionContext, p: CopyParams, state: dict[str, Any],
                        throttle: Throttle, t0: float) -> None:
    conn = ctx.conn
    if not state.get("indexed"):
        t1 = time.monotonic()
        throttle.check()
        if "leaf_jobs" in p:
            _build_indexes(ctx, p)
        else:  # a job planned by an earlier version
            with conn.transaction():
                for stmt in p["index"]:
                    conn.execute(stmt.encode())
                ctx.save({**state, "indexed": True})
        state = {**state, "indexed": True}
        what = (f"the indexes of {len(p['leaf_jobs'])} table(s) (2 connections), analyzed "
                "them," if "leaf_jobs" in p else f"{len(p['index'])} index(es)")
        ctx.progress(f"built {what} in {time.monotonic() - t1:.1f} s", final=True)
    for _ in range(20):
        throttle.check()
        n = _replay(conn, p["replay"])
        ctx.progress(f"replayed {n:,} logged key(s)", replayed=n)
        if n < int(p.get("catchup_rows", 1000)):
            break
    ctx.progress(f"copied {state['copied']:,} rows and caught up in "
                 f"{time.monotonic() - t0:.1f} s", copied=state["copied"], final=True)


def verify(ctx: ActionContext) -> None:
    conn = ctx.conn
    p = cast(VerifyParams, ctx.params)
    if _begun(conn, p):
        return
    if p["ddl"]:
        ctx.run_ddl(list(p["ddl"]), transactional=False)
    # After a replay in the same snapshot the copies hold exactly the source's rows (see
    # _swap_steps), so the counts must match. The source is counted on a second connection
    # that imports this transaction's snapshot (it sees the source as this one does; only the
    # copies, which the replay changes, must be counted here), while the replay runs.
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        if "count_source" in p:
            snap = _snapshot_id(conn)

            def count(side: Connection) -> tuple[Any, ...]:
                with side.transaction():
                    side.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    side.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(
                        sql.Literal(snap)))
                    r = side.execute(p["count_source"].encode()).fetchone()
                assert r is not None
                return tuple(r)

            wait = _on_side(ctx, count)
            try:
                for s in p["replay"]:
                    conn.execute(s.encode())
                r = conn.execute(p["count_copies"].encode()).fetchone()
            finally:
                src_digest = wait()
            assert r is not None
            copy_digest = tuple(r)
        else:  # a job planned by an earlier version
            for s in p["replay"]:
                conn.execute(s.encode())
            r = conn.execute(p["count"].encode()).fetchone()
            assert r is not None
            src_digest, copy_digest = (r[0],), (r[1],)
    # (count) or, planned since 0.3, (count, sum of the rows' hashes): same rows, same values
    n_src, n_copy = int(src_digest[0]), int(copy_digest[0])
    if n_src != n_copy:
        raise StepFailed(f"the copies hold {n_copy:,} rows but the source {n_src:,}",
                         job_id=ctx.job_id,
                         hint=f"nothing was swapped; `pgcleave rollback {ctx.job_id}` removes "
                              "the copies")
    if src_digest[1:] != copy_digest[1:]:
        raise StepFailed(f"the copies hold {n_copy:,} rows as the source does, but their "
                         "values differ (hash of every row)", job_id=ctx.job_id,
                         hint=f"nothing was swapped; `pgcleave rollback {ctx.job_id}` removes "
                              "the copies")
    what = "rows (and row hashes)" if len(src_digest) > 1 else "rows"
    ctx.progress(f"verified: {n_src:,} {what} in the source and in the copies", final=True)


def swap(ctx: ActionContext) -> None:
    """The swap transactions, each a cut-over under a short lock_timeout, retried quickly
    (see SWAP_LOCK_TIMEOUT_MS). Each one's effect is visible in the catalog, which is what a
    resumed job checks to skip it."""
    conn = ctx.conn
    p = cast(SwapParams, ctx.params)

    def holds(q: str) -> bool:
        row = conn.execute(q.encode()).fetchone()
        return bool(row and row[0])

    timeout = max(1, min(int(ctx.settings.lock_timeout_ms), SWAP_LOCK_TIMEOUT_MS))

    def run(statements: list[str]) -> tuple[float, float]:
        """(ms waited for the locks, ms ACCESS EXCLUSIVE was held until the commit)."""
        times: list[float] = []

        def attempt() -> float:
            t0 = time.monotonic()
            t_locked = t0
            with conn.transaction():
                ctx.set_lock_timeout(conn, timeout)
                for stmt in statements:
                    conn.execute(stmt.encode())
                    if stmt.startswith("LOCK TABLE") and t_locked == t0:
                        t_locked = time.monotonic()
            t1 = time.monotonic()
            times[:] = [(t_locked - t0) * 1000, (t1 - t_locked) * 1000]
            return (t1 - t0) * 1000

        ctx.retry_locks(attempt, cap=SWAP_RETRY_CAP_S)
        return times[0], times[1]

    total = 1 + len(p["groups"])
    held: list[float] = []
    if not holds(p["first_done"]):
        # Catch up outside any exclusive lock first: the replay inside the first swap
        # transaction then handles only the keys written in the last moments.
        if p.get("replay"):
            for _ in range(5):
                if _replay(conn, p["replay"]) < int(p.get("catchup_rows", FINAL_REPLAY_ROWS)):
                    break
        wait, ms = run(list(p["first"]))
        held.append(ms)
        ctx.progress(f"swap 1/{total}: source detached, copies attached: ACCESS EXCLUSIVE held "
                     f"{ms:.0f} ms (lock wait {wait:.0f} ms)", held_ms=ms, final=True)
    for i, g in enumerate(p["groups"], start=2):
        if holds(g["done"]):
            continue
        wait, ms = run(list(g["sql"]))
        held.append(ms)
        ctx.progress(f"swap {i}/{total}: attached {g['what']}: ACCESS EXCLUSIVE held "
                     f"{ms:.0f} ms (lock wait {wait:.0f} ms)", held_ms=ms, final=True)
    ctx.save({"held_ms": held})
