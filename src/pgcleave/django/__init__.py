"""Django integration: add ``"pgcleave.django"`` to ``INSTALLED_APPS``
(``pip install 'pgcleave[django]'``).

- ``pgcleave.django.operations``: migration operations (``PartitionTable``, ``AddPartition``,
  ``AddIndexOnline``, ``SetPrimaryKeyOnline``, ``UnpartitionTable``) that run pgcleave online;
  a migration using them sets ``atomic = False``.
- ``manage.py pgcleave <command> ...``: any pgcleave command against a configured database.
- ``pgcleave.django.test.PartitionedTestRunner``: the test database's tables partitioned as
  production's are (``TEST_RUNNER``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..frameworks import dsn_from_params

#: OPTIONS of a Django PostgreSQL database that are Django's or psycopg's own, not libpq's.
_NOT_LIBPQ = {"isolation_level", "pool", "server_side_binding", "assume_role", "cursor_factory",
              "context", "prepare_threshold"}


def dsn_from_settings(settings_dict: Mapping[str, Any]) -> str:
    """A libpq DSN (password included) from one ``DATABASES`` entry (or a connection's
    ``settings_dict``, which names the test database while tests run)."""
    options = {k: v for k, v in (settings_dict.get("OPTIONS") or {}).items()
               if k not in _NOT_LIBPQ}
    return dsn_from_params({"host": settings_dict.get("HOST"), "port": settings_dict.get("PORT"),
                            "dbname": settings_dict.get("NAME"),
                            "user": settings_dict.get("USER"),
                            "password": settings_dict.get("PASSWORD"), **options})


__all__ = ["dsn_from_settings"]
