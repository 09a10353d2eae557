"""Partitions cut the wrong size, re-cut online: a legacy ``[MINVALUE, cutoff)`` partition
split into months, day partitions merged, then the whole table re-sliced to one interval, all
beside a DEFAULT partition that holds rows and is never scanned under an exclusive lock."""

from __future__ import annotations

from . import Demo

TITLE = "6. Re-slicing: split, merge and reslice online, beside a DEFAULT"

_PARTITIONS = ("SELECT tableoid::regclass AS partition, count(*) AS rows, min(logged_at)::date"
               " AS first, max(logged_at)::date AS last FROM activity GROUP BY 1 ORDER BY"
               " min(logged_at)")
_SUM = "SELECT count(*) AS rows, sum(hashtext(a::text)) AS checksum FROM activity a"


def _setup(d: Demo) -> None:
    """What a few months of life leave: the old table kept as ``[MINVALUE, 2026-01-01)`` by
    an in-place conversion, January as a month, February as days (a script that cut too
    fine) then the rest of it, and a DEFAULT with rows of clocks gone wrong."""
    d.sql("CREATE TABLE activity (\n  id bigserial,\n  tenant varchar NOT NULL,\n"
          "  logged_at timestamptz NOT NULL,\n  minutes int NOT NULL,\n"
          "  PRIMARY KEY (id, logged_at)\n) PARTITION BY RANGE (logged_at)")
    parts = [("activity_legacy", "MINVALUE", "'2026-01-01'"),
             ("activity_2026_01", "'2026-01-01'", "'2026-02-01'")]
    parts += [(f"activity_2026_02_0{i}", f"'2026-02-0{i}'", f"'2026-02-0{i + 1}'")
              for i in range(1, 8)]
    parts.append(("activity_2026_02_rest", "'2026-02-08'", "'2026-03-01'"))
    d.sql(";\n".join(f"CREATE TABLE {n} PARTITION OF activity FOR VALUES FROM ({lo}) TO ({hi})"
                     for n, lo, hi in parts)
          + ";\nCREATE TABLE activity_default PARTITION OF activity DEFAULT")
    d.sql("INSERT INTO activity (tenant, logged_at, minutes) SELECT 'tenant-' || (i % 20),"
          " '2025-10-01 UTC'::timestamptz + i * interval '30 minutes', 10 + i % 50"
          " FROM generate_series(0, 7247) i")
    d.sql("INSERT INTO activity (tenant, logged_at, minutes) SELECT 'tenant-' || i,"
          " '2038-01-19 UTC'::timestamptz + i * interval '1 hour', 0"
          " FROM generate_series(1, 40) i")


def run(d: Demo) -> None:
    d.say("An activity log, partitioned by time a while ago: the old table was kept as the "
          "legacy partition [MINVALUE, 2026-01-01), January is a month, a script cut February "
          "into days (too fine), and a DEFAULT partition catches rows from devices whose clock "
          "is wrong:")
    _setup(d)
    d.sql(_PARTITIONS)
    d.sql(_SUM)

    d.say("The legacy partition holds three months: split it into one partition per month. "
          "Its rows are copied into the new partitions (changes captured meanwhile, verified "
          "by count and hash), then one short transaction swaps them in. Next to a DEFAULT, "
          "an ATTACH scans the DEFAULT under ACCESS EXCLUSIVE; pgcleave first adds a CHECK "
          "excluding the span to it NOT VALID and validates it while writes go on. The plan, "
          "every statement with the lock it takes:")
    split = ("split", "activity_legacy", "--interval", "1 month")
    d.pgcleave(*split, "--dry-run")
    d.say("Run it, copying on two connections at once (--jobs 2):")
    d.pgcleave(*split, "--jobs", "2", "--yes")
    d.sql(_SUM)

    d.say("The first three days of February into one partition:")
    d.pgcleave("merge", "activity_2026_02_01", "activity_2026_02_02", "activity_2026_02_03",
               "--name", "activity_2026_02_01_03", "--yes")
    d.sql(_SUM)

    d.say("Or say the interval once and let pgcleave find what to re-cut: every partition "
          "wider than a month is split, every run of partitions within one month merged, in "
          "one job of one batch after the other:")
    d.pgcleave("reslice", "activity", "--interval", "1 month", "--yes")
    d.say("Every row is still there, each in its month; the DEFAULT kept its rows and no "
          "helper CHECK is left on it:")
    d.sql(_SUM)
    d.sql(_PARTITIONS)
    d.say("(The split kept [MINVALUE, 2025-10-01) as a partition of its own, empty: a row "
          "dated before October still has a place.)")
    d.pgcleave("status", "activity")
    d.sql("SELECT count(*) AS helper_checks FROM pg_constraint"
          " WHERE conrelid = 'activity_default'::regclass AND conname LIKE 'pgcleave_span%'")

    d.say("The journal keeps every job; the steps of the reslice, with how long each ran "
          "and how long it held its strongest lock:")
    d.pgcleave("jobs")
    d.sql("SELECT s.idx + 1 AS step, s.name, s.state, round(s.duration_ms::numeric, 1) AS ms,"
          " round(s.held_ms::numeric, 1) AS lock_held_ms FROM pgcleave.steps s"
          " WHERE s.job_id = (SELECT max(id) FROM pgcleave.jobs WHERE operation = 'reslice')"
          " ORDER BY s.idx")
