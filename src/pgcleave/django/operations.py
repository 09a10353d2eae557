"""Django migration operations that run pgcleave online.

::

    from django.db import migrations
    from pgcleave.django.operations import PartitionTable

    class Migration(migrations.Migration):
        atomic = False  # pgcleave runs its own short transactions and CONCURRENTLY builds
        dependencies = [("shop", "0007_order_scheduled_at")]
        operations = [PartitionTable("Order", by="range(scheduled_at)", interval="1 month",
                                     confirm=True)]

Each names its table by model (``"Order"``, resolved in the migration's app to its
``db_table``) or by ``table="shop_order"``. They run on pgcleave's own connection to the
migration's database (``DATABASES``, password included) through the executor: a journaled job,
every DDL under a short lock_timeout with retry, the same advisory lock as the CLI. Running a
migration again after a crash resumes the unfinished job. Inside a transaction (a migration
without ``atomic = False``) they refuse before changing anything, as Django's own
``AddIndexConcurrently`` does.

The model does not change (``state_forwards`` does nothing: the table keeps its name, columns
and, for the ORM, its ``id``), so ``makemigrations`` proposes nothing afterwards; partitions
are not models. ``sqlmigrate`` prints pgcleave's dry run, planned against the database as it
is now (run it before migrating: the plan depends on the catalog and the rows).

``settings.PGCLEAVE = {"lock_timeout_ms": 200, "lock_retry_limit_s": 600}`` sets what
``--lock-timeout`` / ``--lock-retry-limit`` set on the command line.

Plans that change what the application sees (the primary key must include the partition key;
partitions dropped on the way back) refuse unless ``confirm=True`` (what ``--yes`` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.db import NotSupportedError
from django.db.migrations.operations.base import Operation

from ..frameworks import OnlineOperation, review_sql, run, settings_for
from . import dsn_from_settings

__all__ = ["AddIndexOnline", "AddPartition", "PartitionTable", "SetPrimaryKeyOnline",
           "UnpartitionTable"]


class PgcleaveOperation(Operation):  # type: ignore[misc]
    """Shared by the operations: the table, the run, the refusal inside a transaction."""

    reversible = True
    atomic = False
    reduces_to_sql = True  # sqlmigrate calls database_forwards: it prints the dry run
    elidable = False
    kind = ""

    def __init__(self, model_name: str | None = None, *, table: str | None = None,
                 confirm: bool = False, **options: Any) -> None:
        if (model_name is None) == (table is None):
            raise ValueError(f"{type(self).__name__}: give a model name or table=..., not both")
        self.model_name, self.table, self.confirm = model_name, table, confirm
        self.options = options

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        kwargs: dict[str, Any] = {k: v for k, v in self.options.items() if v is not None}
        if self.table is not None:
            kwargs["table"] = self.table
        if self.confirm:
            kwargs["confirm"] = True
        return type(self).__name__, [self.model_name] if self.model_name else [], kwargs

    def state_forwards(self, app_label: str, state: Any) -> None:
        """Nothing: the model keeps its name, columns and primary key."""

    def _table(self, app_label: str, state: Any) -> str:
        if self.table is not None:
            return self.table
        model = state.apps.get_model(app_label, self.model_name)
        return str(model._meta.db_table)

    def online(self, table: str) -> OnlineOperation:
        return OnlineOperation(self.kind, table, self._forward_options(), self.confirm,
                               self._reverse_options())

    def _forward_options(self) -> dict[str, Any]:
        return dict(self.options)

    def _reverse_options(self) -> dict[str, Any]:
        return {}

    def _apply(self, schema_editor: Any, op: OnlineOperation) -> None:
        conn = schema_editor.connection
        if conn.vendor != "postgresql":
            raise NotSupportedError(f"{type(self).__name__} needs PostgreSQL")
        dsn = dsn_from_settings(conn.settings_dict)
        if schema_editor.collect_sql:  # sqlmigrate
            schema_editor.collected_sql.append(
                f"-- {op.describe()} (pgcleave's dry run, planned now)\n" + review_sql(dsn, op))
            return
        if conn.in_atomic_block:
            raise NotSupportedError(
                f"The {type(self).__name__} operation cannot be executed inside a transaction "
                "(set atomic = False on the migration).")
        run(settings_for(dsn, getattr(settings, "PGCLEAVE", None)), op)

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any,
                          to_state: Any) -> None:
        self._apply(schema_editor, self.online(self._table(app_label, from_state)))

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any,
                           to_state: Any) -> None:
        self._apply(schema_editor, self.online(self._table(app_label, to_state)).reverse())

    def describe(self) -> str:
        what = self.table or self.model_name
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items() if v is not None)
        return f"pgcleave {self.kind} {what}" + (f" ({opts})" if opts else "")

    @property
    def migration_name_fragment(self) -> str:
        return f"pgcleave_{self.kind.replace('-', '_')}_{(self.table or self.model_name or '')}" \
            .lower()


class PartitionTable(PgcleaveOperation):
    """``PartitionTable("Order", by="range(scheduled_at)", interval="1 month",
    strategy="auto")``; backwards: ``UnpartitionTable``."""

    kind = "partition"

    def __init__(self, model_name: str | None = None, *, by: str, interval: str | None = None,
                 strategy: str = "auto", premake: int = 3, table: str | None = None,
                 confirm: bool = False) -> None:
        super().__init__(model_name, table=table, confirm=confirm, by=by, interval=interval,
                         strategy=strategy, premake=premake)


class UnpartitionTable(PgcleaveOperation):
    """Back to a plain table (``unpartition`` after an in-place conversion, ``unswap`` then
    ``unprep`` after a copy); ``by``/``interval`` say how its reverse partitions again."""

    kind = "unpartition"

    def __init__(self, model_name: str | None = None, *, by: str | None = None,
                 interval: str | None = None, strategy: str = "auto", table: str | None = None,
                 confirm: bool = False) -> None:
        super().__init__(model_name, table=table, confirm=confirm, by=by, interval=interval,
                         strategy=strategy)

    def _forward_options(self) -> dict[str, Any]:
        return {}

    def _reverse_options(self) -> dict[str, Any]:
        return dict(self.options)


class AddPartition(PgcleaveOperation):
    """``AddPartition("Order", lower="2025-01-01", upper="2025-02-01")`` or ``values=[...]``,
    without scanning the DEFAULT under ACCESS EXCLUSIVE. Reversible when it has a ``name``:
    backwards drops the partition, only while it is empty (refused if it holds a row)."""

    kind = "add-partition"

    def __init__(self, model_name: str | None = None, *, lower: str | None = None,
                 upper: str | None = None, values: Sequence[str] | None = None,
                 name: str | None = None, table: str | None = None) -> None:
        super().__init__(model_name, table=table, lower=lower, upper=upper,
                         values=list(values) if values else None, name=name)
        self.reversible = name is not None


class AddIndexOnline(PgcleaveOperation):
    """``AddIndexOnline("Order", name="order_country_idx", fields=["country", "scheduled_at"])``:
    CREATE INDEX CONCURRENTLY on each partition, then ATTACH. For an index the model declares
    in ``Meta.indexes``, use it with ``SeparateDatabaseAndState`` (state: ``AddIndex``)."""

    kind = "create-index"

    def __init__(self, model_name: str | None = None, *, name: str, fields: Sequence[str],
                 unique: bool = False, condition: str | None = None, using: str | None = None,
                 table: str | None = None) -> None:
        super().__init__(model_name, table=table, name=name, columns=list(fields),
                         unique=unique or None, where=condition, method=using)

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        name, args, kwargs = super().deconstruct()
        renamed = {"columns": "fields", "where": "condition", "method": "using"}
        return name, args, {renamed.get(k, k): v for k, v in kwargs.items()}


class SetPrimaryKeyOnline(PgcleaveOperation):
    """``SetPrimaryKeyOnline("Order", fields=["id", "scheduled_at"], old_fields=["id"])``: the
    key is built concurrently on each partition, then adopted by the parent. Keep the model's
    ``id`` as its ``primary_key=True`` field: Django needs one column to find a row by."""

    kind = "set-primary-key"

    def __init__(self, model_name: str | None = None, *, fields: Sequence[str],
                 old_fields: Sequence[str] | None = None, keep_old_key: bool = False,
                 table: str | None = None, confirm: bool = False) -> None:
        super().__init__(model_name, table=table, confirm=confirm, columns=list(fields),
                         keep_old_key=keep_old_key or None)
        self.old_fields = list(old_fields) if old_fields else None
        self.reversible = old_fields is not None

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        name, args, kwargs = super().deconstruct()
        kwargs["fields"] = kwargs.pop("columns")
        if self.old_fields:
            kwargs["old_fields"] = self.old_fields
        return name, args, kwargs

    def _reverse_options(self) -> dict[str, Any]:
        return {"columns": self.old_fields} if self.old_fields else {}
