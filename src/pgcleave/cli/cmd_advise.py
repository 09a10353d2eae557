"""``pgcleave advise TABLE`` (should it be partitioned, and how) and ``pgcleave audit TABLE``
(how the statements of a partitioned table use its partitions). Both read only."""

from __future__ import annotations

import re
import sys

import click
from rich.table import Table

from ..ops.advise import Advice, advise
from ..ops.audit import Audit, audit
from .app import app
from .common import db, json_option, out, print_json

_SAMPLE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(s|m|h)?\s*$")


def _sample(ctx: click.Context, param: click.Parameter, value: str | None) -> float:
    if value is None:
        return 0.0
    m = _SAMPLE.match(value)
    if not m:
        raise click.BadParameter(f"{value!r} is not a duration (e.g. 30s, 10m, 1h)")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600}[m.group(2) or "s"]


@app.command("advise")
@click.argument("table")
@click.option("--sample", default=None, callback=_sample, metavar="DURATION",
              help="Also measure the growth for this long (e.g. 10m, 30s).")
@json_option
def advise_cmd(table: str, sample: float, as_json: bool) -> None:
    """Whether to partition TABLE, by which column and interval, and what it costs: size
    against memory, growth, the statements pg_stat_statements saw touching it (with the
    columns they filter, group and order by), candidate keys ranked by the share of statement
    time that would prune by them, the blockers, and the exact `pgcleave partition` command.
    Changes nothing."""
    with db() as conn:
        a = advise(conn, table, sample_s=sample)
    if as_json:
        print_json(a.to_json())
        return
    render_advice(a)


def _size(n: float | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(size) < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


def _table(title: str, *columns: str) -> Table:
    t = Table(title=title, show_header=True, header_style="bold")
    for col in columns:
        t.add_column(col)
    return t


def _short(q: str, n: int = 90) -> str:
    q = " ".join(q.split())
    return q if len(q) <= n else q[: n - 3] + "..."


def render_advice(a: Advice) -> None:
    out.print(f"{a.table}: {a.verdict.upper()}", markup=False, style="bold")
    for r in a.reasons:
        out.print(f"  - {r}", markup=False)
    s, g = a.size, a.growth
    out.print(f"size: {_size(s['bytes'])} ({s['rows'] if s['rows'] is not None else '?'} rows); "
              f"shared_buffers {_size(s['shared_buffers'])}, effective_cache_size "
              f"{_size(s['effective_cache_size'])}", markup=False)
    rate = (f"{g['rows_per_day']:,} rows/day (~{_size(g['bytes_per_day'])}/day)"
            if g["rows_per_day"] is not None else "too short a window to tell a rate")
    grow = (f"growth since {g['since']}: {rate}; {g['inserted']} inserted, "
            f"{g['updated']} updated, {g['deleted']} deleted"
            + ("" if g["sampled_seconds"] else "; --sample 10m measures it"))
    if g["sampled_seconds"]:
        grow += (f"; measured over {g['sampled_seconds']} s: {g['sampled_rows_per_day']:,} "
                 f"rows/day (~{_size(g['sampled_bytes_per_day'])}/day)")
    out.print(grow, markup=False)
    if not a.statements.available:
        out.print(f"statements: none read. {a.statements.note}", markup=False)
    else:
        if a.statements.note:
            out.print(f"note: {a.statements.note}", markup=False)
        t = _table("statements touching the table", "share", "calls", "statement", "filters",
                   "group by", "order by")
        for st in a.seen[:20]:
            u = st.use
            t.add_row(f"{st.weight:.0%}", str(st.statement.calls), _short(st.statement.query),
                      ", ".join(f"{c} ({k})" for c, k in sorted(u.filters.items()))
                      + (" [primary key]" if st.by_primary_key else ""),
                      ", ".join(sorted(u.group)), ", ".join(sorted(u.order)))
        out.print(t)
        for miss in a.unplanned[:5]:
            out.print(f"not planned: {_short(miss['query'])}: {miss['error']}", markup=False)
    if a.candidates:
        t = _table("candidate keys", "key", "prunes", "statements", "calls",
                   "interval / partitions", "why")
        for c in a.candidates:
            t.add_row(c.by, f"{c.score:.0%}", str(c.statements), str(c.calls),
                      c.interval or (f"modulus {c.modulus}" if c.modulus else ""), c.reason)
        out.print(t)
    if a.blockers:
        t = _table("blockers and their cost", "kind", "what", "cost")
        for b in a.blockers:
            t.add_row(b.kind, b.what, b.cost)
        out.print(t)
    if a.command:
        prefix = "when it is time: " if a.verdict != "partition" else ""
        out.print(f"{prefix}{a.command}", markup=False, style="bold")


@app.command("audit")
@click.argument("table")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1),
              help="Explain at most this many statements (the top ones by total time).")
@json_option
def audit_cmd(table: str, limit: int, as_json: bool) -> None:
    """How the statements pg_stat_statements saw use the partitions of TABLE: each explained
    with values sampled from the table (a custom plan: pruned at plan time; the generic plan of
    a prepared statement: pruned at run time), the partitions and servers it reaches, the
    statements that scan every partition, those that break or slow down once partitions are
    on other servers (ON CONFLICT, unique lookups without the key), and settings that undo
    pruning. Changes nothing.

    Exit code 0 when clean, 7 when there is a warning (for CI).
    """
    with db() as conn:
        a = audit(conn, table, limit=limit)
    if as_json:
        print_json(a.to_json())
    else:
        render_audit(a)
    if a.exit_code:
        sys.stdout.flush()
        sys.exit(a.exit_code)  # click's Exit would be swallowed (standalone_mode=False)


def render_audit(a: Audit) -> None:
    servers = sorted({p["server"] for p in a.partitions})
    out.print(f"{a.table}: partitioned by {a.key}, {len(a.partitions)} partitions on "
              f"{', '.join(servers)}", markup=False, style="bold")
    out.print(", ".join(f"{k}={v}" for k, v in a.settings.items()), markup=False)
    if not a.statements.available:
        out.print(f"statements: none read. {a.statements.note}", markup=False)
    else:
        t = _table("statements", "calls", "ms", "statement", "scanned", "pruned (plan)",
                   "pruned (run)", "servers")
        for au in a.audited:
            t.add_row(str(au.statement.calls), f"{au.statement.total_ms:.1f}",
                      _short(au.statement.query),
                      f"{len(au.scanned)}/{au.partitions}" if au.reads else "-",
                      str(au.plan_time_pruned) if au.reads else "-",
                      str(au.run_time_pruned) if au.reads else "-",
                      ", ".join(au.servers))
        out.print(t)
    if a.findings:
        t = _table("findings", "", "kind", "finding")
        for f in a.findings:
            t.add_row(f.severity, f.kind, f.message)
        out.print(t)
    else:
        out.print("no findings", markup=False)
