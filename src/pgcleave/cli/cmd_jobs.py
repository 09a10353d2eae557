"""``pgcleave jobs``, ``resume JOB``, ``rollback JOB``: the journal of operations."""

from __future__ import annotations

import click
from rich.table import Table

from .. import journal
from ..execute import Executor
from ..ops.move import ORIGIN_DSN_SECRET
from .app import app
from .common import STATE, Reporter, db, json_option, out, print_json


@app.command()
@json_option
@click.option("--unfinished", is_flag=True, help="Only running or failed jobs.")
def jobs(as_json: bool, unfinished: bool) -> None:
    """List jobs and their state."""
    with db() as conn:
        rows = journal.list_jobs(conn, include_finished=not unfinished)
    if as_json:
        print_json([r.to_json() for r in rows])
        return
    t = Table(show_header=True, header_style="bold")
    for col in ("job", "operation", "target", "state", "steps", "next step", "updated",
                "args"):
        t.add_column(col)
    for r in rows:
        t.add_row(str(r.id), r.operation, r.target, r.state, f"{r.steps_done}/{r.steps_total}",
                  r.current_step or "", r.updated_at.strftime("%Y-%m-%d %H:%M:%S"),
                  journal.args_text(r.args))
    out.print(t)


_origin_dsn = click.option(
    "--origin-dsn", default=None, metavar="DSN",
    help="The --origin-dsn the job's move was started with (it is never journaled).")


def _secrets(origin_dsn: str | None) -> dict[str, str]:
    return {ORIGIN_DSN_SECRET: origin_dsn} if origin_dsn else {}


@app.command()
@click.argument("job", type=int)
@_origin_dsn
def resume(job: int, origin_dsn: str | None) -> None:
    """Continue JOB, whose process died or failed, from the first step not done."""
    plan = Executor(STATE.settings, Reporter(), secrets=_secrets(origin_dsn)).resume(job)
    out.print(f"{plan.operation} {plan.target}: done (job {job})", markup=False)


@app.command()
@click.argument("job", type=int)
@_origin_dsn
def rollback(job: int, origin_dsn: str | None) -> None:
    """Undo the steps an unfinished JOB did, last first."""
    plan = Executor(STATE.settings, Reporter(), secrets=_secrets(origin_dsn)).rollback(job)
    out.print(f"{plan.operation} {plan.target}: rolled back (job {job})", markup=False)
