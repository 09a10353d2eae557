"""``check`` for monitoring: problems as lines and exit status, Prometheus metrics."""

from __future__ import annotations

from typing import Any


def test_check_problems_and_prometheus(db: Any, conn: Any, cli: Any) -> None:
    conn.execute("CREATE TABLE c (id bigserial, d date NOT NULL, PRIMARY KEY (id, d))"
                 " PARTITION BY RANGE (d)")
    for m in range(1, 7):
        conn.execute(f"CREATE TABLE c_{m} PARTITION OF c FOR VALUES FROM ('2025-{m:02d}-01')"
                     f" TO ('2025-{m + 1:02d}-01')")
    conn.execute("CREATE TABLE c_default PARTITION OF c DEFAULT")
    conn.execute("INSERT INTO c (d) VALUES ('2025-07-03'), ('2024-01-01')")
    r = cli("--dsn", db.dsn, "check", "c", "--now", "2025-06-10")
    assert r.returncode == 1 and "no pgcleave policy" in r.stdout
    assert cli("--dsn", db.dsn, "config", "c", "--premake", "2", "--retention", "3 months"
               ).returncode == 0
    r = cli("--dsn", db.dsn, "check", "--now", "2025-06-10", "--max-partitions", "5")
    assert r.returncode == 1
    kinds = sorted(line.split(": ")[1] for line in r.stdout.splitlines())
    assert kinds == ["default-rows", "late-rows", "overdue", "premake", "too-many"], r.stdout
    p = cli("--dsn", db.dsn, "check", "--now", "2025-06-10", "--format", "prometheus")
    assert p.returncode == 1
    assert 'pgcleave_default_rows{table="public.c"} 2' in p.stdout
    assert 'pgcleave_default_late_rows{table="public.c"} 1' in p.stdout
    assert 'pgcleave_premake_periods_ahead{table="public.c"} 0' in p.stdout
    assert 'pgcleave_retention_overdue_partitions{table="public.c"} 2' in p.stdout
    assert "pgcleave_check_ok 0" in p.stdout
    assert cli("--dsn", db.dsn, "maintain", "--now", "2025-06-10").returncode == 0
    r = cli("--dsn", db.dsn, "check", "--now", "2025-06-10")
    assert r.returncode == 1 and r.stdout.count("\n") == 1 and "late-rows" in r.stdout
    s = cli("--dsn", db.dsn, "maintain", "--print-schedule")
    assert "* * * * *" in s.stdout and "kind: CronJob" in s.stdout
    crontab = s.stdout.split("# Kubernetes")[0]
    assert "\\\n" not in crontab  # crontab knows no line continuation
    assert "pgcleave check" in crontab and "|| logger" in crontab


def test_print_schedule_covers_django_celery_and_systemd(cli):
    s = cli("maintain", "--print-schedule", "orders")
    assert s.returncode == 0, s.stderr
    assert "python manage.py pgcleave --quiet maintain orders >> /var/log" in s.stdout
    assert 'call_command("pgcleave", "--quiet", "maintain", \'orders\')' in s.stdout
    assert '"schedule": 60.0' in s.stdout and "beat_schedule" in s.stdout
    assert "OnCalendar=minutely" in s.stdout
    assert "ExecStart=/usr/local/bin/pgcleave --quiet maintain orders" in s.stdout


def test_a_split_killed_beside_a_default_is_named_with_its_job(db: Any, conn: Any,
                                                                cli: Any) -> None:
    """A split killed once its CHECK is on the DEFAULT (the CHECK that lets the swap's ATTACH
    skip scanning it): `check` names the CHECK, the job and the commands that clear it, exits
    1; after rollback it is clean again. A CHECK of that name no job owns is reported too."""
    from tests.test_reslice_default import _killed

    conn.execute("CREATE TABLE sp (id bigserial, d date NOT NULL, PRIMARY KEY (id, d))"
                 " PARTITION BY RANGE (d)")
    for m in range(1, 7):
        conn.execute(f"CREATE TABLE sp_{m} PARTITION OF sp FOR VALUES FROM ('2025-{m:02d}-01')"
                     f" TO ('2025-{m + 1:02d}-01')")
    conn.execute("CREATE TABLE sp_default PARTITION OF sp DEFAULT")
    conn.execute("INSERT INTO sp (d) SELECT '2025-01-01'::date + i % 180"
                 " FROM generate_series(1, 1800) i")
    d = ("--dsn", db.dsn)
    assert cli(*d, "config", "sp", "--interval", "1 month", "--premake", "0").returncode == 0
    check = ("check", "sp", "--now", "2025-03-10")
    r = cli(*d, *check)
    assert r.returncode == 0 and "no problem" in r.stdout, r.stdout
    oid = conn.execute("SELECT 'sp_3'::regclass::oid").fetchone()[0]

    _killed(cli, d, ["split", "sp_3", "--at", "2025-03-16"], "carve-exclude-default")
    job = conn.execute("SELECT max(id) FROM pgcleave.jobs").fetchone()[0]
    assert conn.execute("SELECT state FROM pgcleave.jobs WHERE id = %s", [job]).fetchone() == (
        "running",)
    r = cli(*d, *check)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.splitlines() == [
        f"public.sp: residue: CHECK pgcleave_span_{oid} on the DEFAULT sp_default (it refuses "
        "the rows of the span being re-cut once one of their partitions is detached): left by "
        f"job {job} (split), unfinished; `pgcleave resume {job}` finishes the job and drops it, "
        f"`pgcleave rollback {job}` drops it"], r.stdout
    # while a process runs the job (holds its table's advisory lock), it is no finding
    with db.connect() as other:
        other.execute("SELECT pg_advisory_lock(hashtextextended('pgcleave:' || target, 0))"
                      " FROM pgcleave.jobs WHERE id = %s", [job])
        r = cli(*d, *check)
        assert r.returncode == 0 and "no problem" in r.stdout, r.stdout
    p = cli(*d, *check, "--format", "prometheus")
    assert p.returncode == 1 and 'pgcleave_check_problems{table="public.sp"} 1' in p.stdout
    assert cli(*d, "rollback", str(job)).returncode == 0
    r = cli(*d, *check)
    assert r.returncode == 0 and "no problem" in r.stdout, r.stdout
    assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conrelid = "
                        "'sp_default'::regclass AND contype = 'c'").fetchone() == (0,)

    # one that no unfinished job owns (its journal rows deleted by hand, say)
    conn.execute("ALTER TABLE sp_default ADD CONSTRAINT pgcleave_span_1 CHECK (d < '2025-01-01'"
                 " OR d >= '2025-07-01') NOT VALID")
    r = cli(*d, *check)
    assert r.returncode == 1 and "no unfinished job owns" in r.stdout, r.stdout
    assert "ALTER TABLE sp_default DROP CONSTRAINT pgcleave_span_1" in r.stdout
    conn.execute("ALTER TABLE sp_default DROP CONSTRAINT pgcleave_span_1")
    assert cli(*d, *check).returncode == 0
