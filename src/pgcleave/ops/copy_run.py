"""The Python actions of a copy (registered with the executor): the batched fill, the deferred
index build, and the verification of old against new.

The fill never moves a row through Python: each batch is one ``INSERT ... SELECT`` bounded by
two primary-key values (keyset pagination with row-value comparison, so composite, UUID and
text keys batch as well as integers). The batch's upper bound is found first with an index
scan (``ORDER BY pk OFFSET n-1 LIMIT 1``); the position reached is saved with ``ctx.save`` in
the batch's own transaction, so after a kill the fill resumes exactly after the last committed
batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from psycopg import errors as pgerrors
from psycopg import sql

from ..catalog import snapshot
from ..connection import Connection, pipelined_transaction
from ..ddl.parallel import block_layout, key_cuts, run_threads
from ..ddl.tables import collist
from ..errors import Refused
from ..execute import ActionContext
from ..faults import kill_if_due
from ..journal import save_progress_part
from ..names import QualifiedName, child_name
from ..throttle import RateLimit, Throttle
from .copy_state import (
    BuildIndexesParams,
    CopyVerifyParams,
    DeferredIndex,
    FillParams,
    fill_lock_key,
    resolve_copy,
)

#: The first batch of a run, in rows: small enough to stay within any --batch-time.
FIRST_BATCH_ROWS = 200


def _row_param(types: list[str]) -> sql.Composable:
    return sql.SQL("({})").format(sql.SQL(", ").join(
        sql.SQL("CAST({} AS {})").format(sql.Placeholder(), sql.SQL(t)) for t in types))


@dataclass
class _FillQueries:
    upper_first: sql.Composed
    upper_next: sql.Composed
    insert: dict[tuple[bool, bool, bool], sql.Composed] = field(default_factory=dict)
    physical: dict[bool, sql.Composed] = field(default_factory=dict)


def _fill_queries(p: FillParams, stop: list[str] | None = None) -> _FillQueries:
    """The fill's statements; ``stop``: the last key of this connection's share (a parallel
    fill by key), or None (to the end of the table)."""
    src = sql.Identifier(*p["source"])
    tgt = sql.Identifier(*p["target"])
    cols = collist(p["columns"])
    pk = collist(p["pk"])
    row = _row_param(p["pk_types"])
    # aliased: an output column named like the key would make ORDER BY sort the text
    pk_text = sql.SQL(", ").join([sql.SQL("{}::text AS {}").format(
        sql.Identifier(c), sql.Identifier(f"pgcleave_k{i}")) for i, c in enumerate(p["pk"])])
    conds = [sql.SQL(" AND ({})").format(sql.SQL(p["where"]))] if p["where"] else []
    if stop is not None:
        conds.append(sql.SQL(" AND ({}) <= ({})").format(pk, sql.SQL(", ").join(
            sql.SQL("CAST({} AS {})").format(sql.Literal(v), sql.SQL(t))
            for v, t in zip(stop, p["pk_types"], strict=True))))
    where = sql.Composed(conds)
    # the batch's size changes from batch to batch (``Pacer``): OFFSET is a parameter
    upper = "SELECT {t} FROM ONLY {s} WHERE {cond}{w} ORDER BY {pk} OFFSET {off} LIMIT 1"
    off = sql.SQL("CAST({} AS bigint)").format(sql.Placeholder())
    q = _FillQueries(
        upper_first=sql.SQL(upper).format(t=pk_text, s=src, cond=sql.SQL("true"), w=where,
                                          pk=pk, off=off),
        upper_next=sql.SQL(upper).format(t=pk_text, s=src, cond=sql.SQL("({}) > {}").format(
            pk, row), w=where, pk=pk, off=off))
    insert = ("INSERT INTO {t} ({c}) OVERRIDING SYSTEM VALUE SELECT {c} FROM ONLY {s} "
              "WHERE {cond}{w}{oc}")
    for conflict in (False, True):
        oc = sql.SQL(" ON CONFLICT DO NOTHING" if conflict else "")
        for has_lo in (False, True):
            for has_hi in (False, True):
                cc = [sql.SQL("({}) > {}").format(pk, row)] if has_lo else []
                if has_hi:
                    cc.append(sql.SQL("({}) <= {}").format(pk, row))
                cond = sql.SQL(" AND ").join(cc) if cc else sql.SQL("true")
                q.insert[(has_lo, has_hi, conflict)] = sql.SQL(insert).format(
                    t=tgt, c=cols, s=src, cond=cond, w=where, oc=oc)
        q.physical[conflict] = sql.SQL(insert).format(
            t=tgt, c=cols, s=src, w=where, oc=oc,
            cond=sql.SQL("ctid >= CAST(%s AS tid) AND ctid < CAST(%s AS tid)"))
    return q


def _estimate(conn: Connection, p: FillParams) -> int | None:
    row = conn.execute("SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)",
                       [QualifiedName(*p["source"]).quoted]).fetchone()
    if row is None or row[0] is None or row[0] < 0:
        return None
    return int(row[0])


@dataclass
class _Share:
    """One connection's share of a fill: the connection, the advisory key its batches hold,
    its statements, its position and how it is saved (in the batch's own transaction)."""

    number: int
    conn: Connection
    key: int
    queries: _FillQueries
    pos: dict[str, Any]
    save: Callable[[dict[str, Any]], None]


def _begin_batch(ctx: ActionContext, share: _Share, timeout_ms: int) -> None:
    """In the batch's transaction: give way quickly to application transactions (lock_timeout,
    then retry), and take the advisory lock of this connection that makes the capture
    trigger's DELETE wait for this batch (see ``pgcleave.ops.copy``)."""
    ctx.set_lock_timeout(share.conn, timeout_ms)
    share.conn.execute("SELECT pg_advisory_xact_lock(%s)", [share.key])


def _key_batch(ctx: ActionContext, share: _Share, timeout_ms: int, size: int, *,
               conflict: bool) -> tuple[int, dict[str, Any], float]:
    """Copy the rows after the saved key up to the key ``size`` rows further (found first
    by an index scan, outside the batch's transaction), in one ``INSERT ... SELECT``; the new
    position is saved in the same transaction. Plain INSERT first (fastest); with ``conflict``,
    ON CONFLICT DO NOTHING, so rows the capture wrote first (always newer than what the batch
    read) win."""
    conn, q, pos = share.conn, share.queries, share.pos
    last: list[str] | None = pos.get("last")
    if last is None:
        up = conn.execute(q.upper_first, [size - 1]).fetchone()
    else:
        up = conn.execute(q.upper_next, [*last, size - 1]).fetchone()
    hi: list[str] | None = [str(v) for v in up] if up is not None else None
    args = [*(last or []), *(hi or [])]
    with pipelined_transaction(conn) as sync:
        _begin_batch(ctx, share, timeout_ms)
        t0 = time.monotonic()
        cur = conn.execute(q.insert[(last is not None, hi is not None, conflict)], args)
        sync()
        insert_s = time.monotonic() - t0
        n = max(cur.rowcount, 0)
        new = {**pos, "last": hi if hi is not None else last, "done": pos["done"] + n,
               "batches": pos["batches"] + 1, "finished": hi is None}
        share.save(new)
    return n, new, insert_s


def _physical_batch(ctx: ActionContext, share: _Share, timeout_ms: int, size: int, *,
                    conflict: bool) -> tuple[int, dict[str, Any], float]:
    """Copy the rows of the next range of blocks (a TID range scan: sequential reads, no index).
    Rows written after ``prep`` reached the new table through the capture trigger, wherever
    their new version lands; the blocks that existed when the fill started hold every other
    row. A table rewritten meanwhile (VACUUM FULL, CLUSTER) renumbers its rows: the fill (each
    connection of a parallel one, whatever its share was) then starts again from block 0 and
    copies the whole table, which the upserts make harmless."""
    conn, q, pos = share.conn, share.queries, share.pos
    src = QualifiedName(*ctx.params["source"]).quoted
    while True:
        lo, hi = int(pos["block"]), min(int(pos["block"]) + size, int(pos["blocks"]))
        try:
            # the file check, the lock and the copy travel together; the saved position with
            # the COMMIT
            with pipelined_transaction(conn) as sync:
                node_cur = conn.execute("SELECT pg_relation_filenode(to_regclass(%s))", [src])
                _begin_batch(ctx, share, timeout_ms)
                t0 = time.monotonic()
                cur = conn.execute(q.physical[conflict or bool(pos.get("restarted"))],
                                   [f"({lo},0)", f"({hi},0)"])
                sync()
                insert_s = time.monotonic() - t0
                node = node_cur.fetchone()
                if node is not None and pos.get("filenode") not in (None, node[0]):
                    raise _Rewritten(node[0])  # rolls the batch back: it read the new file
                n = max(cur.rowcount, 0)
                new = {**pos, "block": hi, "done": pos["done"] + n,
                       "batches": pos["batches"] + 1, "finished": hi >= int(pos["blocks"])}
                share.save(new)
            return n, new, insert_s
        except _Rewritten as rewritten:
            ctx.progress("the table was rewritten during the fill: copying again from block 0")
            pos = {**pos, "block": 0, "filenode": rewritten.filenode,
                   "blocks": block_layout(conn, src).blocks, "restarted": True}


class _Rewritten(Exception):
    def __init__(self, filenode: int) -> None:
        self.filenode = filenode


def _start(conn: Connection, p: FillParams, saved: dict[str, Any]) -> dict[str, Any]:
    """The position to start from: the saved one, or the beginning (for a physical fill: the
    blocks to read, and how many per batch for about ``batch_size`` rows)."""
    pos = {"done": 0, "batches": 0, "finished": False, **saved}
    if p.get("order") == "physical" and "blocks" not in pos:
        layout = block_layout(conn, QualifiedName(*p["source"]).quoted)
        pos.update(block=0, blocks=layout.blocks, filenode=layout.filenode,
                   step=max(1, round(int(p["batch_size"]) / max(layout.per_block, 1.0))))
    return pos


def _split(conn: Connection, p: FillParams, jobs: int) -> list[dict[str, Any]]:
    """The starting positions of ``jobs`` disjoint shares covering the whole table.

    Physical order: contiguous block ranges of equal length (each connection reads its blocks
    sequentially). Key order: ranges of the primary key cut at quantiles of a sample
    (``TABLESAMPLE SYSTEM``, a few pages; all rows when the table is small), each share
    copying ``(start, stop]`` (the first from the beginning, the last to the end): about the
    same number of rows each, whatever the key's type or distribution."""
    first = _start(conn, p, {})
    if p.get("order") == "physical":
        blocks = int(first["blocks"])
        return [{**first, "block": blocks * i // jobs, "from": blocks * i // jobs,
                 "blocks": blocks * (i + 1) // jobs,
                 "finished": blocks * (i + 1) // jobs <= blocks * i // jobs}
                for i in range(jobs)]
    cuts = key_cuts(conn, QualifiedName(*p["source"]), list(p["pk"]), jobs)
    # share i copies (cuts[i], cuts[i + 1]]; the last one to the end of the table
    return [{**first, "last": cuts[i], "stop": cuts[i + 1] if i + 1 < len(cuts) else None}
            for i in range(len(cuts))]


@dataclass
class _Run:
    """What the connections of one fill share: the throttle, the global rate, the totals, and
    the first error (which stops the others at their next batch)."""

    ctx: ActionContext
    throttle: Throttle
    rate: RateLimit
    timeout_ms: int
    sleep_s: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    rows: int = 0
    batches: int = 0
    longest_ms: float = 0.0
    rested_s: float = 0.0  # --duty's rests between batches, every connection's together
    stop: threading.Event = field(default_factory=threading.Event)


def _copy_share(run: _Run, share: _Share, report: Callable[[], None]) -> None:
    """The batch loop of one connection, to the end of its share or the first error of the
    run. Each batch's transaction is kept to about ``--batch-time`` (``Pacer``)."""
    ctx = run.ctx
    p = cast(FillParams, ctx.params)
    physical = p.get("order") == "physical"
    batch = _physical_batch if physical else _key_batch
    cap = int(share.pos.get("step") or 1) if physical else int(p["batch_size"])
    # start small (FIRST_BATCH_ROWS) and let the measured rate size the next batches
    first = max(1, round(cap * FIRST_BATCH_ROWS / max(int(p["batch_size"]), 1)))
    pacer = ctx.pacer(cap=cap, first=first)
    careful = 0  # batches left to run with ON CONFLICT DO NOTHING after a conflict
    while not share.pos["finished"] and not run.stop.is_set():
        run.throttle.check()
        size = pacer.size

        def one_batch(size: int = size) -> tuple[int, dict[str, Any], float, float]:
            nonlocal careful
            while True:
                t0 = time.monotonic()
                try:
                    n, new, insert_s = batch(ctx, share, run.timeout_ms, size,
                                             conflict=careful > 0)
                    careful = max(careful - 1, 0)
                    return n, new, insert_s, time.monotonic() - t0
                except pgerrors.UniqueViolation:
                    # The capture trigger wrote a row of this range before the batch got
                    # to it: redo the batch letting the (newer) captured row win, and
                    # stay careful a while.
                    careful = 20

        inserted, share.pos, insert_s, held_s = ctx.executor.retry_locks(
            share.conn, one_batch, step=ctx.step, what="fill batch", cap=0.5,
            hint="a long transaction holds rows of the table; resume the job later")
        pacer.record(size, insert_s, held_s)
        with run.lock:
            run.rows += inserted
            run.batches += 1
            run.longest_ms = max(run.longest_ms, pacer.longest_ms)
            batches = run.batches
        report()
        kill_if_due("kill-fill-after-batches", batches)
        if not share.pos["finished"]:
            rested = pacer.rest()
            with run.lock:
                run.rested_s += rested
            if run.sleep_s:
                time.sleep(run.sleep_s)
            run.rate.add(inserted)


def _share_work(run: _Run, share: _Share) -> Callable[[threading.Event], None]:
    """One connection's share as a ``run_threads`` work item (the run's ``stop`` is the
    one ``_copy_share`` checks between batches)."""
    return lambda _stop: _copy_share(run, share, lambda: None)


def _shares(ctx: ActionContext, p: FillParams, saved: dict[str, Any]
            ) -> tuple[list[_Share], dict[str, Any]]:
    """The shares of this run: the one of a single-connection fill (on the job's connection,
    progress saved as before --jobs existed), or those of a parallel one (saved under
    ``ranges``, each on its own connection, opened here)."""
    jobs = int(p.get("jobs") or 1)
    advisory = int(p["advisory"])
    if jobs <= 1 and "ranges" not in saved:
        return [_Share(0, ctx.conn, advisory, _fill_queries(p), _start(ctx.conn, p, saved),
                       ctx.save)], saved
    if "ranges" not in saved:
        ranges = {str(i): pos for i, pos in enumerate(_split(ctx.conn, p, jobs))}
        saved = {"jobs": len(ranges), "ranges": ranges}
        ctx.save(saved)
    shares: list[_Share] = []
    try:
        for key, pos in sorted(saved["ranges"].items(), key=lambda kv: int(kv[0])):
            if pos.get("finished"):
                continue
            i = int(key)
            conn = ctx.connect(f"fill {i + 1}/{len(saved['ranges'])}")

            def save(new: dict[str, Any], conn: Connection = conn, key: str = key) -> None:
                # the other connections save into the same journal row: waiting for one's
                # commit is short, and giving up after --batch-time would throw the batch
                # away; the run's lock_timeout still bounds it
                ctx.set_lock_timeout(conn)
                save_progress_part(conn, ctx.job_id, ctx.index, "ranges", key, new)

            shares.append(_Share(i, conn, fill_lock_key(advisory, i),
                                 _fill_queries(p, pos.get("stop")), pos, save))
    except BaseException:
        for s in shares:
            s.conn.close()
        raise
    return shares, saved


def fill(ctx: ActionContext) -> None:
    """Copy the rows in batches; see the module docstring of ``pgcleave.ops.copy`` for why
    this cannot lose or resurrect a row while the application writes.

    Each batch's transaction is kept to about ``--batch-time`` (``Pacer``): an application
    write whose capture upsert meets a row the running batch inserted waits for the batch's
    commit, and a DELETE waits for the running batch's advisory lock, so the batch's length is
    what the application can wait. For the same reason the batch gives up its own lock waits
    (on the advisory lock, on a row an application transaction holds) after at most that long
    and is retried: while it waited, the rows it had inserted would hold the application up.
    Between batches the run's throttle (``--max-load``, ``--critical-load``) may pause or stop
    the fill; the position is saved with each batch, so a stopped fill resumes after it.

    With ``--jobs N`` the table is split into N disjoint shares (``_split``), each copied by
    its own connection in a thread, with its own advisory key (the capture trigger's DELETE
    waits for all of them) and its position saved with each of its batches. No shared
    snapshot is needed: as with one connection, every batch is its own READ COMMITTED
    transaction, rows changed after ``prep`` reach the copy through the capture trigger, and
    each row that existed then is in exactly one share, copied by one batch. The throttle
    and ``--max-rate`` count the connections together."""
    p = cast(FillParams, ctx.params)
    conn = ctx.conn
    timeout_ms = max(int(ctx.settings.lock_timeout_ms), 1)
    if ctx.settings.batch_time_ms > 0:
        timeout_ms = min(timeout_ms, max(int(ctx.settings.batch_time_ms), 1))
    shares, saved = _shares(ctx, p, ctx.load())
    parallel = "ranges" in saved
    total = _estimate(conn, p)
    started = time.monotonic()
    done_before = _done(saved) if parallel else int(shares[0].pos["done"])

    def report() -> None:
        done = done_before + run.rows
        elapsed = max(time.monotonic() - started, 1e-6)
        rate = run.rows / elapsed
        eta = (max(total - done, 0) / rate) if total and rate > 0 else None
        ctx.progress(f"copied {done:,} rows" + (f" of ~{total:,}" if total else "")
                     + f" ({rate:,.0f} rows/s" + (f", {len(shares)} connections" if parallel
                                                  else "") + ")"
                     + (f", ETA {eta:,.0f} s" if eta else ""),
                     done=done, total=total, rate=rate, eta_s=eta, batches=run.batches,
                     batch_ms=round(run.longest_ms, 1))

    with ctx.throttle() as throttle:
        run = _Run(ctx, throttle, RateLimit(float(p["max_rate"]) if p["max_rate"] else None),
                   timeout_ms, float(p.get("sleep") or 0))
        if not parallel:
            _copy_share(run, shares[0], report)
        else:
            try:
                run_threads([_share_work(run, s) for s in shares], report=report,
                            name="pgcleave-fill", stop=run.stop)
            finally:
                for s in shares:
                    s.conn.close()
    if parallel:
        final = ctx.load()
        pos = {**final, "done": _done(final), "batches": sum(
            int(r.get("batches", 0)) for r in final["ranges"].values())}
    else:
        pos = shares[0].pos
    done, batches = int(pos["done"]), int(pos["batches"])
    # a hash or list layout has no DEFAULT of leftovers: its fill names none
    default = QualifiedName(*p["default"]) if p["default"] else None
    in_default_sql = (sql.SQL("(SELECT count(*) FROM ONLY {})").format(default.ident)
                      if default is not None else sql.SQL("0"))
    state_table = QualifiedName(*p["state"])
    # the last position, the DEFAULT's count and the copy's state: one round trip
    with conn.pipeline():
        ctx.save({**pos, "longest_batch_ms": round(run.longest_ms, 1),
                  "paused_s": round(throttle.paused_s, 1)})
        counted = conn.execute(sql.SQL(
            "UPDATE pgcleave.copies SET filled_at = now(), default_rows = {}, fill_where = %s,"
            " verified_at = NULL WHERE table_schema = %s AND table_name = %s"
            " RETURNING default_rows").format(in_default_sql),
            [p.get("where"), state_table.schema, state_table.name])
    row = counted.fetchone()
    in_default = int(row[0]) if row else 0
    msg = (f"fill done: {done:,} rows copied in {batches} batches" +
           (f" on {len(saved['ranges'])} connections" if parallel else "") + " (longest "
           f"{run.longest_ms:.0f} ms" + (f", paused {throttle.paused_s:.1f} s for load"
                                         if throttle.pauses else "")
           + (f", rested {run.rested_s:.1f} s for --duty" if run.rested_s >= 0.05 else "")
           + ")")
    if in_default:
        msg += (f"; {in_default:,} rows fit no partition and are in {default} (kept, not "
                f"skipped): add partitions for them with `pgcleave add-partitions`")
    ctx.progress(msg, done=done, total=max(done, total or 0), final=True,
                 default_rows=in_default)


def _done(saved: dict[str, Any]) -> int:
    return sum(int(r.get("done", 0)) for r in saved.get("ranges", {}).values())


def build_indexes(ctx: ActionContext) -> None:
    """Secondary indexes deferred by ``prep --defer-indexes``: ``CREATE INDEX ON ONLY`` the
    parent, ``CREATE INDEX CONCURRENTLY`` on each partition (SHARE UPDATE EXCLUSIVE: the captured
    writes go on), then ``ATTACH PARTITION``; the parent's index turns valid with the last one.
    An index left INVALID by an interrupted build is dropped and built again.

    With ``jobs`` (``--jobs N``) the partitions' builds run on N connections at once, each
    with the ``maintenance_work_mem`` the plan chose (the server's setting shared between
    them, at least 64 MB); the attaches, catalog changes of a moment, stay on the job's
    connection."""
    conn = ctx.conn
    bp = cast(BuildIndexesParams, ctx.params)
    parent = QualifiedName(*bp["parent"])
    parts = [QualifiedName(r[0], r[1]) for r in conn.execute(
        "SELECT n.nspname, c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE i.inhparent = to_regclass(%s)"
        " ORDER BY c.relname", [parent.quoted]).fetchall()]
    indexes = bp["indexes"]
    work: list[tuple[DeferredIndex, QualifiedName, QualifiedName]] = []
    for d in indexes:
        unique = sql.SQL("UNIQUE " if d.get("unique") else "")
        ctx.run_ddl([sql.SQL("CREATE {}INDEX IF NOT EXISTS {} ON ONLY {} {}").format(
            unique, sql.Identifier(d["name"]), parent.ident, sql.SQL(d["tail"])).as_string(None)])
        work += [(d, part, part.sibling(child_name(part.name, d["suffix"]))) for part in parts]
    total = len(work)
    built = 0

    def attach(d: DeferredIndex, ix: QualifiedName) -> None:
        nonlocal built
        pidx = parent.sibling(d["name"])
        attached = conn.execute(
            "SELECT EXISTS (SELECT FROM pg_inherits WHERE inhrelid = to_regclass(%s)"
            " AND inhparent = to_regclass(%s))", [ix.quoted, pidx.quoted]).fetchone()
        if not (attached and attached[0]):
            ctx.run_ddl([sql.SQL("ALTER INDEX {} ATTACH PARTITION {}").format(
                pidx.ident, ix.ident).as_string(None)])
        built += 1
        ctx.progress(f"indexes: {built}/{total} partition indexes built",
                     done=built, total=total)

    jobs = min(int(bp.get("jobs") or 1), max(total, 1))
    if jobs <= 1:
        for d, part, ix in work:
            _build_one(conn, d, part, ix)
            attach(d, ix)
        return
    queue = list(work)
    finished: list[tuple[DeferredIndex, QualifiedName]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    stop = threading.Event()

    def builder(number: int) -> None:
        try:
            with ctx.connect(f"build-indexes {number + 1}/{jobs}") as c:
                if bp.get("mem_kb"):
                    c.execute(sql.SQL("SET maintenance_work_mem = {}").format(
                        sql.Literal(f"{int(bp['mem_kb'])}kB")))
                while not stop.is_set():
                    with lock:
                        if not queue:
                            return
                        d, part, ix = queue.pop(0)
                    _build_one(c, d, part, ix)
                    with lock:
                        finished.append((d, ix))
        except BaseException as exc:  # handed to the job's thread, which raises it
            with lock:
                errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=builder, args=(i,), daemon=True,
                                name=f"pgcleave-build-{i + 1}") for i in range(jobs)]
    for t in threads:
        t.start()
    try:
        while True:
            alive = any(t.is_alive() for t in threads)
            with lock:
                ready, finished[:] = list(finished), []
            for d, ix in ready:
                attach(d, ix)
            if not alive:
                break
            time.sleep(0.1)
    finally:
        stop.set()  # an attach failed: the builders stop after the build they are in
        for t in threads:
            t.join()
    if errors:
        raise errors[0]


def _build_one(conn: Connection, d: DeferredIndex, part: QualifiedName,
               ix: QualifiedName) -> None:
    """``CREATE INDEX CONCURRENTLY`` of one partition's index, unless it is there and valid."""
    unique = sql.SQL("UNIQUE " if d.get("unique") else "")
    row = conn.execute("SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid ="
                       " to_regclass(%s)", [ix.quoted]).fetchone()
    if row is not None and not row[0]:
        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(ix.ident))
        row = None
    if row is None:
        conn.execute(sql.SQL("CREATE {}INDEX CONCURRENTLY {} ON {} {}").format(
            unique, sql.Identifier(ix.name), part.ident, sql.SQL(d["tail"])))


# -- verify ----------------------------------------------------------------------------------------
@dataclass
class RangeCheck:
    partition: str
    old_rows: int
    new_rows: int
    old_hash: str
    new_hash: str

    @property
    def ok(self) -> bool:
        return self.old_rows == self.new_rows and self.old_hash == self.new_hash

    def to_json(self) -> dict[str, Any]:
        return {"partition": self.partition, "old_rows": self.old_rows,
                "new_rows": self.new_rows, "match": self.ok}


@dataclass
class VerifyResult:
    table: str
    old: str
    new: str
    ranges: list[RangeCheck]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.ranges)

    @property
    def mismatches(self) -> list[RangeCheck]:
        return [r for r in self.ranges if not r.ok]

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "old": self.old, "new": self.new, "match": self.ok,
                "old_rows": sum(r.old_rows for r in self.ranges),
                "new_rows": sum(r.new_rows for r in self.ranges),
                "seconds": round(self.seconds, 3),
                "ranges": [r.to_json() for r in self.ranges]}


def verify_copy(conn: Connection, table: str, *, record: bool = True) -> VerifyResult:
    """Compare the old and the new table: row count and an order-independent hash of the rows per
    partition range (rows outside every range compared as the DEFAULT partition), both read in
    one REPEATABLE READ snapshot. Capture is synchronous, so under live writes the two are equal
    in every snapshot once the fill is done. Read-only, apart from recording the verification."""


    _info, st, spec = resolve_copy(conn, table)
    if st.state == "prepped":
        old, new = spec.table, spec.intermediate
    else:
        old, new = spec.retired, spec.table
    if spec.method != "range":
        result = verify_by_partition(conn, spec.table, old, new, spec.columns, st.fill_where)
        if record and result.ok:
            conn.execute("UPDATE pgcleave.copies SET verified_at = now() WHERE table_schema ="
                         " %s AND table_name = %s", [spec.table.schema, spec.table.name])
        return result
    ninfo = snapshot(conn, new.quoted)
    assert ninfo.partitioning is not None
    parts = [p for p in ninfo.partitioning.partitions if not p.is_default and p.lower
             and p.upper and "MINVALUE" not in p.lower[0].upper()
             and "MAXVALUE" not in p.upper[0].upper()]
    typ = sql.SQL(spec.key_type)
    started = time.monotonic()
    hash_expr = sql.SQL("hashtextextended(ROW({})::text, 0)::numeric").format(
        collist(spec.columns))
    where = sql.SQL(" WHERE ({})").format(sql.SQL(st.fill_where)) if st.fill_where else sql.SQL("")
    by = sql.Identifier(spec.by)
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        labels: dict[int, str] = {}
        bucket: sql.Composable
        thresholds: list[str] = []
        if parts:
            vals = sql.SQL(", ").join([sql.SQL("(({})::{}), (({})::{})").format(
                sql.SQL((p.lower or [""])[0]), typ, sql.SQL((p.upper or [""])[0]), typ)
                for p in parts])
            thresholds = [r[0] for r in conn.execute(sql.SQL(
                "SELECT DISTINCT b::text, b FROM (VALUES {}) v(b) ORDER BY 2").format(
                vals)).fetchall()]
            pos = {t: i + 1 for i, t in enumerate(thresholds)}
            for p in parts:
                lo = conn.execute(sql.SQL("SELECT (({})::{})::text").format(
                    sql.SQL((p.lower or [""])[0]), typ)).fetchone()
                assert lo is not None
                labels[pos[lo[0]]] = p.name.name
            arr = sql.SQL("ARRAY[{}]::{}[]").format(
                sql.SQL(", ").join(sql.Literal(t) for t in thresholds), typ)
            bucket = sql.SQL("width_bucket({}, {})").format(by, arr)
        else:
            bucket = sql.SQL("0")

        def side(rel: QualifiedName, only: bool) -> dict[str, tuple[int, int]]:
            out: dict[str, tuple[int, int]] = {}
            rows = conn.execute(sql.SQL(
                "SELECT {b} AS b, count(*), coalesce(sum({h}), 0) FROM {o}{t}{w} GROUP BY 1"
            ).format(b=bucket, h=hash_expr, o=sql.SQL("ONLY " if only else ""), t=rel.ident,
                     w=where)).fetchall()
            for b, n, h in rows:
                label = labels.get(int(b), "DEFAULT")
                c0, h0 = out.get(label, (0, 0))
                out[label] = (c0 + int(n), h0 + int(h))
            return out

        a = side(old, True)
        b = side(new, False)
    names = [p.name.name for p in parts] + ["DEFAULT"]
    checks = []
    for name in names:
        (oc, oh), (nc, nh) = a.get(name, (0, 0)), b.get(name, (0, 0))
        label = spec.default.name if name == "DEFAULT" else name
        checks.append(RangeCheck(label, oc, nc, format(oh, "x"), format(nh, "x")))
    result = VerifyResult(spec.table.quoted, old.quoted, new.quoted, checks,
                          time.monotonic() - started)
    if record and result.ok:
        conn.execute("UPDATE pgcleave.copies SET verified_at = now() WHERE table_schema = %s"
                     " AND table_name = %s", [spec.table.schema, spec.table.name])
    return result


def verify_by_partition(conn: Connection, table: QualifiedName, old: QualifiedName,
                        new: QualifiedName, columns: list[str], where_text: str | None
                        ) -> VerifyResult:
    """The verify of a hash, list or two-level copy: per leaf partition of ``new``, its row
    count and hash against those of the rows of ``old`` its partition constraint accepts
    (``pg_get_partition_constraintdef``, the ancestors' included; a DEFAULT's is the negation
    of its siblings'), in one REPEATABLE READ snapshot. The new side is grouped by
    ``tableoid``, so a row routed to the wrong partition shows as a mismatch too."""
    started = time.monotonic()
    hash_expr = sql.SQL("hashtextextended(ROW({})::text, 0)::numeric").format(collist(columns))
    where = sql.SQL(" WHERE ({})").format(sql.SQL(where_text)) if where_text else sql.SQL("")
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        leaves = conn.execute(
            "SELECT t.relid::oid, c.relname, pg_get_partition_constraintdef(t.relid)"
            " FROM pg_partition_tree(to_regclass(%s)) t JOIN pg_class c ON c.oid = t.relid"
            " WHERE t.isleaf ORDER BY c.relname",
            [new.quoted]).fetchall()
        index = {int(oid): i + 1 for i, (oid, _n, _c) in enumerate(leaves)}
        case = sql.SQL("CASE {} ELSE 0 END").format(sql.SQL(" ").join(
            sql.SQL("WHEN {} THEN {}").format(sql.SQL(c or "true"), sql.Literal(i + 1))
            for i, (_o, _n, c) in enumerate(leaves))) if leaves else sql.SQL("0")

        def side(group: sql.Composable, rel: sql.Composable) -> dict[int, tuple[int, int]]:
            rows = conn.execute(sql.SQL(
                "SELECT {g}, count(*), coalesce(sum({h}), 0) FROM {r}{w} GROUP BY 1").format(
                g=group, h=hash_expr, r=rel, w=where)).fetchall()
            return {int(g): (int(n), int(h)) for g, n, h in rows}

        a = side(case, sql.SQL("ONLY {}").format(old.ident))
        b = {index.get(k, 0): v for k, v in side(sql.SQL("tableoid::oid::bigint"),
                                                  new.ident).items()}
    labels = [(i + 1, str(n)) for i, (_o, n, _c) in enumerate(leaves)]
    if 0 in a or 0 in b:  # rows no partition accepts (cannot happen with a DEFAULT)
        labels.append((0, "(no partition)"))
    checks = []
    for i, label in labels:
        (oc, oh), (nc, nh) = a.get(i, (0, 0)), b.get(i, (0, 0))
        checks.append(RangeCheck(label, oc, nc, format(oh, "x"), format(nh, "x")))
    return VerifyResult(table.quoted, old.quoted, new.quoted, checks, time.monotonic() - started)


def verify(ctx: ActionContext) -> None:
    table = QualifiedName(*cast(CopyVerifyParams, ctx.params)["table"])
    result = verify_copy(ctx.conn, table.quoted)
    rows = sum(r.old_rows for r in result.ranges)
    if not result.ok:
        bad = result.mismatches
        detail = "; ".join(f"{r.partition}: old {r.old_rows} rows, new {r.new_rows}"
                           + ("" if r.old_rows != r.new_rows else " (same count, rows differ)")
                           for r in bad[:5])
        raise Refused(f"verify found {len(bad)} range(s) that differ between {result.old} and "
                      f"{result.new}: {detail}; nothing was swapped",
                      hint=f"`pgcleave verify {table.quoted}` shows every range; re-run "
                           f"`pgcleave fill {table.quoted}` to copy what is missing")
    ctx.progress(f"verify: {rows:,} rows in {len(result.ranges)} ranges match "
                 f"({result.seconds:.1f} s)", final=True)
