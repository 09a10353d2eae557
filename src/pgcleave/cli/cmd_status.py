"""``pgcleave status TABLE``: a table's size, or its partitions as a tree ordered by bounds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from ..status import human_rows as _rows
from ..status import human_size as _size
from ..status import table_status
from .app import app
from .common import db, json_option, out, print_json

if TYPE_CHECKING:
    from rich.tree import Tree


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
    for sc in st.get("span_checks", []):
        head = "UNFINISHED JOB" if sc["job"] is not None else "LEFTOVER CHECK"
        out.print(f"{head}: {sc['message']}", markup=False, style="bold red")
    head = (f"{st['table']}  {st['kind']}, {_rows(st['rows'])} rows, {_size(st['bytes'])}"
            + (f", {st['primary_key']}" if st.get("primary_key") else ""))
    if "partitioning" not in st:
        from rich.table import Table  # each of rich's renderables when it is drawn

        t = Table(show_header=True, header_style="bold")
        for col in ("table", "kind", "rows (est.)", "size", "primary key"):
            t.add_column(col)
        t.add_row(st["table"], st["kind"], _rows(st["rows"]), _size(st["bytes"]),
                  st.get("primary_key") or "none")
        out.print(t)
        return
    from rich.tree import Tree

    tree = Tree(head)
    _branch(tree, st["partitioning"])
    out.print(tree)
    for fk in st.get("emulated_foreign_keys", []):
        out.print(f"emulated foreign key {fk['name']}: {fk['summary']}", markup=False)
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
