"""The app config: ``INSTALLED_APPS = [..., "pgcleave.django"]`` makes ``manage.py pgcleave``
available. It defines no models."""

from __future__ import annotations

from django.apps import AppConfig


class PgcleaveConfig(AppConfig):  # type: ignore[misc]
    name = "pgcleave.django"
    label = "pgcleave"
    verbose_name = "pgcleave"
