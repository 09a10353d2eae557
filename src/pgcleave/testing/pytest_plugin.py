"""A pytest plugin for application test suites: partition the test database's tables the way
production's are, and explain rows no partition accepts.

Enable it with ``-p pgcleave.testing.pytest_plugin`` (or ``pytest_plugins = [...]`` in the
top-level conftest.py) and say where and what::

    # pytest.ini / pyproject [tool.pytest.ini_options]
    pgcleave_dsn = postgresql://app@localhost/app_test      # or $PGCLEAVE_TEST_DSN
    pgcleave_partitions = tests/partitions.toml

    # tests/partitions.toml
    [orders]
    by = "range(created_at)"
    interval = "1 month"

The session fixture ``pgcleave_partitioned`` converts once (after your schema is created: make
your database fixture depend on it, or request it from the fixture that loads the schema) and
returns what it did. Override the fixtures ``pgcleave_dsn`` / ``pgcleave_partitions`` to supply
them from code (pytest-django: the test database's DSN from
``pgcleave.django.dsn_from_settings(connection.settings_dict)``, or use
``pgcleave.django.test.partition_test_databases()`` inside ``django_db_setup``).

A test that fails with "no partition of relation ... found for row" gets a report section
"pgcleave" naming the partition to add and the command that adds it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from ..connection import connect
from .partitioned import convert, explain_missing_partition

__all__ = ["load_partitions", "pgcleave_dsn", "pgcleave_partitioned", "pgcleave_partitions"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("pgcleave_dsn", "DSN of the test database pgcleave partitions "
                  "(default: $PGCLEAVE_TEST_DSN)", default="")
    parser.addini("pgcleave_partitions", "TOML file: one table per section with by, "
                  "interval, strategy, premake, past, default", default="")


def load_partitions(path: str | Path) -> dict[str, dict[str, Any]]:
    """The TOML file's sections as ``{table: {by, interval, ...}}``."""
    with open(path, "rb") as f:
        return {str(k): dict(v) for k, v in tomllib.load(f).items()}


def _dsn(config: pytest.Config) -> str:
    return str(config.getini("pgcleave_dsn") or os.environ.get("PGCLEAVE_TEST_DSN", ""))


@pytest.fixture(scope="session")
def pgcleave_dsn(pytestconfig: pytest.Config) -> str:
    dsn = _dsn(pytestconfig)
    if not dsn:
        raise pytest.UsageError("pgcleave: set pgcleave_dsn in the pytest ini file or "
                                "$PGCLEAVE_TEST_DSN, or override the pgcleave_dsn fixture")
    return dsn


@pytest.fixture(scope="session")
def pgcleave_partitions(pytestconfig: pytest.Config) -> dict[str, dict[str, Any]]:
    path = str(pytestconfig.getini("pgcleave_partitions") or "")
    if not path:
        return {}
    return load_partitions(Path(str(pytestconfig.rootpath)) / path)


@pytest.fixture(scope="session")
def pgcleave_partitioned(pgcleave_dsn: str,
                         pgcleave_partitions: dict[str, dict[str, Any]]) -> list[str]:
    """Partition the configured tables of the test database, once per session."""
    return convert(pgcleave_dsn, pgcleave_partitions)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is None or ("no partition of relation" not in str(call.excinfo.value) \
            and "no partition of relation" not in repr(call.excinfo.value.__cause__)):
        return
    dsn = _dsn(item.config)
    try:
        if dsn:
            with connect(dsn, purpose="hint") as conn:
                msg = explain_missing_partition(conn, call.excinfo.value)
        else:
            msg = explain_missing_partition(None, call.excinfo.value)
    except Exception:  # the hint is a courtesy: never hide the test's own failure
        msg = explain_missing_partition(None, call.excinfo.value)
    if msg:
        report.sections.append(("pgcleave", msg))
