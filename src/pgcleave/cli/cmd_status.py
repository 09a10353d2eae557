"""``pgcleave status TABLE``: a table's size, or its partitions as a tree ordered by bounds."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table
from rich.tree import Tree

from ..status import table_status
from .app import app
from .common import db, json_option, out, print_json


@app.command()
@click.argument("table")
@json_option
def status(table: str, as_json: bool) -> None:
    """Show TABLE, or each of its partitions with bounds, rows, size and where it lives.

    TABLE may be schema-qualified; quote names with capitals or spaces:
    '"Sales"."Order Items"'.
    """
    with db() as conn:
        st = table_status(conn, table)
    if as_json:
        print_json(st)
        return
    render(st)


def render(st: dict[str, Any]) -> None:
    for r in st.get("residue", []):
        out.print(f"UNFINISHED JOB: {r['message']}", markup=False, style="bold red")
    head = (f"{st['table']}  {st['kind']}, {_rows(st['rows'])} rows, {_size(st['bytes'])}"
            + (f", {st['primary_key']}" if st.get("primary_key") else ""))
    if "partitioning" not in st:
        t = Table(show_header=True, header_style="bold")
        for col in ("table", "kind", "rows (est.)", "size", "primary key"):
            t.add_column(col)
        t.add_row(st["table"], st["kind"], _rows(st["rows"]), _size(st["bytes"]),
                  st.get("primary_key") or "none")
        out.print(t)
        return
    tree = Tree(head)
    _branch(tree, st["partitioning"])
    out.print(tree)
    if "policy" in st:
        pol = st["policy"]
        out.print("policy: " + (pol["summary"] if pol else "none (nothing maintains it; "
                                "`pgcleave config` sets one)"), markup=False)


def _branch(node: Tree, p: dict[str, Any]) -> None:
    node.label = f"{node.label}  [partitioned by {p['key']}]"
    for part in p["partitions"]:
        flags = []
        if part["is_default"]:
            flags.append("DEFAULT")
        if part["detach_pending"]:
            flags.append("DETACH PENDING")
        where = f"on {part['server']}" if part["server"] else "local"
        label = (f"{part['name']}  {part['bound']}  {_rows(part['rows'])} rows  "
                 f"{_size(part['bytes'])}  {where}" + (f"  ({', '.join(flags)})" if flags else ""))
        child = node.add(label)
        if "partitioning" in part:
            _branch(child, part["partitioning"])


def _rows(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def _size(n: int | None) -> str:
    if n is None:
        return "remote"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"
