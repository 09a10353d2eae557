"""``pgcleave report TABLE --html FILE`` (or ``--all``): one page people look at; ``--text``
prints it for a terminal instead."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from ..errors import UsageError
from ..ops import report as report_ops
from .app import app
from .cmd_maintain import now_option, parse_now
from .common import db, json_option, out, print_json


@app.command()
@click.argument("table", required=False)
@click.option("--all", "all_tables", is_flag=True,
              help="Every partitioned table pgcleave knows (a policy or a job), one section "
                   "each.")
@click.option("--html", "html_file", type=click.Path(dir_okay=False, writable=True,
                                                     path_type=Path),
              metavar="FILE", help="Write the report to FILE: one self-contained HTML page "
                                   "(charts inline, no network needed to view it).")
@click.option("--text", "as_text", is_flag=True,
              help="Print the report here as plain text, for a terminal: partitions with their "
                   "rows, the problems, each job's steps with durations and lock hold times.")
@now_option
@json_option
def report(table: str | None, all_tables: bool, html_file: Path | None, as_text: bool,
           now_text: str | None, as_json: bool) -> None:
    """A report of TABLE: rows and size per partition along the key (DEFAULT and legacy
    partitions marked), which server holds what, the premake and retention horizons, the jobs
    with their lock hold times, and the current `check` problems.

    Read-only. Needs the report extra for --html: pip install 'pgcleave[report]'; --text
    needs nothing more.
    """
    if bool(table) == all_tables:
        raise UsageError("give either TABLE or --all", hint="pgcleave report orders --html "
                         "orders.html, or pgcleave report --all --html report.html")
    if html_file is None and not as_json and not as_text:
        raise UsageError("say where the report goes: --html FILE, --text (here, for a "
                         "terminal) or --json for its data")
    if as_text and as_json:
        raise UsageError("--text and --json both print the report here: give one")
    now = parse_now(now_text)
    with db() as conn:
        reports = ([report_ops.gather(conn, table, now=now)] if table
                   else report_ops.gather_all(conn, now=now))
        database = f"{conn.info.dbname} on {conn.info.host}:{conn.info.port}"
    if html_file is not None:
        from ..ops import report_html

        page = report_html.render(reports, generated_at=datetime.now(UTC), database=database)
        try:
            html_file.write_text(page, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {html_file}: {exc.strerror or exc}",
                             hint="give --html a file in a directory that exists and that "
                                  "you may write to") from None
        if not as_json:
            out.print(f"wrote {html_file} ({len(reports)} table(s), {len(page) // 1024} kB)",
                      markup=False)
    if as_text:
        from ..ops import report_text

        report_text.render(out, reports, generated_at=datetime.now(UTC), database=database)
    if as_json:
        print_json(reports)
