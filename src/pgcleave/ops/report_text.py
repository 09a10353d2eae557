"""``report --text``: the report ``report.gather`` describes, for a terminal, drawn with rich.

The figures of the HTML page without its charts: each table's partitions in key order with
their rows and size, the problems ``check`` finds, and each job with its steps, how long each
took and how long it held its locks (measured by the executor, as ``report_html`` shows
them). Needs nothing beyond rich, which every command already uses.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..journal import args_text
from ..status import human_rows as _rows
from ..status import human_size as _size

if TYPE_CHECKING:
    from rich.console import Console


def render(console: Console, reports: list[dict[str, Any]], *, generated_at: datetime,
           database: str) -> None:
    """Print every report, in the order given, after one line naming the database."""
    console.print(f"pgcleave report: database {database}, generated "
                  f"{generated_at.isoformat(sep=' ', timespec='seconds')}", markup=False)
    for r in reports:
        _section(console, r)


def _section(console: Console, r: dict[str, Any]) -> None:
    pol, parts = r["policy"], r["partitions"]
    console.print()
    console.print(r["table"], markup=False, style="bold underline")
    console.print(f"{r['kind']} partitioned by {r['key']}; {len(parts)} partitions, "
                  f"{_rows(r['rows'])} rows (estimate), {_size(r['bytes'])} here"
                  + (f"; {r['primary_key']}" if r["primary_key"] else ""), markup=False)
    console.print("policy: " + (pol["summary"] if pol else "none: nothing maintains it "
                                "(`pgcleave config` sets one)"), markup=False)
    c = r["check"]
    if c["ok"]:
        console.print("check: no problem", markup=False)
    for p in c["problems"]:
        console.print(f"check: {p['kind']}: {p['message']}", markup=False, style="bold red")
    console.print(_partitions(parts))
    if not r["jobs"]:
        console.print("jobs: none on this table yet", markup=False)
    if r["jobs_omitted"]:
        console.print(f"jobs: {r['jobs_omitted']} older job(s) not shown", markup=False)
    for j in r["jobs"]:
        _job(console, j)


def _partitions(parts: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    t = Table(title="partitions along the key", title_justify="left", header_style="bold")
    t.add_column("partition")
    t.add_column("bound")
    t.add_column("rows", justify="right", no_wrap=True)
    t.add_column("size", justify="right", no_wrap=True)
    t.add_column("where")
    for p in parts:
        t.add_row(p["path"] + p["name"], p["bound"], _rows(p["rows"]), _size(p["bytes"]),
                  _where(p))
    return t


def _where(p: dict[str, Any]) -> str:
    """Where the partition lives and what the report marks it as (the HTML's categories)."""
    marks = [m for m, on in (("DEFAULT", p["is_default"]), ("legacy", p["legacy"]),
                             ("past retention", p["past_retention"]),
                             ("made ahead", p["ahead"])) if on]
    return ", ".join([f"on {p['server']}" if p["server"] else "local", *marks])


def _job(console: Console, j: dict[str, Any]) -> None:
    from rich.table import Table

    steps = j["steps"]
    total = sum(s["duration_ms"] or 0 for s in steps)
    args = args_text(j.get("args") or {})
    t = Table(title=f"job {j['id']} {j['operation']}: {j['state']}, started "
                    f"{j['created_at'][:19].replace('T', ' ')}, {j['steps_done']}/"
                    f"{j['steps_total']} steps, {_ms(total)} in steps"
                    + (f" ({args})" if args else ""),
              title_justify="left", header_style="bold")
    t.add_column("step")
    t.add_column("state", no_wrap=True)
    t.add_column("duration", justify="right", no_wrap=True)
    t.add_column("strongest lock")
    t.add_column("held", justify="right", no_wrap=True)
    for s in steps:
        t.add_row(s["name"], s["state"], "-" if s["duration_ms"] is None else _ms(s["duration_ms"]),
                  s["lock"] or "none",
                  "-" if s["held_ms"] is None else _ms(s["held_ms"]))
    console.print(t)


def _ms(v: float) -> str:
    """A duration: tenths of ms below 10 ms (a brief lock's hold reads 0.4 ms, not 0), whole
    ms below 10 s, then seconds."""
    if v < 10:
        return f"{v:.1f} ms"
    return f"{v:.0f} ms" if v < 10_000 else f"{v / 1000:.1f} s"
