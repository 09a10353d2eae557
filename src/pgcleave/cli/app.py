"""The ``pgcleave`` command group: global options. Each ``cmd_*.py`` module attaches its
commands to it; ``COMMANDS`` says which module holds which command, so that a run imports only
the module of the command it runs (``--version`` and ``--help`` import none of them, nor the
driver, nor rich)."""

from __future__ import annotations

import importlib

import click

from ..errors import UsageError
from ..settings import AUTO_DUTY_PCT
from .common import STATE

#: Every command: the ``cli`` module that defines it and its short help (the first sentence of
#: its docstring), listed by ``--help`` without importing the module.
#: ``tests/test_startup.py`` keeps this table true to the modules.
COMMANDS: dict[str, tuple[str, str]] = {
    'add-foreign-key': ('cmd_keys', 'Add a foreign key: TABLE COLS REFERENCES OTHER [REF_COLS].'),
    'add-partition': ('cmd_partition', 'Create a partition of TABLE.'),
    'add-partitions': ('cmd_copy',
        'Add range partitions to TABLE_intermediate (before the swap) or TABLE (after).'),
    'advise': ('cmd_advise',
        'Whether to partition TABLE, by which column and interval, and what it costs: size '
        'against memory, growth, the statements pg_stat_statements saw touching it (with the '
        'columns they filter, group and order by), candidate keys ranked by the share of '
        'statement time that would prune by them, the blockers, and the exact `pgcleave '
        'partition` command.'),
    'alter': ('cmd_shards',
        'Apply an ALTER TABLE action to TABLE, its local partitions and the tables of its '
        'remote partitions, atomically (two-phase commit on the shards).'),
    'analyze': ('cmd_copy',
        'ANALYZE the partitioned table (the intermediate one before the swap).'),
    'audit': ('cmd_advise',
        'How the statements pg_stat_statements saw use the partitions of TABLE: each explained '
        'with values sampled from the table (a custom plan: pruned at plan time; the generic '
        'plan of a prepared statement: pruned at run time), the partitions and servers it '
        'reaches, the statements that scan every partition, those that break or slow down once '
        'partitions are on other servers (ON CONFLICT, unique lookups without the key), and '
        'settings that undo pruning.'),
    'carve': ('cmd_partition',
        "Move the rows of a range or list out of TABLE's DEFAULT (or legacy) partition into a "
        'new partition; the rows stay visible through TABLE at every moment.'),
    'check': ('cmd_maintain',
        'Monitoring: one line per problem and a non-zero exit status (1) if there is any.'),
    'config': ('cmd_maintain', "Show or change TABLE's maintenance policy."),
    'create-index': ('cmd_keys',
        'Create an index on partitioned TABLE (COLUMNS, e.g. customer_id,created_at) online.'),
    'demo': ('cmd_demo',
        'Start throwaway servers and walk through seed 000: a plain table grows, is partitioned'
        ' online, carved, altered, and spread over a second server.'),
    'doctor': ('cmd_doctor',
        'Capability by capability, whether the connected role can do it here (partition in '
        'place and by copy, maintain, retention, keys, servers, move by replication or by copy,'
        ' alter with two-phase commit, the DDL guard), and for each "no" the statement or '
        'setting that fixes it.'),
    'drop-constraint': ('cmd_keys',
        'Drop constraint NAME of TABLE in one short catalog-only transaction (refused while '
        'foreign keys depend on it).'),
    'drop-index': ('cmd_keys',
        'Drop INDEX: CONCURRENTLY on a plain table; on a partitioned table one short catalog-'
        'only transaction, tried under lock_timeout and retried.'),
    'drop-partition': ('cmd_drop_partition',
        'Drop PARTITION of TABLE if it is empty (refused if it holds a row), in one short '
        'transaction under lock_timeout with retry.'),
    'explain': ('cmd_shards',
        'Show the plan of a query annotated with the partitions and servers it touches, and '
        'which partitions were pruned.'),
    'fill': ('cmd_copy',
        "Copy TABLE's rows into TABLE_intermediate in primary-key batches (resumable with "
        '`pgcleave resume JOB` after an interruption).'),
    'jobs': ('cmd_jobs', 'List jobs and their state.'),
    'maintain': ('cmd_maintain',
        'Create future partitions, move rows out of DEFAULT partitions, retire old partitions '
        "(detach, archive or drop, as each table's policy says), and ANALYZE what changed."),
    'merge': ('cmd_reslice',
        'Merge adjacent range PARTITIONS (or list partitions) of one table into one; the rows '
        'stay visible and writable (copy with change capture, verify, one short swap).'),
    'move': ('cmd_shards',
        'Move PARTITION to another server (a postgres_fdw foreign partition), or back with --to'
        ' local, online: rows are replicated (or copied, with the writes made meanwhile '
        'replayed from a key log) while the application writes, then a short cut-over verifies '
        'them (count + hash) and swaps the partitions.'),
    'partition': ('cmd_partition',
        'Turn the plain TABLE into a partitioned table under the same name, online.'),
    'prep': ('cmd_copy',
        'Create TABLE_intermediate, partitioned by range of --by, and capture every INSERT, '
        'UPDATE and DELETE on TABLE into it from now on.'),
    'report': ('cmd_report',
        'A report of TABLE: rows and size per partition along the key (DEFAULT and legacy '
        'partitions marked), which server holds what, the premake and retention horizons, the '
        'jobs with their lock hold times, and the current `check` problems.'),
    'reslice': ('cmd_reslice',
        "Re-cut TABLE's partitions in a span to INTERVAL in one resumable job: partitions wider"
        ' than a period are split, runs of smaller ones merged, one batch at a time (the extra '
        "disk is one batch's copy)."),
    'restore': ('cmd_maintain',
        'Bring an archived partition back from ARCHIVE (its .json manifest or data file): '
        'recreate it, COPY the rows in (count and checksum verified), attach it without a scan.'),
    'resume': ('cmd_jobs',
        'Continue JOB, whose process died or failed, from the first step not done.'),
    'rollback': ('cmd_jobs', 'Undo the steps an unfinished JOB did, last first.'),
    'sandbox': ('cmd_sandbox',
        'Throwaway local PostgreSQL servers (initdb + pg_ctl) on free loopback ports.'),
    'server': ('cmd_server', 'Remote Postgres servers (postgres_fdw) that can hold partitions.'),
    'set-primary-key': ('cmd_keys',
        'Give partitioned TABLE a PRIMARY KEY on COLS without blocking writes while it builds.'),
    'split': ('cmd_reslice',
        'Split PARTITION into several: a range partition into pieces covering exactly its '
        'bound, a list partition into one per --values group; the rows stay visible and '
        'writable (copy with change capture, verify, one short swap).'),
    'status': ('cmd_status',
        'Show TABLE, or each of its partitions with bounds, rows, size and where it lives.'),
    'swap': ('cmd_copy',
        'Verify, then swap in one short transaction: TABLE becomes TABLE_retired (kept in sync)'
        ' and TABLE_intermediate becomes TABLE.'),
    'unpartition': ('cmd_partition',
        'The way back: TABLE becomes the plain old table again, with the (few) rows of its '
        'other partitions moved back into it, in one short transaction.'),
    'unprep': ('cmd_copy', 'Stop the change capture.'),
    'unswap': ('cmd_copy',
        'Swap back: TABLE_retired, with every change made since the swap, becomes TABLE again.'),
    'verify': ('cmd_copy',
        'Compare the old and the new table: rows and a hash per partition range, in one '
        'snapshot.'),
}


class LazyGroup(click.Group):
    """A group whose commands are imported when they are run (click's documented lazy
    subcommands pattern): a command module imports its operations, and with them the driver;
    a command that runs none of them should not pay for them."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            importlib.import_module(f"{__package__}.{COMMANDS[cmd_name][0]}")
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's own listing, with the short help of a command not imported yet read from
        ``COMMANDS``."""
        names = [n for n in self.list_commands(ctx)
                 if n not in self.commands or not self.commands[n].hidden]
        if not names:
            return
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = [(n, (self.commands.get(n) or click.Command(n, help=COMMANDS[n][1]))
                 .get_short_help_str(limit)) for n in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _limits(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Read --max-load/--critical-load at once: a typo is a usage error before anything runs."""
    if value is None:
        return None
    from ..throttle import parse_limits  # the throttle reads the server: only when asked for

    try:
        parse_limits(value, f"--{param.name.replace('_', '-')}" if param.name else "")
    except UsageError as exc:
        raise click.BadParameter(f"{exc.message} ({exc.hint})") from None
    return value


def _duty(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``--duty``: a percentage from 1 to 100, or ``auto``."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= 100:
        raise click.BadParameter(f"{value!r}: give a percentage from 1 to 100, or auto")
    return str(n)


@click.group(cls=LazyGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--dsn", default=None, metavar="DSN",
              help="Connection string (URL or key=value). Default: $PGCLEAVE_DSN, else libpq's "
                   "PG* variables, service file and .pgpass.")
@click.option("--lock-timeout", default=100, show_default=True, type=click.IntRange(min=1),
              metavar="MS", help="lock_timeout for every DDL statement.")
@click.option("--lock-retry-limit", default=300.0, show_default=True,
              type=click.FloatRange(min=0), metavar="SECONDS",
              help="How long to keep retrying a lock before giving up (exit code 4).")
@click.option("--statement-timeout", default=0, show_default=True, type=click.IntRange(min=0),
              metavar="MS", help="statement_timeout for DDL steps (0: none).")
@click.option("--batch-time", default=20, show_default=True, type=click.IntRange(min=0),
              metavar="MS", help="Bulk phases (fill) size each batch so its transaction lasts "
                                 "about this long: the longest an application write waits for "
                                 "a batch. 0: fixed batch sizes (--batch-size).")
@click.option("--duty", default="100", show_default=True, callback=_duty,
              metavar="PERCENT|auto",
              help="Bulk phases work at most this share of the time and rest the remainder "
                   "between batches (100: no rest). auto: rest only while the application "
                   "is at work (one of its sessions in a statement or a transaction, or out "
                   "of one for less than a second), "
                   "working a third of the time then, at full speed otherwise.")
@click.option("--max-load", default=None, callback=_limits, metavar="LIMITS",
              help="Pause bulk phases (fill, carve and DEFAULT-drain copies, move by copy) "
                   "while the database is over any of these, e.g. "
                   "'active=20,lock_waits=5,lag=10s,probe_p95=50ms': active backends and "
                   "sessions waiting on a lock (not counting pgcleave's), replay lag of "
                   "standbys and subscribers, p95 of a small probe query. Going on by itself.")
@click.option("--critical-load", default=None, callback=_limits, metavar="LIMITS",
              help="Same syntax: over any of these the job stops (exit code 6), resumable with "
                   "`pgcleave resume N`.")
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
@click.version_option(package_name="pgcleave")
def app(dsn: str | None, lock_timeout: int, lock_retry_limit: float, statement_timeout: int,
        batch_time: int, duty: str, max_load: str | None, critical_load: str | None,
        quiet: bool) -> None:
    """pgcleave: partition live PostgreSQL tables online, keep their partitions maintained, and
    spread partitions over more servers with postgres_fdw.

    Exit codes: 0 ok, 1 failure, 2 usage, 3 refused (nothing changed), 4 lock contention
    (retry later), 5 cannot connect, 6 stopped at --critical-load (resume later), 7 audit
    found a warning.
    """
    s = STATE.settings
    s.dsn = dsn
    s.lock_timeout_ms = lock_timeout
    s.lock_retry_limit_s = lock_retry_limit
    s.statement_timeout_ms = statement_timeout
    s.batch_time_ms = batch_time
    s.duty_auto = duty == "auto"
    s.duty_pct = AUTO_DUTY_PCT if s.duty_auto else int(duty)
    s.max_load = max_load
    s.critical_load = critical_load
    STATE.quiet = quiet
