"""``pgcleave doctor [TABLE] [--server NAME]``: what the connected role can do here."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from ..ops.doctor import diagnose
from .app import app
from .common import db, json_option, out, print_json


@app.command()
@click.argument("table", required=False)
@click.option("--server", default=None, metavar="NAME",
              help="Ask only this registered server (default: every registered server).")
@json_option
def doctor(table: str | None, server: str | None, as_json: bool) -> None:
    """Capability by capability, whether the connected role can do it here (partition in
    place and by copy, maintain, retention, keys, servers, move by replication or by copy,
    alter with two-phase commit, the DDL guard), and for each "no" the statement or setting
    that fixes it. With TABLE, for that table. Changes nothing."""
    with db() as conn:
        d = diagnose(conn, table, server)
    if as_json:
        print_json(d)
        return
    render(d)


def render(d: dict[str, Any]) -> None:
    r, s = d["role"], d["settings"]
    attrs = [a for a in ("superuser", "createrole", "createdb", "replication", "bypassrls")
             if r[a]]
    out.print(f"role {r['name']} on {d['database']} (PostgreSQL {d['server_version']}): "
              + (", ".join(attrs) or "no special attributes")
              + (f"; member of {', '.join(r['member_of'])}" if r["member_of"] else ""),
              markup=False)
    out.print(f"wal_level={s['wal_level']}, max_prepared_transactions="
              f"{s['max_prepared_transactions']}, replication slots "
              f"{s['replication_slots_used']}/{s['max_replication_slots']}, WAL senders "
              f"{s['wal_senders_used']}/{s['max_wal_senders']}; extensions: "
              + (", ".join(d["extensions"]) or "none"), markup=False)
    if "table" in d:
        t = d["table"]
        out.print(f"{t['table']}: owner {t['owner']}"
                  + ("" if t["owned_by_you"] else " (not you)")
                  + ("" if t["create_on_schema"] else "; no CREATE on its schema"),
                  markup=False)
    tab = Table(show_header=True, header_style="bold")
    for col in ("capability", "", "missing", "fix"):
        tab.add_column(col)
    for c in d["capabilities"]:
        miss = c["missing"]
        tab.add_row(c["name"], "yes" if c["ok"] else "no",
                    "\n".join(m["what"] for m in miss) or c["note"],
                    "\n".join(m["fix"] for m in miss))
    out.print(tab)
    for name, f in d["servers"].items():
        out.print(f"server {name}: " + (
            f"user {f['user']}{' (superuser)' if f['superuser'] else ''}, PostgreSQL "
            f"{f['server_version']}, wal_level={f['wal_level']}, max_prepared_transactions="
            f"{f['max_prepared_transactions']}" if f["reachable"] else
            f"not reachable ({f['error']})"), markup=False)
