"""Connections: ``--dsn`` or ``PGCLEAVE_DSN``, else libpq's own defaults (PG* variables, service
files, .pgpass). Every session carries ``application_name`` so DBAs see it in
``pg_stat_activity``; passwords never reach output or logs (``redact``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
from psycopg import conninfo
from psycopg.rows import TupleRow

from .errors import ConnectionFailed, Refused
from .settings import Settings as Settings
from .settings import redact as redact

Connection = psycopg.Connection[TupleRow]


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


@contextmanager
def pipelined_transaction(conn: Connection) -> Iterator[Callable[[], None]]:
    """One transaction whose statements travel together (libpq pipeline mode): what runs in
    the block is sent, not waited for, until it calls the ``sync`` it is given (one round trip
    for everything queued, results then readable, errors raised there); the COMMIT travels
    with whatever was queued after the last sync. A bulk batch of lock, copy and saved
    position thus costs two round trips instead of one per statement. On any error the
    transaction is rolled back, so a retry (``retry_locks``) starts clean."""
    try:
        with conn.pipeline() as pipe:
            conn.execute("BEGIN")
            yield pipe.sync
            conn.execute("COMMIT")
    except BaseException:
        if not conn.closed and \
                conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
        raise
