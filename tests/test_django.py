"""pgcleave's Django integration with real Django against real servers: a migration partitions a
model's table and migrates back, ``sqlmigrate`` prints the dry run, a Django ORM application
keeps writing during the conversion with nothing lost, ``makemigrations --check`` stays clean,
``manage.py pgcleave`` runs the CLI, and the test runner partitions a test database so a test
with a hard-coded old date fails naming the partition to add."""

from __future__ import annotations

import io
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402

APP_DIR = Path(__file__).parent / "fixtures" / "djangoapp"
NOW = datetime.now(UTC).replace(microsecond=0)


def _configure() -> None:
    if settings.configured:
        return
    sys.path.insert(0, str(APP_DIR))
    settings.configure(
        DATABASES={"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "postgres"}},
        INSTALLED_APPS=["pgcleave.django", "shop"], USE_TZ=True, TIME_ZONE="UTC",
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField", MIGRATION_MODULES={})
    django.setup()


@pytest.fixture
def dj(db: Any) -> Any:
    """Django's default database is the test's fresh database."""
    _configure()
    from django.db import connections

    conn = connections["default"]
    conn.close()
    conn.settings_dict.update(NAME=db.name, HOST=db.server.host, PORT=str(db.server.port),
                              USER=db.server.user, PASSWORD="")
    settings.DATABASES["default"].update(conn.settings_dict)
    yield conn
    conn.close()


def _migrate(target: str, modules: str = "shop.migrations", **kw: Any) -> str:
    from django.core.management import call_command
    from django.test.utils import override_settings

    out = io.StringIO()
    with override_settings(MIGRATION_MODULES={"shop": modules}):
        call_command("migrate", "shop", target, stdout=out, verbosity=1, **kw)
    return out.getvalue()


def _relkind(conn: Any) -> str:
    return conn.execute("SELECT relkind::text FROM pg_class WHERE oid = 'shop_order'::regclass"
                        ).fetchone()[0]


def _names(conn: Any) -> list[tuple[str, str]]:
    return sorted(conn.execute(
        "SELECT 'index', indexrelid::regclass::text FROM pg_index "
        " WHERE indrelid = 'shop_order'::regclass"
        " UNION ALL SELECT 'constraint', conname FROM pg_constraint "
        " WHERE conrelid = 'shop_order'::regclass").fetchall())


def _seed(conn: Any, n: int = 200) -> None:
    conn.execute("INSERT INTO shop_order (country, scheduled_at, cost) SELECT 'GB', "
                 "now() - make_interval(days => g %% 80), g FROM generate_series(1, %s) g", [n])


def _orm_workload(stop: threading.Event, errors: list[str], expected: dict[int, Decimal],
                  seed: int) -> None:
    """create() with its pk, bulk_create, save() moving a row to another month, delete(),
    select_for_update() in atomic(), update_or_create()."""
    from django.db import connection, transaction
    from shop.models import Order

    i = 0
    try:
        while not stop.is_set():
            i += 1
            try:
                o = Order.objects.create(country="GB", cost=i,
                                         scheduled_at=NOW - timedelta(days=(i + seed) % 70))
                assert o.pk is not None
                expected[o.pk] = Decimal(i)
                bulk = Order.objects.bulk_create([
                    Order(country="FR", cost=-k, scheduled_at=NOW - timedelta(days=k * 20))
                    for k in range(3)])
                assert all(b.pk is not None for b in bulk)
                expected.update({b.pk: Decimal(-k) for k, b in enumerate(bulk)})
                o.scheduled_at = o.scheduled_at - timedelta(days=40)  # another month
                o.cost = i + 1000
                o.save()
                expected[o.pk] = Decimal(i + 1000)
                Order.objects.filter(pk=bulk[0].pk).delete()
                del expected[bulk[0].pk]
                with transaction.atomic():
                    locked = Order.objects.select_for_update().get(pk=bulk[1].pk)
                    locked.cost = 7
                    locked.save(update_fields=["cost"])
                expected[bulk[1].pk] = Decimal(7)
                got, created = Order.objects.update_or_create(pk=bulk[2].pk,
                                                              defaults={"cost": 9})
                assert not created and got.pk == bulk[2].pk
                expected[bulk[2].pk] = Decimal(9)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                return
            time.sleep(0.01)
    finally:
        connection.close()


def test_migrate_forward_and_back_with_writers(dj, conn):
    """The migration converts while Django writes; nothing is lost, no write fails; the model
    state is untouched (makemigrations --check is clean); backwards unpartitions."""
    from django.core.management import call_command

    _migrate("0001")
    _seed(conn)
    initial = dict(conn.execute("SELECT id, cost FROM shop_order").fetchall())
    stop, errors = threading.Event(), []
    expected: list[dict[int, Decimal]] = [{}, {}]
    threads = [threading.Thread(target=_orm_workload, args=(stop, errors, expected[k], k))
               for k in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        _migrate("0002")
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert errors == []
    assert sum(len(e) for e in expected) > 20
    assert _relkind(conn) == "p"
    assert dict(conn.execute("SELECT id, cost FROM shop_order").fetchall()) == {
        **initial, **expected[0], **expected[1]}
    assert ("index", "shop_order_country_sched") in _names(conn)
    call_command("makemigrations", "shop", "--check", "--dry-run", stdout=io.StringIO())

    _migrate("0001")
    assert _relkind(conn) == "r"
    assert conn.execute("SELECT count(*) FROM pg_inherits").fetchone()[0] == 0
    assert dict(conn.execute("SELECT id, cost FROM shop_order").fetchall()) == {
        **initial, **expected[0], **expected[1]}


def test_sqlmigrate_prints_the_dry_run(dj, conn, cli, db):
    from django.core.management import call_command

    _migrate("0001")
    out = io.StringIO()
    call_command("sqlmigrate", "shop", "0002", stdout=out)
    dry = cli("--dsn", db.dsn, "partition", "shop_order", "--by", "range(scheduled_at)",
              "--interval", "1 month", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() in out.getvalue()
    assert "BEGIN;\n--" not in out.getvalue()[:20]  # not wrapped: atomic = False
    assert _relkind(conn) == "r"
    # backwards, before the table is partitioned: the command and why there is no plan
    out = io.StringIO()
    call_command("sqlmigrate", "shop", "0002", "--backwards", stdout=out)
    assert "pgcleave unpartition shop_order --yes" in out.getvalue()
    assert "cannot be planned against the database as it is now" in out.getvalue()


def test_refused_inside_a_transaction(dj, conn):
    from django.db import NotSupportedError, connection
    from django.db.migrations.state import ProjectState

    from pgcleave.django.operations import PartitionTable

    _migrate("0001")
    op = PartitionTable(table="shop_order", by="range(scheduled_at)", interval="1 month",
                        confirm=True)
    from django.db import transaction
    with pytest.raises(NotSupportedError, match="atomic = False"), transaction.atomic(), \
            connection.schema_editor(atomic=False) as editor:
        op.database_forwards("shop", editor, ProjectState(), ProjectState())
    assert _relkind(conn) == "r"
    assert op.describe().startswith("pgcleave partition shop_order")
    assert op.deconstruct()[2]["table"] == "shop_order"
    # settings.PGCLEAVE reaches the run: an unknown key is refused before anything changes
    from django.test.utils import override_settings

    from pgcleave.errors import UsageError
    with override_settings(PGCLEAVE={"lock_timeout": 5}), pytest.raises(
            UsageError, match="lock_timeout_ms"), connection.schema_editor(atomic=False) as ed:
        op.database_forwards("shop", ed, ProjectState(), ProjectState())
    assert _relkind(conn) == "r"


def test_manage_py_pgcleave_runs_the_cli(dj, conn):
    from django.core.management import CommandError, call_command

    _migrate("0002")
    out = io.StringIO()
    call_command("pgcleave", "status", "shop_order", stdout=out, stderr=io.StringIO())
    assert "shop_order" in out.getvalue() and "partition" in out.getvalue().lower()
    with pytest.raises(CommandError) as e:
        call_command("pgcleave", "status", "no_such_table", stdout=io.StringIO(),
                     stderr=io.StringIO())
    assert e.value.returncode != 0
    out = io.StringIO()  # pgcleave's own options pass through, as --print-schedule prints them
    call_command("pgcleave", "--quiet", "maintain", "--dry-run", stdout=out,
                 stderr=io.StringIO())
    out = io.StringIO()
    call_command("pgcleave", "--database", "default", "jobs", "--json", stdout=out)
    assert '"operation": "partition"' in out.getvalue()


def test_the_test_runner_finds_a_hard_coded_date_without_partition(dj, conn, capsys):
    """PartitionedTestRunner partitions the test database as production is partitioned; the
    sample test that writes 2001-03-05 fails naming the partition to add and how."""
    from django.test.utils import override_settings

    from pgcleave.django.test import PartitionedTestRunner

    cfg = {"shop_order": {"by": "range(scheduled_at)", "interval": "1 month", "past": 2}}
    with override_settings(MIGRATION_MODULES={"shop": "shop.migrations_ci"},
                           PGCLEAVE_TEST_PARTITIONS=cfg):
        failures = PartitionedTestRunner(verbosity=1, interactive=False).run_tests(
            ["shop.tests_ci"])
    err = capsys.readouterr()
    text = err.out + err.err

    assert failures == 1, text
    assert "pgcleave: shop_order: partitioned by range(scheduled_at)" in text
    assert "test_an_order_from_2001" in text
    assert "no partition of" in text and "shop_order holds the row" in text
    assert "pgcleave add-partition" in text and "--from '2001-03-01" in text
    assert "--to '2001-04-01" in text


def test_copy_conversion_and_unswap_keep_names_and_rename_index_works(dj, conn):
    _migrate("0001", "shop.migrations_copy")
    _seed(conn, 50)
    before = _names(conn)
    _migrate("0002", "shop.migrations_copy")
    assert _relkind(conn) == "p"
    names_after_copy = _names(conn)
    _migrate("0001", "shop.migrations_copy")  # UnpartitionTable: unswap, then unprep
    assert _relkind(conn) == "r"
    assert _names(conn) == before
    _migrate("0002", "shop.migrations_copy")
    assert names_after_copy == before
    _migrate("0003", "shop.migrations_copy")
    assert ("index", "shop_order_cty_sched") in _names(conn)


def test_the_core_imports_neither_framework():
    """pgcleave, its CLI and its operations load without Alembic, SQLAlchemy or Django."""
    import subprocess

    code = ("import sys, pgcleave, pgcleave.cli.main, pgcleave.frameworks, "
            "pgcleave.testing.partitioned; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('alembic', 'sqlalchemy', 'django')))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_as_the_table_owner_with_a_password(sandbox, dj, db, conn):
    """DATABASES names a non-superuser owner that logs in with a scram password (quotes,
    spaces and @ in it): the operations and manage.py pgcleave connect as that role."""
    from django.core.management import call_command
    from psycopg import sql

    role, password = "pgc_django", "dj 'pw' @:/ x"
    sandbox.password_role(role, password)
    conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(db.name),
                                                               sql.Identifier(role)))
    conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(role)))
    dj.close()
    dj.settings_dict.update(USER=role, PASSWORD=password)
    _migrate("0001")
    _seed(conn, 20)
    _migrate("0002")
    assert _relkind(conn) == "p"
    assert conn.execute("SELECT relowner::regrole::text FROM pg_class "
                        "WHERE oid = 'shop_order'::regclass").fetchone()[0] == role
    out = io.StringIO()
    call_command("pgcleave", "jobs", "--json", stdout=out)
    assert '"state": "done"' in out.getvalue()
    _migrate("0001")
    assert _relkind(conn) == "r"
    assert conn.execute("SELECT count(*) FROM shop_order").fetchone()[0] == 20
