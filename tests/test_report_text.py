"""``report --text``: the report for a terminal. A finished split's steps appear, each on its
line with the duration and the lock hold time the journal measured, and every partition with
its rows; it needs neither plotly nor a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.test_span_checks import _table


def _ms(v: float) -> str:
    if v < 10:
        return f"{v:.1f} ms"
    return f"{v:.0f} ms" if v < 10_000 else f"{v / 1000:.1f} s"


def _line(text: str, *cells: str) -> str:
    """The one line of ``text`` that holds every one of ``cells`` as a table cell."""
    found = [ln for ln in text.splitlines()
             if all(f" {c} " in f" {ln.replace('│', ' ')} " for c in cells)]
    assert len(found) == 1, (cells, text)
    return found[0]


def test_report_text_shows_a_finished_jobs_figures(db: Any, conn: Any, cli: Any,
                                                   tmp_path: Path) -> None:
    _table(conn)
    conn.execute("ANALYZE sp")
    d = ("--dsn", db.dsn)
    r = cli(*d, "split", "sp_3", "--at", "2025-03-16", "--yes")
    assert r.returncode == 0, r.stderr
    wide = {"COLUMNS": "200"}  # a wide terminal: one line per row of each table
    r = cli(*d, "report", "sp", "--text", env=wide)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    print(text)
    rep = json.loads(cli(*d, "report", "sp", "--json").stdout)[0]
    [job] = rep["jobs"]
    assert job["state"] == "done"
    total = sum(s["duration_ms"] or 0 for s in job["steps"])
    assert (f"job {job['id']} split: done, started {job['created_at'][:19].replace('T', ' ')}, "
            f"{job['steps_total']}/{job['steps_total']} steps, {_ms(total)} in steps") in text
    held = 0
    for s in job["steps"]:
        cells = [s["name"], s["state"], _ms(s["duration_ms"]), s["lock"]]
        if s["held_ms"] is not None:
            cells.append(_ms(s["held_ms"]))
            held += 1
        _line(text, *cells)
    assert held >= 1, job["steps"]  # the swap's hold at least was measured
    for p in rep["partitions"]:
        _line(text, p["name"], f"{p['rows']:,}")
    assert sum(p["rows"] for p in rep["partitions"]) == 1800
    assert "check: no problem" in text or "check: policy:" in text
    # the job's args on one line, in the text and on the HTML page's job table alike
    assert "partition=public.sp_3 " in text
    page = tmp_path / "sp.html"
    assert cli(*d, "report", "sp", "--html", str(page)).returncode == 0
    assert "<th>args</th>" in page.read_text() and "partition=public.sp_3 " in page.read_text()
    # nothing to say where it goes; both text and JSON on stdout: refused
    assert cli(*d, "report", "sp").returncode != 0
    assert cli(*d, "report", "sp", "--text", "--json").returncode != 0
