"""``report --html``: the page opened in a real headless Chromium (Debian's ``chromium``,
installed by ``scripts/ensure-chromium.sh``), with the network cut off: its plotly charts must
render (SVG in the DOM after the scripts ran), no script may fail, nothing may be fetched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.test_move import add_server
from tests.test_placement import Q, make_metrics

NOW = "2025-03-10"
LEGACY = """
CREATE TABLE ledger (id bigserial, at date NOT NULL, amount int, PRIMARY KEY (id, at));
INSERT INTO ledger (at, amount) SELECT date '2025-01-01' + (i % 55), i
FROM generate_series(1, 400) i;
"""


def chromium() -> str:
    for name in (os.environ.get("PGCLEAVE_CHROMIUM"), "chromium", "chromium-browser"):
        if name and (path := shutil.which(name)):
            return path
    pytest.fail("no Chromium here: the HTML report's test opens the page in a real browser. "
                "Install it with scripts/ensure-chromium.sh (make test runs it), or set "
                "PGCLEAVE_CHROMIUM")


def browse(page: Path, tmp: Path, *, screenshot: Path | None = None
           ) -> tuple[str, list[str], list[str]]:
    """(the DOM after the page's scripts ran, its console lines, the URLs it tried to fetch) of
    ``page`` opened in headless Chromium whose every network request fails (a proxy on a
    closed loopback port, no name resolves). Chromium's NetLog records each request; the
    page's own carry an initiator (``null`` for a file), Chromium's background ones do not."""
    netlog = tmp / f"netlog-{page.stem}.json"
    args = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            f"--user-data-dir={tmp / 'chromium-profile'}", "--proxy-server=127.0.0.1:9",
            "--host-resolver-rules=MAP * ~NOTFOUND", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-extensions",
            f"--log-net-log={netlog}", "--enable-logging=stderr", "--v=0",
            "--virtual-time-budget=10000", "--window-size=1366,2200"]
    args += ["--dump-dom", *([f"--screenshot={screenshot}"] if screenshot else [])]
    r = subprocess.run([*args, page.resolve().as_uri()], capture_output=True, text=True,
                       timeout=120, cwd=tmp)
    assert r.returncode == 0, r.stderr[-2000:]
    events = json.loads(netlog.read_text())["events"]
    fetched = sorted({e["params"]["url"] for e in events
                      if "url" in e.get("params", {}) and "initiator" in e["params"]
                      and e["params"]["initiator"] != "not an origin"})
    return r.stdout, [line for line in r.stderr.splitlines() if ":CONSOLE" in line], fetched


def script_errors(console: list[str]) -> list[str]:
    return [line for line in console if any(w in line for w in (
        "Uncaught", "Error", "error", "Failed to load", "net::ERR"))]


class Fetches(HTMLParser):
    """Every URL the page would load by itself: src/href/srcset/data/poster of any element but
    a link a person clicks (``<a href>``), and url(...)/@import in style."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self._style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._style = tag == "style"
        for k, v in attrs:
            if (v and k in ("src", "href", "srcset", "data", "poster", "action")
                    and tag != "a" and not v.startswith(("#", "data:"))):
                self.urls.append(f"<{tag} {k}={v}>")

    def handle_data(self, data: str) -> None:
        if self._style and ("url(" in data or "@import" in data):
            self.urls.append(f"style: {data[:80]}")

    def handle_endtag(self, tag: str) -> None:
        self._style = False


def test_browser_check_catches_errors_and_fetches(tmp_path):
    """The checks below would see a failing script and a fetch: a page with both."""
    bad = tmp_path / "bad.html"
    bad.write_text('<html><head><script src="https://cdn.example.org/x.js"></script></head>'
                   "<body><div id=a></div><script>undefinedFunction();</script></body></html>")
    _dom, console, fetched = browse(bad, tmp_path)
    assert any("undefinedFunction" in e for e in script_errors(console)), console
    assert fetched == ["https://cdn.example.org/x.js"]
    p = Fetches()
    p.feed(bad.read_text())
    assert p.urls == ["<script src=https://cdn.example.org/x.js>"]


def test_report_in_a_browser(db: Any, db2: Any, conn: Any, cli: Any, tmp_path: Path) -> None:
    # a table partitioned by hand, adopted, with future months on db2 (a maintain job) ...
    make_metrics(conn)
    add_server(db, "db2", db2)
    ok(cli("--dsn", db.dsn, "config", Q, "--premake", "3", "--retention", "1 month",
           "--place", "range(2025-04-01, 2026-01-01)=db2", "--yes"))
    ok(cli("--dsn", db.dsn, "maintain", Q, "--now", NOW))
    # ... a row its DEFAULT keeps (a check problem) ...
    conn.execute(f"INSERT INTO {Q} (at, v) VALUES ('2027-05-05 00:00+00', 1)")
    # ... and a plain table converted in place: its old table stays as the legacy partition
    conn.execute(LEGACY)
    ok(cli("--dsn", db.dsn, "partition", "ledger", "--by", "range(at)", "--interval",
           "1 month", "--strategy", "legacy", "--cutoff", "2025-03-01", "--premake", "2",
           "--yes"))

    page = tmp_path / "metrics.html"
    r = ok(cli("--dsn", db.dsn, "report", Q, "--html", str(page), "--now", NOW, "--json"))
    data = json.loads(r.stdout)[0]
    parts = {p["name"]: p for p in data["partitions"]}
    assert parts['public."Me trics_default"']["is_default"]
    assert {p["server"] for p in parts.values()} == {None, "db2"}
    assert [s["name"] for s in data["servers"]] == ["db2"]
    assert any(p["kind"] == "default-rows" for p in data["check"]["problems"])
    (hz,) = data["horizons"]
    assert hz["retention_cutoff"].startswith("2025-02-01") and hz["ahead"]
    (maint,) = [j for j in data["jobs"] if j["operation"] == "maintain"]
    assert any(s["lock"] and s["held_ms"] for s in maint["steps"]), maint  # lock holds kept
    assert {j["state"] for j in data["jobs"]} == {"done"}

    shot = tmp_path / "metrics.png"
    dom, console, fetched = browse(page, tmp_path, screenshot=shot)
    assert script_errors(console) == [] and fetched == []
    assert shot.stat().st_size > 20_000  # a picture, not a blank page
    assert dom.count('class="plot-container plotly"') == 2  # partitions and jobs timeline
    assert dom.count('class="main-svg"') >= 4
    assert dom.count('class="point"') >= 2 * len(parts)  # a bar per partition, rows and size
    legend = dom.split('class="legendtext"')
    assert any(t.split(">", 1)[1].startswith("DEFAULT<") for t in legend[1:])
    assert any(t.split(">", 1)[1].startswith("on db2<") for t in legend[1:])
    assert '>"Me trics_default"<' in dom and "&amp;quot;" not in dom  # labels escaped once
    assert "premake horizon" in dom and "retention cutoff 2025-02-01" in dom
    assert "rows in DEFAULT partition" in dom
    assert "maintain" in dom and "lock held" in dom

    # every table pgcleave knows, one section each; the legacy partition marked
    both = tmp_path / "all.html"
    r = ok(cli("--dsn", db.dsn, "report", "--all", "--html", str(both), "--now", NOW,
               "--json"))
    reports = {x["table"]: x for x in json.loads(r.stdout)}
    assert set(reports) == {"public.ledger", 'public."Me trics"'}
    ledger = reports["public.ledger"]
    assert [p["name"] for p in ledger["partitions"] if p["legacy"]] == ["public.ledger_legacy"]
    (conversion,) = ledger["jobs"]
    cut = [s for s in conversion["steps"] if s["lock"] == "ACCESS EXCLUSIVE"
           and s["held_ms"] is not None]
    assert cut and all(0 < s["held_ms"] <= s["duration_ms"] for s in cut), conversion
    dom, console, fetched = browse(both, tmp_path)
    assert script_errors(console) == [] and fetched == []
    assert dom.count('class="plot-container plotly"') == 4
    assert dom.count("<h2 ") == 2 and "ledger_legacy" in dom
    assert any(t.split(">", 1)[1].startswith("legacy<")
               for t in dom.split('class="legendtext"')[1:])

    # nothing to fetch: plotly.js is inline, no element loads a URL
    for f in (page, both):
        p = Fetches()
        p.feed(f.read_text())
        assert p.urls == [], p.urls
        assert "<script src" not in f.read_text()


def test_report_refuses_clearly(db: Any, conn: Any, cli: Any, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    r = cli("--dsn", db.dsn, "report", "--all", "--html", str(out))
    assert r.returncode == 3 and "knows no partitioned table" in r.stderr, r.stderr
    r = cli("--dsn", db.dsn, "report", "nope", "--html", str(out))
    assert r.returncode == 3 and "does not exist" in r.stderr, r.stderr
    conn.execute("CREATE TABLE plain (id int PRIMARY KEY)")
    r = cli("--dsn", db.dsn, "report", "plain", "--html", str(out))
    assert r.returncode == 3 and "is not partitioned" in r.stderr, r.stderr
    assert "pgcleave partition" in r.stderr
    r = cli("--dsn", db.dsn, "report", "--html", str(out))
    assert r.returncode == 2 and "either TABLE or --all" in r.stderr, r.stderr
    assert not out.exists()


def ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == 0, r.stdout + r.stderr
    return r
