"""``TEST_RUNNER = "pgcleave.django.test.PartitionedTestRunner"``: after Django creates the test
databases (and runs the migrations), the tables in ``PGCLEAVE_TEST_PARTITIONS`` are partitioned
the way production's are, so the test suite runs against partitioned tables::

    PGCLEAVE_TEST_PARTITIONS = {
        "shop_order": {"by": "range(scheduled_at)", "interval": "1 month"},
    }

Tables the migrations partition already (``PartitionTable``) are left as they are. The
conversion is strict (see ``pgcleave.testing.partitioned``): a test that writes a row no
partition accepts fails, and the error names the partition to add and how.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connections
from django.test.runner import DiscoverRunner

from ..connection import connect
from ..errors import PgcleaveError
from ..testing.partitioned import convert, explain_missing_partition
from . import dsn_from_settings

__all__ = ["PartitionedTestRunner", "explain_missing_partitions", "partition_test_databases"]


def explain_missing_partitions(alias: str = "default") -> None:
    """Make "no partition of relation ... found for row" on connection ``alias`` an
    ``IntegrityError`` that names the missing partition and the fix (an execute wrapper)."""
    conn = connections[alias]

    def wrapper(execute: Callable[..., Any], sql: str, params: Any, many: bool,
                context: dict[str, Any]) -> Any:
        try:
            return execute(sql, params, many, context)
        except IntegrityError as exc:
            if "no partition of relation" not in str(exc):
                raise
            # Asked on a connection of its own: the test's transaction is aborted.
            try:
                with connect(dsn_from_settings(conn.settings_dict), purpose="hint") as c:
                    msg = explain_missing_partition(c, exc)
            except PgcleaveError:
                msg = explain_missing_partition(None, exc)
            if msg is None:
                raise
            raise IntegrityError(f"{msg}\n(PostgreSQL: {exc})") from exc

    if not any(getattr(w, "_pgcleave", False) for w in conn.execute_wrappers):
        wrapper._pgcleave = True  # type: ignore[attr-defined]
        conn.execute_wrappers.append(wrapper)


def partition_test_databases(config: dict[str, dict[str, Any]] | None = None,
                             aliases: list[str] | None = None) -> list[str]:
    """Partition the test databases' tables (``config`` defaults to
    ``settings.PGCLEAVE_TEST_PARTITIONS``); returns what was done."""
    config = config if config is not None else getattr(settings, "PGCLEAVE_TEST_PARTITIONS", {})
    done: list[str] = []
    for alias in aliases or list(connections):
        conn = connections[alias]
        if conn.vendor != "postgresql":
            continue
        if config:
            conn.close()  # pgcleave's own connections do the work; reconnect afterwards
            done += convert(dsn_from_settings(conn.settings_dict), config)
        explain_missing_partitions(alias)
    return done


class PartitionedTestRunner(DiscoverRunner):  # type: ignore[misc]
    """A ``DiscoverRunner`` that partitions the test databases after creating them."""

    def setup_databases(self, **kwargs: Any) -> Any:
        old = super().setup_databases(**kwargs)
        aliases = kwargs.get("aliases")
        for line in partition_test_databases(aliases=sorted(aliases) if aliases else None):
            if self.verbosity >= 1:
                print(f"pgcleave: {line}")
        return old
