"""How long does ``report --html`` take on a table with many partitions and jobs, how large is
the page, and how long does a browser take to draw it?

A table of ``--partitions`` daily partitions and a DEFAULT, ``--rows`` rows spread over them,
adopted with ``config`` (a job), then ``--jobs`` ``maintain`` runs a day apart (``--now``), each
a job of several steps. Then:
  G. gathering the report's data (status, check, servers, the journal), in process;
  R. rendering the page (plotly, imported here: its import is counted apart);
  C. the CLI end to end (``pgcleave report TABLE --html FILE``), as a user runs it;
  B. headless Chromium opening the page (DOM after the scripts ran), as ``tests/test_report.py``
     does (skipped when there is no chromium).

    .venv/bin/python bench/report.py --partitions 1000 --jobs 40
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta

import psycopg

from pgcleave.connection import Settings, connect
from pgcleave.sandbox import temporary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START = date(2024, 1, 1)


def cli(dsn: str, *args: str) -> float:
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "pgcleave", "--dsn", dsn, *args], cwd=ROOT,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if p.returncode not in (0, 1):  # report exits 0; maintain may report problems
        raise SystemExit(f"pgcleave {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--partitions", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--jobs", type=int, default=40)
    a = ap.parse_args()
    with temporary(1) as sb:
        dsn = sb.servers[0].dsn
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CREATE TABLE ev (id bigserial, d date NOT NULL, v int,"
                      " PRIMARY KEY (id, d)) PARTITION BY RANGE (d)")
            for i in range(a.partitions):
                lo = START + timedelta(days=i)
                c.execute(f"CREATE TABLE ev_p{lo:%Y%m%d} PARTITION OF ev FOR VALUES FROM"
                          f" ('{lo}') TO ('{lo + timedelta(days=1)}')")
            c.execute("CREATE TABLE ev_default PARTITION OF ev DEFAULT")
            c.execute("INSERT INTO ev (d, v) SELECT %s::date + (i %% %s), i"
                      " FROM generate_series(1, %s) i", [START, a.partitions, a.rows])
            c.execute("ANALYZE ev")
        cli(dsn, "config", "ev", "--interval", "1 day", "--premake", "3", "--retention",
            f"{a.partitions - 30} days", "--yes")
        last = START + timedelta(days=a.partitions - 1)
        for j in range(a.jobs):
            cli(dsn, "maintain", "ev", "--now", str(last + timedelta(days=j - a.jobs + 3)))

        from pgcleave.ops import report

        now = datetime.combine(last + timedelta(days=3), datetime.min.time(), tzinfo=UTC)

        with connect(Settings(dsn=dsn)) as conn:
            t0 = time.monotonic()
            data = [report.gather(conn, "ev", now=now)]
            gather_s = time.monotonic() - t0
        t0 = time.monotonic()
        import plotly.graph_objects  # noqa: F401

        import_s = time.monotonic() - t0
        from pgcleave.ops import report_html

        t0 = time.monotonic()
        page = report_html.render(data, generated_at=datetime.now(UTC), database="bench")
        render_s = time.monotonic() - t0
        out = os.path.join(tempfile.mkdtemp(prefix="pgcleave-report-"), "ev.html")
        cli_s = cli(dsn, "report", "ev", "--html", out, "--now", now.isoformat())
        size = os.path.getsize(out)
        browser = shutil.which("chromium") or shutil.which("chromium-browser")
        browse_s = None
        if browser:
            t0 = time.monotonic()
            subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                            f"--user-data-dir={os.path.dirname(out)}/profile",
                            "--proxy-server=127.0.0.1:9", "--dump-dom", f"file://{out}"],
                           capture_output=True, timeout=300, check=True)
            browse_s = time.monotonic() - t0
        r = data[0]
        print(f"partitions {len(r['partitions'])}, jobs shown {len(r['jobs'])} "
              f"(+{r['jobs_omitted']} older), steps "
              f"{sum(len(j['steps']) for j in r['jobs'])}, page {len(page) / 1e6:.1f} MB "
              f"(CLI's {size / 1e6:.1f} MB)")
        print(f"G gather {gather_s:.2f} s, R render {render_s:.2f} s (+ plotly import "
              f"{import_s:.2f} s), C CLI end to end {cli_s:.2f} s, B chromium "
              + (f"{browse_s:.2f} s" if browse_s is not None else "not installed"))


if __name__ == "__main__":
    main()
