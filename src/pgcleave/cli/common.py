"""Shared CLI plumbing: the global state, confirmation, the dry run, progress rendering.

Conventions every command follows (other parts and users' scripts rely on them):
- connection options (``--dsn``, ``--lock-timeout``) come before the command name;
- commands that change something take ``--dry-run`` and ``--yes`` after their name; with no
  terminal and no ``--yes``, a command that needs confirmation refuses instead of waiting;
- commands that report take ``--json``;
- output for people goes to stdout, logs and progress to stderr.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import click

from ..errors import ConfirmationRequired
from ..settings import Settings

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

    from ..connection import Connection
    from ..execute import Event
    from ..plan import Plan


class _LazyConsole:
    """A rich ``Console`` built on first use: rich takes longer to import than a command that
    prints nothing of it (``--version``) takes to run."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            # Off a terminal (pipes, cron, CI logs) rich would crop trees at 80 columns;
            # never crop.
            probe = Console(stderr=self._stderr)
            width = None if probe.is_terminal else 400
            self._console = Console(stderr=self._stderr, highlight=False, soft_wrap=True,
                                    width=width)
        return getattr(self._console, name)


out = cast("Console", _LazyConsole(stderr=False))
err = cast("Console", _LazyConsole(stderr=True))


@dataclass
class State:
    settings: Settings = field(default_factory=Settings)
    quiet: bool = False


STATE = State()

dry_run_option = click.option("--dry-run", is_flag=True, help="Print the exact SQL of every "
                              "step with the lock it takes, and change nothing.")
yes_option = click.option("--yes", "-y", is_flag=True,
                          help="Accept the consequences the plan lists without asking.")
json_option = click.option("--json", "as_json", is_flag=True,
                           help="Machine-readable output on stdout.")
jobs_option = click.option(
    "--jobs", "-j", default="1", show_default=True, metavar="N|auto",
    help="Copy on N connections at once, each a disjoint share of the table; auto picks from "
         "max_parallel_workers, max_worker_processes, the free connections (and the cores, "
         "when the server is on this machine), at most 4. --max-rate counts them together.")

max_rate_option = click.option(
    "--max-rate", type=click.FloatRange(min=1), default=None, metavar="ROWS/S",
    help="Bulk copy at most this many rows per second (every --jobs connection together).")


def settings() -> Settings:
    return STATE.settings


def db() -> Connection:
    from ..connection import connect

    return connect(STATE.settings)


def comma_list(text: str | None, option: str) -> list[str] | None:
    """``RU,US, GB`` -> ``["RU", "US", "GB"]`` (None when the option was not given); an empty
    item is a usage error naming ``option``."""
    if text is None:
        return None
    vals = [v.strip() for v in text.split(",")]
    if not all(vals):
        raise click.BadParameter("empty value in the list", param_hint=option)
    return vals


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def confirm(question: str, yes: bool) -> None:
    """Ask on a terminal; refuse (never wait) without one."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise ConfirmationRequired(f"{question} (no terminal to ask on)",
                                   hint="rerun with --yes to accept")
    if not click.confirm(question, default=False, err=True):
        raise ConfirmationRequired("not confirmed; nothing changed")


class Reporter:
    """Renders executor events on stderr: a spinner line per step on a terminal, plain
    timestamped log lines otherwise (cron, CI, Kubernetes logs)."""

    def __init__(self) -> None:
        self.tty = err.is_terminal
        self.started: dict[int, float] = {}
        self.last_progress = 0.0
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def _bar_update(self, ev: Event) -> None:
        """On a terminal, progress that counts (``done``/``total``) shows as a bar with the
        rate and the time left."""
        if self._bar is None:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("    {task.description}"), BarColumn(),
                                 TextColumn("{task.fields[count]}"),
                                 TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                                 console=err, transient=True)
            self._bar.start()
            self._task = self._bar.add_task(ev.step.name if ev.step else "progress",
                                            total=None, rate="", count="")
        assert self._task is not None
        rate, done, total = ev.data.get("rate"), ev.data["done"], ev.data.get("total")
        self._bar.update(self._task, completed=done, total=max(total, done) if total else None,
                         rate=f"{rate:,.0f}/s" if rate else "",
                         count=f"{done:,}" + (f"/{total:,}" if total else ""))

    def _bar_stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = self._task = None

    def __call__(self, ev: Event) -> None:
        if STATE.quiet:
            return
        stamp = "" if self.tty else time.strftime("%Y-%m-%dT%H:%M:%S ")
        if ev.kind == "progress" and self.tty and ev.data.get("done") is not None \
                and not ev.data.get("final"):
            self._bar_update(ev)
            return
        self._bar_stop()
        if ev.kind == "job-start":
            err.print(f"{stamp}job {ev.job_id}: {ev.message} ({ev.total} steps)")
        elif ev.kind == "step-start":
            self.started[ev.index] = time.monotonic()
            err.print(f"{stamp}  [{ev.index + 1}/{ev.total}] {ev.message} ...")
        elif ev.kind in ("step-done", "step-skipped"):
            t = (time.monotonic() - self.started.get(ev.index, time.monotonic())) * 1000
            extra = "skipped: already done" if ev.kind == "step-skipped" else f"{t:.0f} ms"
            held = ev.data.get("held_ms")
            if held is not None and ev.step is not None and ev.step.strongest_lock is not None \
                    and ev.step.strongest_lock.level.blocks_writes:
                blocking = [lk for lk in ev.step.locks if lk.level.blocks_writes]
                if any("(detached, unused)" in lk.on for lk in blocking):
                    # a table nobody uses any more (dropping it grows with its size): not a
                    # hold the application waits on; say which locks the figure is about
                    extra += (f", locks held up to {held:.0f} ms: "
                              + "; ".join(str(lk) for lk in blocking))
                else:
                    extra += f", {ev.step.strongest_lock.level.value} held {held:.0f} ms"
            err.print(f"{stamp}  [{ev.index + 1}/{ev.total}] done ({extra})")
        elif ev.kind == "retry":
            err.print(f"{stamp}    lock not available, {ev.message}")
        elif ev.kind == "progress":
            now = time.monotonic()
            if now - self.last_progress >= (0.5 if self.tty else 10.0) or ev.data.get("final"):
                self.last_progress = now
                err.print(f"{stamp}    {ev.message}")
        elif ev.kind == "job-done":
            err.print(f"{stamp}job {ev.job_id}: done")


def execute(plan: Plan, *, dry_run: bool, yes: bool, as_json: bool = False,
            secrets: Mapping[str, str] | None = None) -> int | None:
    """Show or run a plan: the one path every changing command takes. ``secrets`` go to the
    run's actions only (see ``Executor``), never to the output."""
    if dry_run:
        if as_json:
            print_json(plan.to_json())
        else:
            out.print(plan.render_sql(), markup=False, end="")
        return None
    if not plan.steps:
        # Nothing to do (typically a second run): say so, and create no job.
        if as_json:
            print_json({"job": None, "operation": plan.operation, "target": plan.target,
                        "state": "nothing to do", "notes": plan.notes})
        else:
            for note in plan.notes or ["nothing to do"]:
                out.print(f"{plan.operation} {plan.target}: {note}", markup=False)
        return None
    for note in plan.notes:
        err.print(f"note: {note}", markup=False)
    if plan.warnings:
        for w in plan.warnings:
            err.print(f"warning: {w}", markup=False)
        confirm("Proceed with the changes listed above?", yes)
    from ..execute import Executor

    job_id = Executor(STATE.settings, Reporter(), secrets=secrets).run(plan)
    if as_json:
        print_json({"job": job_id, "operation": plan.operation, "target": plan.target,
                    "state": "done"})
    else:
        out.print(f"{plan.operation} {plan.target}: done (job {job_id})", markup=False)
    return job_id
