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

import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, cast

from psycopg import errors as pgerrors
from psycopg import sql

from ..catalog import snapshot
from ..connection import Connection
from ..ddl.tables import collist
from ..errors import Refused
from ..execute import ActionContext
from ..names import QualifiedName, child_name
from .copy_state import BuildIndexesParams, CopyVerifyParams, FillParams, resolve_copy

#: The first batch of a run, in rows: small enough to stay within any --batch-time.
FIRST_BATCH_ROWS = 200


def _row_param(types: list[str]) -> sql.Composable:
    return sql.SQL("({})").format(sql.SQL(", ").join(
        sql.SQL("CAST({} AS {})").format(sql.Placeholder(), sql.SQL(t)) for t in types))


def _fault_batches() -> int | None:
    """Test hook: PGCLEAVE_FAULT=kill-fill-after-batches:N kills the process (SIGKILL) right
    after the N-th batch of this run has committed."""
    for part in os.environ.get("PGCLEAVE_FAULT", "").split(","):
        kind, _, n = part.partition(":")
        if kind == "kill-fill-after-batches" and n.isdigit():
            return int(n)
    return None


@dataclass
class _FillQueries:
    upper_first: sql.Composed
    upper_next: sql.Composed
    insert: dict[tuple[bool, bool, bool], sql.Composed] = field(default_factory=dict)
    physical: dict[bool, sql.Composed] = field(default_factory=dict)


def _fill_queries(p: FillParams) -> _FillQueries:
    src = sql.Identifier(*p["source"])
    tgt = sql.Identifier(*p["target"])
    cols = collist(p["columns"])
    pk = collist(p["pk"])
    row = _row_param(p["pk_types"])
    # aliased: an output column named like the key would make ORDER BY sort the text
    pk_text = sql.SQL(", ").join([sql.SQL("{}::text AS {}").format(
        sql.Identifier(c), sql.Identifier(f"pgcleave_k{i}")) for i, c in enumerate(p["pk"])])
    where = sql.SQL(" AND ({})").format(sql.SQL(p["where"])) if p["where"] else sql.SQL("")
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
                conds = [sql.SQL("({}) > {}").format(pk, row)] if has_lo else []
                if has_hi:
                    conds.append(sql.SQL("({}) <= {}").format(pk, row))
                cond = sql.SQL(" AND ").join(conds) if conds else sql.SQL("true")
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


def _begin_batch(ctx: ActionContext, timeout_ms: int) -> None:
    """In the batch's transaction: give way quickly to application transactions (lock_timeout,
    then retry), and take the copy's advisory lock that makes the capture trigger's second
    DELETE wait for this batch (see ``pgcleave.ops.copy``)."""
    ctx.set_lock_timeout(ctx.conn, timeout_ms)
    ctx.conn.execute("SELECT pg_advisory_xact_lock(%s)", [int(ctx.params["advisory"])])


def _key_batch(ctx: ActionContext, q: _FillQueries, pos: dict[str, Any], timeout_ms: int,
               size: int, *, conflict: bool) -> tuple[int, dict[str, Any], float]:
    """Copy the rows after the saved key up to the key ``size`` rows further (found first
    by an index scan, outside the batch's transaction), in one ``INSERT ... SELECT``; the new
    position is saved in the same transaction. Plain INSERT first (fastest); with ``conflict``,
    ON CONFLICT DO NOTHING, so rows the capture wrote first (always newer than what the batch
    read) win."""
    conn = ctx.conn
    last: list[str] | None = pos.get("last")
    if last is None:
        up = conn.execute(q.upper_first, [size - 1]).fetchone()
    else:
        up = conn.execute(q.upper_next, [*last, size - 1]).fetchone()
    hi: list[str] | None = [str(v) for v in up] if up is not None else None
    args = [*(last or []), *(hi or [])]
    with conn.transaction():
        _begin_batch(ctx, timeout_ms)
        t0 = time.monotonic()
        cur = conn.execute(q.insert[(last is not None, hi is not None, conflict)], args)
        insert_s = time.monotonic() - t0
        n = max(cur.rowcount, 0)
        new = {**pos, "last": hi if hi is not None else last, "done": pos["done"] + n,
               "batches": pos["batches"] + 1, "finished": hi is None}
        ctx.save(new)
    return n, new, insert_s


def _physical_batch(ctx: ActionContext, q: _FillQueries, pos: dict[str, Any], timeout_ms: int,
                    size: int, *, conflict: bool) -> tuple[int, dict[str, Any], float]:
    """Copy the rows of the next range of blocks (a TID range scan: sequential reads, no index).
    Rows written after ``prep`` reached the new table through the capture trigger, wherever
    their new version lands; the blocks that existed when the fill started hold every other
    row. A table rewritten meanwhile (VACUUM FULL, CLUSTER) renumbers its rows: the fill then
    starts again from block 0, which the upserts make harmless."""
    conn = ctx.conn
    node = conn.execute("SELECT pg_relation_filenode(to_regclass(%s))",
                        [QualifiedName(*ctx.params["source"]).quoted]).fetchone()
    if node is not None and pos.get("filenode") not in (None, node[0]):
        ctx.progress("the table was rewritten during the fill: copying again from block 0")
        pos = {**pos, "block": 0, "filenode": node[0],
               "blocks": _blocks(conn, cast(FillParams, ctx.params)), "restarted": True}
    lo, hi = int(pos["block"]), int(pos["block"]) + size
    with conn.transaction():
        _begin_batch(ctx, timeout_ms)
        t0 = time.monotonic()
        cur = conn.execute(q.physical[conflict or bool(pos.get("restarted"))],
                           [f"({lo},0)", f"({hi},0)"])
        insert_s = time.monotonic() - t0
        n = max(cur.rowcount, 0)
        new = {**pos, "block": hi, "done": pos["done"] + n, "batches": pos["batches"] + 1,
               "finished": hi >= int(pos["blocks"])}
        ctx.save(new)
    return n, new, insert_s


def _blocks(conn: Connection, p: FillParams) -> int:
    row = conn.execute("SELECT pg_relation_size(to_regclass(%s)) /"
                       " current_setting('block_size')::bigint",
                       [QualifiedName(*p["source"]).quoted]).fetchone()
    return int(row[0]) if row else 0


def _start(conn: Connection, p: FillParams, saved: dict[str, Any]) -> dict[str, Any]:
    """The position to start from: the saved one, or the beginning (for a physical fill: the
    blocks to read, and how many per batch for about ``batch_size`` rows)."""
    pos = {"done": 0, "batches": 0, "finished": False, **saved}
    if p.get("order") == "physical" and "blocks" not in pos:
        src = QualifiedName(*p["source"]).quoted
        row = conn.execute("SELECT reltuples, relpages, pg_relation_filenode(oid) FROM pg_class"
                           " WHERE oid = to_regclass(%s)", [src]).fetchone()
        assert row is not None
        per_block = (row[0] / row[1]) if row[0] and row[0] > 0 and row[1] else 100.0
        pos.update(block=0, blocks=_blocks(conn, p), filenode=row[2],
                   step=max(1, round(int(p["batch_size"]) / max(per_block, 1.0))))
    return pos


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
    the fill; the position is saved with each batch, so a stopped fill resumes after it."""
    p = cast(FillParams, ctx.params)
    conn = ctx.conn
    q = _fill_queries(p)
    pos = _start(conn, p, ctx.load())
    physical = p.get("order") == "physical"
    batch = _physical_batch if physical else _key_batch
    cap = int(pos["step"]) if physical else int(p["batch_size"])
    # start small (FIRST_BATCH_ROWS) and let the measured rate size the next batches
    first = max(1, round(cap * FIRST_BATCH_ROWS / max(int(p["batch_size"]), 1)))
    pacer = ctx.pacer(cap=cap, first=first)
    total = _estimate(conn, p)
    kill_after = _fault_batches()
    sleep_s = float(p.get("sleep") or 0)
    max_rate = float(p["max_rate"]) if p["max_rate"] else None
    timeout_ms = max(int(ctx.settings.lock_timeout_ms), 1)
    if ctx.settings.batch_time_ms > 0:
        timeout_ms = min(timeout_ms, max(int(ctx.settings.batch_time_ms), 1))
    started = time.monotonic()
    run_rows = 0
    run_batches = 0
    careful = 0  # batches left to run with ON CONFLICT DO NOTHING after a conflict
    with ctx.throttle() as throttle:
        while not pos["finished"]:
            throttle.check()
            size = pacer.size

            def one_batch(pos: dict[str, Any] = pos, size: int = size
                          ) -> tuple[int, dict[str, Any], float, float]:
                nonlocal careful
                while True:
                    t0 = time.monotonic()
                    try:
                        n, new, insert_s = batch(ctx, q, pos, timeout_ms, size,
                                                 conflict=careful > 0)
                        careful = max(careful - 1, 0)
                        return n, new, insert_s, time.monotonic() - t0
                    except pgerrors.UniqueViolation:
                        # The capture trigger wrote a row of this range before the batch got
                        # to it: redo the batch letting the (newer) captured row win, and
                        # stay careful a while.
                        careful = 20

            inserted, pos, insert_s, held_s = ctx.retry_locks(
                one_batch, what="fill batch", cap=0.5,
                hint="a long transaction holds rows of the table; resume the job later")
            pacer.record(size, insert_s, held_s)
            done = int(pos["done"])
            run_rows += inserted
            run_batches += 1
            elapsed = max(time.monotonic() - started, 1e-6)
            rate = run_rows / elapsed
            eta = (max(total - done, 0) / rate) if total and rate > 0 else None
            ctx.progress(f"copied {done:,} rows" + (f" of ~{total:,}" if total else "")
                         + f" ({rate:,.0f} rows/s)" + (f", ETA {eta:,.0f} s" if eta else ""),
                         done=done, total=total, rate=rate, eta_s=eta, batches=pos["batches"],
                         batch_ms=round(held_s * 1000, 1))
            if kill_after is not None and run_batches >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            if not pos["finished"]:
                pacer.rest()
                if sleep_s:
                    time.sleep(sleep_s)
                if max_rate:
                    ahead = run_rows / max_rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
    ctx.save({**pos, "longest_batch_ms": round(pacer.longest_ms, 1),
              "paused_s": round(throttle.paused_s, 1)})
    done, batches = int(pos["done"]), int(pos["batches"])
    # a hash or list layout has no DEFAULT of leftovers: its fill names none
    default = QualifiedName(*p["default"]) if p["default"] else None
    row = conn.execute(sql.SQL("SELECT count(*) FROM ONLY {}").format(default.ident)).fetchone() \
        if default is not None else None
    in_default = int(row[0]) if row else 0
    state_table = QualifiedName(*p["state"])
    conn.execute(
        "UPDATE pgcleave.copies SET filled_at = now(), default_rows = %s, fill_where = %s,"
        " verified_at = NULL WHERE table_schema = %s AND table_name = %s",
        [in_default, p.get("where"), state_table.schema, state_table.name])
    msg = (f"fill done: {done:,} rows copied in {batches} batches (longest "
           f"{pacer.longest_ms:.0f} ms" + (f", paused {throttle.paused_s:.1f} s for load"
                                           if throttle.pauses else "") + ")")
    if in_default:
        msg += (f"; {in_default:,} rows fit no partition and are in {default} (kept, not "
                f"skipped): add partitions for them with `pgcleave add-partitions`")
    ctx.progress(msg, done=done, total=max(done, total or 0), final=True,
                 default_rows=in_default)


def build_indexes(ctx: ActionContext) -> None:
    """Secondary indexes deferred by ``prep --defer-indexes``: ``CREATE INDEX ON ONLY`` the
    parent, ``CREATE INDEX CONCURRENTLY`` on each partition (SHARE UPDATE EXCLUSIVE: the captured
    writes go on), then ``ATTACH PARTITION``; the parent's index turns valid with the last one.
    An index left INVALID by an interrupted build is dropped and built again."""
    conn = ctx.conn
    bp = cast(BuildIndexesParams, ctx.params)
    parent = QualifiedName(*bp["parent"])
    parts = [QualifiedName(r[0], r[1]) for r in conn.execute(
        "SELECT n.nspname, c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE i.inhparent = to_regclass(%s)"
        " ORDER BY c.relname", [parent.quoted]).fetchall()]
    indexes = bp["indexes"]
    for k, d in enumerate(indexes):
        pidx = parent.sibling(d["name"])
        unique = sql.SQL("UNIQUE " if d.get("unique") else "")
        ctx.run_ddl([sql.SQL("CREATE {}INDEX IF NOT EXISTS {} ON ONLY {} {}").format(
            unique, sql.Identifier(d["name"]), parent.ident, sql.SQL(d["tail"])).as_string(None)])
        for i, part in enumerate(parts):
            ix = part.sibling(child_name(part.name, d["suffix"]))
            row = conn.execute("SELECT i.indisvalid FROM pg_index i WHERE i.indexrelid ="
                               " to_regclass(%s)", [ix.quoted]).fetchone()
            if row is not None and not row[0]:
                conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(ix.ident))
                row = None
            if row is None:
                conn.execute(sql.SQL("CREATE {}INDEX CONCURRENTLY {} ON {} {}").format(
                    unique, sql.Identifier(ix.name), part.ident, sql.SQL(d["tail"])))
            attached = conn.execute(
                "SELECT EXISTS (SELECT FROM pg_inherits WHERE inhrelid = to_regclass(%s)"
                " AND inhparent = to_regclass(%s))", [ix.quoted, pidx.quoted]).fetchone()
            if not (attached and attached[0]):
                ctx.run_ddl([sql.SQL("ALTER INDEX {} ATTACH PARTITION {}").format(
                    pidx.ident, ix.ident).as_string(None)])
            ctx.progress(f"index {k + 1}/{len(indexes)}: {i + 1}/{len(parts)} partitions",
                         done=k * len(parts) + i + 1, total=len(indexes) * len(parts))


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
