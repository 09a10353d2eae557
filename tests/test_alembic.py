"""pgcleave's Alembic operations with real Alembic and SQLAlchemy against real servers:
migrations upgrade and downgrade, offline SQL is the dry run, a SQLAlchemy ORM application keeps
writing during the conversion with nothing lost, autogenerate sees no change afterwards."""

from __future__ import annotations

import io
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from psycopg import sql
from sqlalchemy import BigInteger, DateTime, Integer, String, create_engine, delete, insert
from sqlalchemy.engine import URL
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import pgcleave.alembic  # noqa: F401  (registers the operations)

NOW = datetime.now(UTC).replace(microsecond=0)
ROLE = "pgc_alembic"
PASSWORD = "alembic pw '@:/"

MODELS = '''
from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, MetaData, String, Table, text
metadata = MetaData()
orders = Table(
    "orders", metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), primary_key={composite}, nullable=False),
    Column("amount", Integer, nullable=False, server_default=text("0")),
    Column("note", String(40)),
)
{index}
'''

ENV = '''
from alembic import context
from sqlalchemy import create_engine
import pgcleave.alembic  # noqa: F401
from pgcleave.alembic import include_name, include_object
from models import metadata

config = context.config
if context.is_offline_mode():
    context.configure(url=config.attributes["url"], target_metadata=metadata,
                      literal_binds=True, include_name=include_name,
                      include_object=include_object)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(config.attributes["url"])
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata,
                          include_name=include_name, include_object=include_object,
                          include_schemas=False)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
'''

CREATE = '''
revision = "0001"
down_revision = None
from alembic import op
import sqlalchemy as sa
def upgrade():
    op.create_table("orders",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("amount", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.Column("note", sa.String(40)))
    op.execute("""INSERT INTO orders (created_at, amount)
                  SELECT now() - make_interval(days => g % 100), g
                  FROM generate_series(1, 300) g""")
def downgrade():
    op.drop_table("orders")
'''

PARTITION = '''
revision = "0002"
down_revision = "0001"
from alembic import op
def upgrade():
    op.partition_table("orders", by="range(created_at)", interval="1 month"{extra})
def downgrade():
    op.unpartition_table("orders", by="range(created_at)", interval="1 month", confirm=True)
'''

INDEX = '''
revision = "0003"
down_revision = "0002"
from alembic import op
def upgrade():
    op.create_index_online("orders_note_idx", "orders", ["note"])
def downgrade():
    op.drop_index_online("orders_note_idx", "orders")
'''


def _project(tmp: Path, url: str, *, with_index: bool = True, extra: str = ", confirm=True",
             composite: bool = False) -> Config:
    (tmp / "versions").mkdir(parents=True, exist_ok=True)
    (tmp / "env.py").write_text(textwrap.dedent(ENV))
    index = 'Index("orders_note_idx", orders.c.note)' if with_index else ""
    (tmp / "models.py").write_text(MODELS.format(composite=composite, index=index))
    (tmp / "script.py.mako").write_text("")
    (tmp / "versions" / "0001_create.py").write_text(CREATE)
    (tmp / "versions" / "0002_partition.py").write_text(PARTITION.format(extra=extra))
    if with_index:
        (tmp / "versions" / "0003_index.py").write_text(INDEX)
    import sys
    if str(tmp) not in sys.path:
        sys.path.insert(0, str(tmp))
    sys.modules.pop("models", None)
    cfg = Config()
    cfg.set_main_option("script_location", str(tmp))
    cfg.attributes["url"] = url
    return cfg


def _url(db: Any, user: str | None = None, password: str | None = None) -> str:
    return URL.create("postgresql+psycopg", username=user or db.server.user, password=password,
                      host=db.server.host, port=db.server.port, database=db.name
                      ).render_as_string(hide_password=False)


def _relkind(conn: Any, name: str = "orders") -> str | None:
    row = conn.execute("SELECT relkind::text FROM pg_class WHERE oid = to_regclass(%s)",
                       [name]).fetchone()
    return row[0] if row else None


def test_upgrade_downgrade_and_offline_sql_is_the_dry_run(db, conn, cli, tmp_path, monkeypatch):
    cfg = _project(tmp_path, _url(db), with_index=False)
    command.upgrade(cfg, "0001")
    assert _relkind(conn) == "r"

    # offline: with a planning database, the SQL is what `pgcleave ... --dry-run` prints
    monkeypatch.setenv("PGCLEAVE_PLAN_DSN", db.dsn)
    buf = io.StringIO()
    cfg.output_buffer = buf
    command.upgrade(cfg, "0001:0002", sql=True)
    offline = buf.getvalue()
    dry = cli("--dsn", db.dsn, "partition", "orders", "--by", "range(created_at)",
              "--interval", "1 month", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "pgcleave partition orders --by 'range(created_at)' --interval '1 month'" in offline
    assert dry.stdout.strip() in offline
    # outside the migration's transaction, as it runs online
    assert offline.index("COMMIT;") < offline.index("pgcleave partition orders") \
        < offline.index("BEGIN;", offline.index("pgcleave partition orders"))
    assert _relkind(conn) == "r"  # offline changed nothing
    # without one: the command and why there is no SQL, never a guess
    monkeypatch.delenv("PGCLEAVE_PLAN_DSN")
    buf = io.StringIO()
    cfg.output_buffer = buf
    command.upgrade(cfg, "0001:0002", sql=True)
    assert "no SQL is shown without a planning database" in buf.getvalue()
    assert "ATTACH PARTITION" not in buf.getvalue()

    cfg.output_buffer = None
    command.upgrade(cfg, "head")
    assert _relkind(conn) == "p"
    assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 300
    job = conn.execute("SELECT operation, state FROM pgcleave.jobs ORDER BY id DESC").fetchone()
    assert job == ("partition", "done")
    # autogenerate: the partitions and pgcleave's schema are not proposed for dropping
    command.check(cfg)

    command.downgrade(cfg, "0001")
    assert _relkind(conn) == "r"
    assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 300
    assert conn.execute("SELECT count(*) FROM pg_inherits").fetchone()[0] == 0
    command.upgrade(cfg, "head")  # and forward again
    assert _relkind(conn) == "p"


def test_without_the_filter_autogenerate_would_drop_partitions(db, conn, tmp_path):
    """The filter is what keeps autogenerate quiet: the same check without it fails."""
    cfg = _project(tmp_path, _url(db), with_index=False)
    command.upgrade(cfg, "head")
    assert _relkind(conn) == "p"
    env = (tmp_path / "env.py").read_text()
    (tmp_path / "env.py").write_text(env.replace("include_name=include_name", "include_name=None")
                                     .replace("include_object=include_object",
                                              "include_object=None"))
    from alembic.util.exc import AutogenerateDiffsDetected
    with pytest.raises(AutogenerateDiffsDetected, match="orders_"):
        command.check(cfg)


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    amount: Mapped[int] = mapped_column(Integer)
    note: Mapped[str | None] = mapped_column(String(40))


def _orm_workload(url: str, stop: threading.Event, errors: list[str],
                  expected: dict[int, int], seed: int) -> None:
    """Session add/flush (INSERT ... RETURNING id), a bulk insert, updates and deletes."""
    engine = create_engine(url)
    i = 0
    try:
        while not stop.is_set():
            i += 1
            try:
                with Session(engine) as s, s.begin():
                    o = Order(created_at=NOW - timedelta(days=(i * 7 + seed) % 90), amount=i)
                    s.add(o)
                    s.flush()  # RETURNING gives the id
                    assert o.id is not None
                    mine = {o.id: i}
                    ids = s.scalars(insert(Order).returning(Order.id), [
                        {"created_at": NOW - timedelta(days=(i + k) % 60), "amount": -k}
                        for k in range(3)]).all()
                    assert len(ids) == 3
                    mine.update({rid: -k for k, rid in enumerate(ids)})
                    o.amount = i + 1000  # UPDATE by primary key
                    mine[o.id] = i + 1000
                    s.execute(delete(Order).where(Order.id == ids[0]))
                    del mine[ids[0]]
                expected.update(mine)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                return
            time.sleep(0.01)
    finally:
        engine.dispose()


def _owner(sandbox: Any, db: Any) -> str:
    sandbox.password_role(ROLE, PASSWORD)
    with db.connect() as c:
        c.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(db.name),
                                                                sql.Identifier(ROLE)))
        c.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(ROLE)))
        c.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(sql.Identifier(db.name),
                                                                    sql.Identifier(ROLE)))
    return _url(db, ROLE, PASSWORD)


def test_orm_writes_during_the_conversion_as_a_password_owner(sandbox, db, conn, tmp_path):
    """As the table owner (no superuser, scram password in the URL), the migration converts
    while SQLAlchemy ORM sessions write; nothing is lost, no session sees an error."""
    url = _owner(sandbox, db)
    cfg = _project(tmp_path, url)
    command.upgrade(cfg, "0001")
    with psycopg.connect(db.dsn) as c:
        initial = dict(c.execute("SELECT id, amount FROM orders").fetchall())
    stop, errors = threading.Event(), []
    expected: list[dict[int, int]] = [{}, {}]
    threads = [threading.Thread(target=_orm_workload, args=(url, stop, errors, expected[k], k))
               for k in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        command.upgrade(cfg, "head")
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert errors == []
    assert sum(len(e) for e in expected) > 20
    assert _relkind(conn) == "p"
    rows = dict(conn.execute("SELECT id, amount FROM orders").fetchall())
    want = {**initial, **expected[0], **expected[1]}
    assert rows == want
    assert conn.execute("SELECT count(*) FROM pg_inherits").fetchone()[0] >= 2
    assert conn.execute("SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = "
                        "'orders'::regclass AND NOT indisprimary").fetchall() == [
        ("orders_note_idx",)]
    owner = conn.execute("SELECT relowner::regrole::text FROM pg_class WHERE oid = "
                         "'orders'::regclass").fetchone()[0]
    assert owner == ROLE
    command.check(cfg)
    command.downgrade(cfg, "0002")
    assert conn.execute("SELECT count(*) FROM pg_index WHERE indrelid = 'orders'::regclass "
                        "AND NOT indisprimary").fetchone()[0] == 0


def test_pytest_plugin_partitions_the_test_database_and_names_a_missing_partition(
        db, conn, tmp_path):
    """An application's suite with the plugin: its test database is partitioned as
    production is, and a test that writes a hard-coded 2001 date fails with a report section
    that names the partition to add and the command."""
    import os
    import subprocess
    import sys

    conn.execute("CREATE TABLE orders (id bigserial PRIMARY KEY, created_at timestamptz "
                 "NOT NULL, amount int NOT NULL DEFAULT 0)")
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\npgcleave_partitions = partitions.toml\n")
    (tmp_path / "partitions.toml").write_text(
        '[orders]\nby = "range(created_at)"\ninterval = "1 month"\npast = 3\n')
    (tmp_path / "test_app.py").write_text(textwrap.dedent('''
        import psycopg

        def test_an_order_from_2001(pgcleave_partitioned, pgcleave_dsn):
            with psycopg.connect(pgcleave_dsn) as c:
                c.execute("INSERT INTO orders (created_at) VALUES ('2001-03-05 10:00+00')")

        def test_an_order_now(pgcleave_partitioned, pgcleave_dsn):
            assert any("strict" in line for line in pgcleave_partitioned)
            with psycopg.connect(pgcleave_dsn) as c:
                c.execute("INSERT INTO orders (created_at) VALUES (now())")
    '''))
    env = dict(os.environ, PGCLEAVE_TEST_DSN=db.dsn)
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "pgcleave.testing.pytest_plugin",
                        "-p", "no:cacheprovider", "-q", "-c", str(tmp_path / "pytest.ini"),
                        str(tmp_path / "test_app.py")], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=300)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "1 failed, 1 passed" in p.stdout
    assert "pgcleave" in p.stdout and "no partition of orders holds the row" in p.stdout
    assert "pgcleave add-partition orders --from '2001-03-01 00:00:00+00:00' --to " \
           "'2001-04-01 00:00:00+00:00'" in p.stdout
    assert _relkind(conn) == "p"


RUNNER = '''
import sys
from alembic import command
from alembic.config import Config
cfg = Config()
cfg.set_main_option("script_location", sys.argv[1])
cfg.attributes["url"] = sys.argv[2]
command.upgrade(cfg, sys.argv[3])
'''


def test_a_migration_killed_mid_conversion_resumes_when_run_again(db, conn, tmp_path):
    """kill -9 of `alembic upgrade` inside the conversion: the table keeps every row and
    serves writes; running the migration again resumes the job and finishes it."""
    import os
    import subprocess
    import sys

    url = _url(db)
    cfg = _project(tmp_path, url, with_index=False)
    command.upgrade(cfg, "0001")
    (tmp_path / "run.py").write_text(RUNNER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path), os.environ.get("PYTHONPATH", "")]), PGCLEAVE_FAULT="kill-after:2")
    p = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(tmp_path), url, "head"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == -9, p.stderr
    job = conn.execute("SELECT id, state FROM pgcleave.jobs").fetchone()
    assert job[1] == "running"
    assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "0001"
    conn.execute("INSERT INTO orders (created_at, amount) VALUES (now(), -1)")
    assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 301

    del env["PGCLEAVE_FAULT"]
    p = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(tmp_path), url, "head"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert conn.execute("SELECT state FROM pgcleave.jobs WHERE id = %s", [job[0]]
                        ).fetchone()[0] == "done"
    assert conn.execute("SELECT count(*) FROM pgcleave.jobs").fetchone()[0] == 1
    assert _relkind(conn) == "p"
    assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 301
    assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "0002"


ADD = '''
revision = "0003"
down_revision = "0002"
from alembic import op
def upgrade():
    op.add_partition("orders", lower="2040-01-01", upper="2040-02-01", name="orders_2040_01")
    op.set_primary_key_online("orders", ["id", "created_at"], confirm=True)
def downgrade():
    op.drop_partition("orders", "orders_2040_01")
'''


def test_add_partition_and_set_primary_key_online(db, conn, tmp_path):
    cfg = _project(tmp_path, _url(db), with_index=False)
    (tmp_path / "versions" / "0003_add.py").write_text(ADD)
    command.upgrade(cfg, "head")
    assert conn.execute("SELECT pg_get_expr(relpartbound, oid) FROM pg_class "
                        "WHERE relname = 'orders_2040_01'").fetchone()[0] == (
        "FOR VALUES FROM ('2040-01-01 00:00:00+00') TO ('2040-02-01 00:00:00+00')")
    pk = conn.execute("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = "
                      "'orders'::regclass AND contype = 'p'").fetchone()[0]
    assert pk == "PRIMARY KEY (id, created_at)"
    command.check(cfg)
    conn.execute("INSERT INTO orders (created_at) VALUES ('2040-01-05')")
    from pgcleave.errors import Refused
    with pytest.raises(Refused, match="holds rows"):  # nothing is lost on the way back
        command.downgrade(cfg, "0002")
    assert _relkind(conn, "orders_2040_01") == "r"
    conn.execute("DELETE FROM orders WHERE created_at = '2040-01-05'")
    command.downgrade(cfg, "0002")
    assert _relkind(conn, "orders_2040_01") is None


def test_copy_strategy_autogenerate_leaves_out_the_kept_old_table(db, conn, tmp_path):
    cfg = _project(tmp_path, _url(db), with_index=False,
                   extra=', strategy="copy", confirm=True')
    command.upgrade(cfg, "head")
    assert _relkind(conn) == "p"
    assert _relkind(conn, "orders_retired") == "r"
    command.check(cfg)  # neither orders_retired nor the partitions are proposed for dropping


def test_copy_strategy_upgrade_check_and_downgrade(db, conn, tmp_path):
    """strategy="copy": autogenerate also leaves out the kept old table (orders_retired); the
    downgrade swaps back (unswap) and drops the partitioned copy (unprep), every row kept."""
    cfg = _project(tmp_path, _url(db), with_index=False,
                   extra=', strategy="copy", confirm=True')
    command.upgrade(cfg, "head")
    assert _relkind(conn) == "p"
    assert _relkind(conn, "orders_retired") == "r"
    conn.execute("INSERT INTO orders (created_at, amount) VALUES (now(), -5)")
    command.check(cfg)
    command.downgrade(cfg, "0001")
    assert _relkind(conn) == "r"
    assert _relkind(conn, "orders_intermediate") is None
    assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 301
    assert conn.execute("SELECT count(*) FROM orders WHERE amount = -5").fetchone()[0] == 1
