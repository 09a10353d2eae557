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
