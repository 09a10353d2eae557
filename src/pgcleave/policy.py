"""Per-table partitioning policy, stored in ``pgcleave.policies``: the one source of truth that
every machine running ``maintain`` shares. ``partition`` writes it; ``config`` changes it or
adopts a table partitioned by hand or by another tool; ``maintain``, ``check`` and ``status``
read it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from .connection import Connection
from .journal import register_migration, schema_exists
from .names import QualifiedName

register_migration("policy:policies", """
    CREATE TABLE pgcleave.policies (
        table_schema     text NOT NULL,
        table_name       text NOT NULL,
        strategy         text NOT NULL CHECK (strategy IN ('range', 'list', 'hash')),
        key_column       text NOT NULL,
        interval         text,
        premake          integer NOT NULL DEFAULT 3 CHECK (premake >= 0),
        retention        text,
        retention_action text NOT NULL DEFAULT 'detach'
                         CHECK (retention_action IN ('detach', 'archive', 'drop')),
        archive_dir      text,
        time_zone        text NOT NULL DEFAULT 'UTC',
        sub_strategy     text CHECK (sub_strategy IN ('range', 'list', 'hash')),
        sub_key_column   text,
        sub_interval     text,
        placement        jsonb NOT NULL DEFAULT '[]',
        options          jsonb NOT NULL DEFAULT '{}',
        updated_at       timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (table_schema, table_name)
    );
""")


@dataclass
class Policy:
    table: QualifiedName
    strategy: str
    key_column: str
    interval: str | None = None
    premake: int = 3
    retention: str | None = None
    retention_action: str = "detach"
    archive_dir: str | None = None
    time_zone: str = "UTC"
    sub_strategy: str | None = None
    sub_key_column: str | None = None
    sub_interval: str | None = None
    placement: list[dict[str, Any]] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)

    _COLUMNS = ("strategy", "key_column", "interval", "premake", "retention",
                "retention_action", "archive_dir", "time_zone", "sub_strategy",
                "sub_key_column", "sub_interval", "placement", "options")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["table"] = self.table.quoted
        return d

    def upsert(self) -> sql.Composed:
        """The statement that stores this policy: a plan step runs it, so the policy changes
        in the same transaction as the partitioning it describes."""
        values = [getattr(self, c) for c in self._COLUMNS]
        lits = [sql.Literal(Jsonb(v)) if c in ("placement", "options") else sql.Literal(v)
                for c, v in zip(self._COLUMNS, values, strict=True)]
        cols = sql.SQL(", ").join(map(sql.Identifier, self._COLUMNS))
        return sql.SQL(
            "INSERT INTO pgcleave.policies (table_schema, table_name, {cols}) VALUES ({s}, {n}, "
            "{vals}) ON CONFLICT (table_schema, table_name) DO UPDATE SET ({cols}, updated_at) = "
            "({excluded}, now())").format(
            cols=cols, s=sql.Literal(self.table.schema), n=sql.Literal(self.table.name),
            vals=sql.SQL(", ").join(lits),
            excluded=sql.SQL(", ").join(sql.SQL("EXCLUDED.{}").format(sql.Identifier(c))
                                        for c in self._COLUMNS))

    @staticmethod
    def delete(table: QualifiedName) -> sql.Composed:
        return sql.SQL("DELETE FROM pgcleave.policies WHERE table_schema = {} AND table_name = {}"
                       ).format(sql.Literal(table.schema), sql.Literal(table.name))


def load(conn: Connection, table: QualifiedName) -> Policy | None:
    if not schema_exists(conn) or not _has_table(conn):
        return None
    cols = sql.SQL(", ").join(map(sql.Identifier, Policy._COLUMNS))
    row = conn.execute(sql.SQL("SELECT {} FROM pgcleave.policies WHERE table_schema = %s AND "
                               "table_name = %s").format(cols), [table.schema, table.name]
                       ).fetchone()
    if row is None:
        return None
    return Policy(table, **dict(zip(Policy._COLUMNS, row, strict=True)))


def load_all(conn: Connection) -> list[Policy]:
    if not schema_exists(conn) or not _has_table(conn):
        return []
    cols = sql.SQL(", ").join(map(sql.Identifier, Policy._COLUMNS))
    rows = conn.execute(sql.SQL("SELECT table_schema, table_name, {} FROM pgcleave.policies "
                                "ORDER BY 1, 2").format(cols)).fetchall()
    return [Policy(QualifiedName(r[0], r[1]), **dict(zip(Policy._COLUMNS, r[2:], strict=True)))
            for r in rows]


def _has_table(conn: Connection) -> bool:
    row = conn.execute("SELECT to_regclass('pgcleave.policies') IS NOT NULL").fetchone()
    return bool(row and row[0])
