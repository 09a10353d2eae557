"""Connections: ``--dsn`` or ``PGCLEAVE_DSN``, else libpq's own defaults (PG* variables, service
files, .pgpass). Every session carries ``application_name`` so DBAs see it in
``pg_stat_activity``; passwords never reach output or logs (``redact``)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import psycopg
from psycopg import conninfo
from psycopg.rows import TupleRow

from .errors import ConnectionFailed, Refused

APPLICATION_NAME = "pgcleave"

Connection = psycopg.Connection[TupleRow]


@dataclass
class Settings:
    """How pgcleave talks to a server. Shared by the CLI and the library."""

    dsn: str | None = None
    lock_timeout_ms: int = 100
    lock_retry_limit_s: float = 300.0
    statement_timeout_ms: int = 0
    application_name: str = APPLICATION_NAME
    #: Bulk phases size their batches so each batch's transaction lasts about this long (an
    #: application write meeting a row of the batch waits for its commit); 0: fixed sizes.
    batch_time_ms: int = 20
    #: The share of time (percent) a bulk loop works; it rests the remainder between batches
    #: (100: never rests).
    duty_pct: int = 100
    #: ``active=20,lock_waits=5,lag=10s,probe_p95=50ms`` style limits (``throttle.py``): bulk
    #: phases pause over ``max_load`` and stop resumably over ``critical_load``.
    max_load: str | None = None
    critical_load: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def resolved_dsn(self) -> str:
        return self.dsn if self.dsn is not None else os.environ.get("PGCLEAVE_DSN", "")


#: The oldest server pgcleave runs against (its tests cover 15 and 18).
MIN_SERVER_VERSION = 150000


def connect(settings: Settings | str | None = None, *, autocommit: bool = True,
            purpose: str | None = None) -> Connection:
    """Open a connection; raise ``ConnectionFailed`` with the DSN redacted on failure."""
    if settings is None:
        settings = Settings()
    elif isinstance(settings, str):
        settings = Settings(dsn=settings)
    dsn = settings.resolved_dsn()
    app = settings.application_name + (f":{purpose}" if purpose else "")
    try:
        conn = psycopg.connect(dsn, autocommit=autocommit, application_name=app[:63],
                               connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise ConnectionFailed(
            f"cannot connect to {redact(dsn) or 'the default server (libpq defaults)'}: "
            f"{_first_line(redact(str(exc)))}",
            hint="check --dsn or PGCLEAVE_DSN (or the PG* variables), and that the server runs",
        ) from None
    if conn.info.server_version < MIN_SERVER_VERSION:
        version = conn.info.parameter_status("server_version") or str(conn.info.server_version)
        conn.close()
        raise Refused(f"the server runs PostgreSQL {version}; pgcleave needs PostgreSQL "
                      f"{MIN_SERVER_VERSION // 10000} or newer (it is tested on 15 through 18)",
                      hint="upgrade the server; nothing was changed")
    return conn


def redact(text: str) -> str:
    """Hide passwords in DSNs (URL and key=value forms) and error texts."""
    if not text:
        return text
    text = re.sub(r"(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
    text = re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", text)
    return text


def describe_dsn(dsn: str) -> str:
    """A short, password-free description of where a DSN points."""
    try:
        params = conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return redact(dsn)
    params.pop("password", None)
    parts = [f"{k}={params[k]}" for k in ("host", "port", "dbname", "user") if params.get(k)]
    return " ".join(parts) or "libpq defaults"


def _first_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[0] if lines else text
