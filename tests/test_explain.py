"""`pgcleave explain`: partitions, servers and pruning of a query's plan."""

from __future__ import annotations

import json

from tests.test_move import PART, add_server, make_table


def test_explain_pruning_and_servers(db, db2, conn, cli):
    make_table(conn, rows=40)
    add_server(db, "db2", db2)
    r = cli("--dsn", db.dsn, "move", PART, "--to", "db2", "--yes")
    assert r.returncode == 0, r.stderr
    r = cli("--dsn", db.dsn, "explain", 'SELECT * FROM "Ex"', "--json")
    assert r.returncode == 0, r.stderr
    t = json.loads(r.stdout)["tables"][0]
    assert t["table"] == '"Ex"' and t["pruned"] == 0 and t["servers"] == ["db2", "local"]
    remote = next(p for p in t["partitions"] if p["server"] == "db2")
    assert remote["node"] == "Foreign Scan" and "Ex d" in remote["remote_sql"]

    r = cli("--dsn", db.dsn, "explain", "SELECT * FROM \"Ex\" WHERE tenant = 'Acme'")
    assert r.returncode == 0, r.stderr
    assert "1 of 3 partitions scanned, 2 pruned; servers: local" in r.stdout

    r = cli("--dsn", db.dsn, "explain", "--analyze", "--json",
            "SELECT * FROM \"Ex\" WHERE tenant = (SELECT 'Dory'::varchar)")
    assert r.returncode == 0, r.stderr
    t = json.loads(r.stdout)["tables"][0]
    assert t["servers"] == ["db2"] and t["scanned"] == 1  # pruned at run time

    r = cli("--dsn", db.dsn, "explain", "SELEC nonsense")
    assert r.returncode == 3
