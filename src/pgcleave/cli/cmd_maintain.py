"""``pgcleave maintain``, ``check``, ``config`` and ``restore``: keeping partitioned tables
maintained from cron or a Kubernetes CronJob, and monitoring that it happens."""

from __future__ import annotations

import shlex
import sys
from datetime import UTC, datetime
from typing import Any

import click

from .. import journal
from .. import policy as pol
from ..catalog import resolve
from ..connection import Connection
from ..errors import Busy, PgcleaveError, UsageError
from ..execute import Executor, run_recovery
from ..ops import config as config_ops
from ..ops import maintain as maintain_ops
from ..ops.check import MAX_PARTITIONS, check_tables, prometheus
from ..ops.maintain import plan_maintain
from ..ops.retention import plan_restore, require_archive_tools
from .app import app
from .common import (
    Reporter,
    db,
    dry_run_option,
    err,
    execute,
    json_option,
    max_rate_option,
    out,
    print_json,
    settings,
    yes_option,
)


def parse_now(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--now {text!r} is not an ISO timestamp",
                         hint="e.g. --now '2025-03-15 12:00:00+00'") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


now_option = click.option(
    "--now", "now_text", default=None, hidden=True, metavar="TIMESTAMP",
    help="For testing and dry runs: act as if it were TIMESTAMP (what would maintain do on "
         "that date). The database clock is not touched.")


def _names(conn: Connection, tables: tuple[str, ...]) -> list[str]:
    if tables:
        return list(tables)
    return [p.table.quoted for p in pol.load_all(conn)]


@app.command()
@click.argument("tables", nargs=-1)
@now_option
@click.option("--print-schedule", is_flag=True,
              help="Print a crontab line, a Kubernetes CronJob manifest, a Django management "
                   "command line, a Celery beat entry and a systemd timer that run maintain "
                   "every minute, and exit.")
@click.option("--jobs", "-j", default="1", show_default=True, metavar="N|auto",
              help="Each DEFAULT drain's bulk copy on N connections at once, each taking "
                   "disjoint block ranges in one exported snapshot; auto as for fill.")
@max_rate_option
@dry_run_option
@yes_option
@json_option
def maintain(tables: tuple[str, ...], now_text: str | None, print_schedule: bool, jobs: str,
             max_rate: float | None, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Create future partitions, move rows out of DEFAULT partitions, retire old partitions
    (detach, archive or drop, as each table's policy says), and ANALYZE what changed.

    Without TABLES, every table with a policy. Idempotent, never asks, and safe to run every
    minute: overlapping runs skip the table another run is working on; a run interrupted by a
    crash is resumed by the next one. Exit status is non-zero if any table failed.
    (--now TIMESTAMP, for testing and dry runs, acts as if it were that date.)
    """
    if print_schedule:
        _print_schedule(tables)
        return
    now = parse_now(now_text)
    results: list[dict[str, Any]] = []
    worst = 0
    recovered: list[dict[str, str]] = []
    with db() as conn:
        if not dry_run:
            recovered = _recover(conn, quiet=as_json)
        names = _names(conn, tables)
        if not names:
            err.print("no table has a pgcleave policy; nothing to maintain", markup=False)
        for name in names:
            res: dict[str, Any] = {"table": name}
            try:
                res.update(_maintain_one(conn, name, now, dry_run=dry_run, as_json=as_json,
                                         jobs=jobs, max_rate=max_rate))
            except Busy as exc:
                res["skipped"] = exc.message
                err.print(f"{name}: skipped: {exc.message}", markup=False)
            except PgcleaveError as exc:
                res["error"] = exc.message
                worst = worst or exc.exit_code
                err.print(f"{name}: error: {exc.message}", markup=False)
                if exc.hint:
                    err.print(f"hint: {exc.hint}", markup=False)
            results.append(res)
    if as_json:
        print_json({"dry_run": dry_run, "now": now.isoformat() if now else None,
                    "recovered": recovered, "tables": results})
    if worst:
        sys.exit(worst)  # click's Exit would be swallowed (standalone_mode=False)


def _recover(conn: Connection, *, quiet: bool) -> list[dict[str, str]]:
    """The recovery pass ``resume`` runs too: settle what killed jobs left behind (prepared
    transactions of ``pgcleave alter`` on shards: committed when the decision row says
    commit, rolled back when no decision was made; a split's or merge's CHECK on a DEFAULT
    that no unfinished job owns: dropped under a short lock_timeout, since it only restricts
    the DEFAULT; one whose job is unfinished is that job's to drop)."""
    from ..ops import alter  # noqa: F401  (registers recover_prepared as a recovery hook)
    from ..span_checks import Dropped

    settled: list[dict[str, str]] = []
    for item in run_recovery(conn):
        if isinstance(item, Dropped):
            settled.append(item.to_json())
            line = f"recovered: {item}"
        else:
            gid, what = item
            settled.append({"gid": str(gid), "action": str(what)})
            line = f"recovered: prepared transaction {gid} {what}"
        if not quiet:
            out.print(line, markup=False)
    return settled


def _maintain_one(conn: Connection, name: str, now: datetime | None, *, dry_run: bool,
                  as_json: bool, jobs: str = "1", max_rate: float | None = None
                  ) -> dict[str, Any]:
    _, qname, _ = resolve(conn, name)
    res: dict[str, Any] = {"table": qname.quoted}
    if not dry_run:
        res["resumed"] = _resume_unfinished(conn, qname.quoted)
    plan, summary = plan_maintain(conn, name, now=now, jobs=jobs, max_rate=max_rate)
    require_archive_tools(conn, plan)
    res["planned"] = summary.to_json()
    if dry_run:
        if as_json:
            res["plan"] = plan.to_json()
        elif plan.steps:
            execute(plan, dry_run=True, yes=True)
        else:
            out.print(f"-- pgcleave maintain {plan.target}: nothing to do", markup=False)
        return res
    if not plan.steps:
        res["job"] = None
        res["done"] = summary.to_json()
        if not as_json:
            line = f"maintain {plan.target}: nothing to do"
            if summary.late_rows:
                line += f" ({summary.late_rows} late rows stay in the DEFAULT)"
            out.print(line, markup=False)
        return res
    for note in plan.notes[1:]:
        err.print(f"note: {note}", markup=False)
    job = Executor(settings(), Reporter()).run(plan)
    res["job"] = job
    res["done"] = maintain_ops.run_summary(conn, job, summary.to_json())
    if not as_json:
        d = res["done"]
        out.print(f"maintain {plan.target}: created {len(d['created'])}, moved "
                  f"{d['moved_rows']} rows, finalized {len(d['finalized'])}, detached "
                  f"{len(d['detached'])}, archived {len(d['archived'])}, dropped "
                  f"{len(d['dropped'])}, analyzed {len(d['analyzed'])} (job {job})"
                  + (f"; {d['late_rows']} late rows stay in the DEFAULT"
                     if d["late_rows"] else ""), markup=False)
    return res


def _resume_unfinished(conn: Connection, target: str) -> list[int]:
    """Finish maintain jobs a crash left behind; refuse to touch other operations' jobs."""
    resumed = []
    for jid, op in journal.unfinished_jobs(conn, target):
        if op != "maintain":
            # a dead job of another operation: what refuses statements or hides rows is
            # undone now, as its own failure would have done; the job waits for its operator
            cleared = Executor(settings(), Reporter()).undo_residue(jid)
            if cleared:
                err.print(f"{target}: job {jid} ({op}) is unfinished: {cleared}", markup=False)
            raise Busy(f"job {jid} ({op}) on {target} is unfinished; maintain leaves the table "
                       "alone until it is finished or rolled back")
        err.print(f"{target}: resuming unfinished maintain job {jid}", markup=False)
        Executor(settings(), Reporter()).resume(jid)
        resumed.append(int(jid))
    return resumed


def _print_schedule(tables: tuple[str, ...]) -> None:
    args = " ".join(shlex.quote(t) for t in tables)
    cmd = f"pgcleave --quiet maintain {args}".rstrip()
    yaml_args = "".join(f'\n                - {t!r}' for t in tables)
    celery_args = "".join(f", {t!r}" for t in tables)
    # one line: crontab has no line continuation
    django_line = (f"* * * * * cd /srv/app && python manage.py pgcleave --quiet maintain {args}"
                   .rstrip() + " >> /var/log/pgcleave-maintain.log 2>&1")
    # one line: crontab knows no line continuation
    check_line = (f"*/5 * * * * PGCLEAVE_DSN='postgresql://USER@HOST/DB' pgcleave check {args}"
                  ' || logger -t pgcleave "pgcleave check found problems"')
    out.print(f"""# crontab (crontab -e): every minute; set PGCLEAVE_DSN (or PG* variables/.pgpass)
* * * * * PGCLEAVE_DSN='postgresql://USER@HOST/DB' {cmd} >> /var/log/pgcleave-maintain.log 2>&1
{check_line}

# Kubernetes CronJob
apiVersion: batch/v1
kind: CronJob
metadata:
  name: pgcleave-maintain
spec:
  schedule: "* * * * *"
  concurrencyPolicy: Forbid        # overlapping runs would only skip busy tables
  startingDeadlineSeconds: 120
  successfulJobsHistoryLimit: 1
  failedJobsHistoryLimit: 3
  jobTemplate:
    spec:
      backoffLimit: 0               # the next minute's run retries and resumes
      template:
        spec:
          restartPolicy: Never
          containers:
            - name: pgcleave
              image: YOUR-REGISTRY/pgcleave:0.1
              args:
                - --quiet
                - maintain{yaml_args}
              env:
                - name: PGCLEAVE_DSN
                  valueFrom:
                    secretKeyRef: {{name: pgcleave-dsn, key: dsn}}
              # archive retention needs the archive directory mounted here

# Django (INSTALLED_APPS += ["pgcleave.django"]): the same run with DATABASES' connection
{django_line}

# Celery beat (settings or celery.py); the task runs the Django command above:
#   @app.task(ignore_result=True)
#   def pgcleave_maintain():
#       from django.core.management import call_command
#       call_command("pgcleave", "--quiet", "maintain"{celery_args})
app.conf.beat_schedule = {{
    "pgcleave-maintain": {{"task": "yourproject.tasks.pgcleave_maintain", "schedule": 60.0,
                           "options": {{"expires": 55}}}},   # a late run is skipped, not queued
}}

# systemd timer: /etc/systemd/system/pgcleave-maintain.service
[Unit]
Description=pgcleave maintain
[Service]
Type=oneshot
EnvironmentFile=/etc/pgcleave.env                    # PGCLEAVE_DSN=postgresql://USER@HOST/DB
ExecStart=/usr/local/bin/{cmd}
# /etc/systemd/system/pgcleave-maintain.timer  (systemctl enable --now pgcleave-maintain.timer)
[Unit]
Description=Run pgcleave maintain every minute
[Timer]
OnCalendar=minutely
AccuracySec=1s
Persistent=true
[Install]
WantedBy=timers.target
""", markup=False, end="")


@app.command()
@click.argument("tables", nargs=-1)
@now_option
@click.option("--max-partitions", default=MAX_PARTITIONS, show_default=True, type=int,
              help="Report a table with more leaf partitions than this.")
@click.option("--format", "fmt", type=click.Choice(["text", "prometheus", "json"]),
              default="text", show_default=True)
@json_option
def check(tables: tuple[str, ...], now_text: str | None, max_partitions: int, fmt: str,
          as_json: bool) -> None:
    """Monitoring: one line per problem and a non-zero exit status (1) if there is any.

    Problems: premake horizon shorter than the policy asks, rows in a DEFAULT partition (late
    rows for retired ranges told apart), a detach left pending, too many partitions, retention
    overdue, a failed job, what an unfinished job left (a CHECK refusing rows, rows hidden, a
    split's or merge's CHECK on a DEFAULT), no policy. --format prometheus writes
    text-exposition metrics.
    """
    now = parse_now(now_text)
    with db() as conn:
        results = check_tables(conn, list(tables), now=now, max_partitions=max_partitions)
    problems = [(h.table, p) for h in results for p in h.problems]
    if as_json or fmt == "json":
        print_json({"ok": not problems, "tables": [h.to_json() for h in results]})
    elif fmt == "prometheus":
        sys.stdout.write(prometheus(results))
    else:
        for table, p in problems:
            out.print(f"{table}: {p.kind}: {p.message}", markup=False)
        if not problems:
            out.print(f"ok: {len(results)} table(s) checked, no problem", markup=False)
    if problems:
        sys.exit(1)


@app.command()
@click.argument("table")
@click.option("--interval", default=None, help="Partition width: '1 day', '1 month', ... or a "
              "number for integer keys (the second level's, for two-level tables).")
@click.option("--premake", type=click.IntRange(min=0), default=None,
              help="Future partitions to keep ready beyond the current one.")
@click.option("--retention", default=None, help="Keep this much ('24 months'); older "
              "partitions are retired by maintain.")
@click.option("--no-retention", is_flag=True, help="Keep everything.")
@click.option("--retention-action", type=click.Choice(pol.RETENTION_ACTIONS), default=None,
              help="detach (keep the table), archive (to --archive-dir, then drop) or drop.")
@click.option("--archive-dir", default=None, help="Where archives go (on the machine that "
              "runs maintain).")
@click.option("--archive-format", type=click.Choice(pol.ARCHIVE_FORMATS), default=None,
              help="copy: gzip of COPY text (default); pg_dump: custom-format dump.")
@click.option("--time-zone", default=None, help="Zone of calendar boundaries for timestamptz "
              "keys (default UTC).")
@click.option("--then", "then", default=None, metavar="'range(COLUMN)'",
              help="Second level under a list/hash table.")
@click.option("--place", "place", multiple=True, metavar="'range(FROM,TO)=SERVER'",
              help="Placement rule (repeatable, added to the existing ones): maintain creates "
                   "new partitions inside FROM..TO (or for the values of 'list(V1,V2)=SERVER') "
                   "as foreign partitions on SERVER (see `pgcleave server add`).")
@click.option("--no-place", is_flag=True, help="Remove every placement rule (with --place: "
              "replace them).")
@dry_run_option
@yes_option
@json_option
def config(table: str, interval: str | None, premake: int | None, retention: str | None,
           no_retention: bool, retention_action: str | None, archive_dir: str | None,
           archive_format: str | None, time_zone: str | None, then: str | None,
           place: tuple[str, ...], no_place: bool, dry_run: bool, yes: bool,
           as_json: bool) -> None:
    """Show or change TABLE's maintenance policy. A table partitioned by hand or by another
    tool (pgslice, pg_partman) is adopted: its strategy and key are read from the catalog, the
    interval inferred from its partitions when not given, whatever the partitions are named.
    """
    changes = any(v is not None for v in (interval, premake, retention, retention_action,
                                          archive_dir, archive_format, time_zone, then)
                  ) or bool(place) or no_place
    with db() as conn:
        _, qname, _ = resolve(conn, table)
        current = pol.load(conn, qname)
        if not changes and not no_retention and current is not None:
            if as_json:
                print_json(current.to_json())
            else:
                out.print(f"{qname}: {current.summary()}", markup=False)
            return
        plan, new = config_ops.plan_config(
            conn, table, interval=interval, premake=premake, retention=retention,
            no_retention=no_retention, retention_action=retention_action,
            archive_dir=archive_dir, archive_format=archive_format, time_zone=time_zone,
            then=then, place=list(place), no_place=no_place)
    execute(plan, dry_run=dry_run, yes=yes, as_json=as_json)
    if not dry_run and not as_json:
        out.print(f"{qname}: {new.summary()}", markup=False)


@app.command()
@click.argument("archive")
@click.option("--as-table", default=None, metavar="NAME",
              help="Restore into a standalone table NAME instead of attaching it.")
@dry_run_option
@yes_option
@json_option
def restore(archive: str, as_table: str | None, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Bring an archived partition back from ARCHIVE (its .json manifest or data file):
    recreate it, COPY the rows in (count and checksum verified), attach it without a scan."""
    with db() as conn:
        plan = plan_restore(conn, archive, as_table=as_table)
    execute(plan, dry_run=dry_run, yes=yes, as_json=as_json)
