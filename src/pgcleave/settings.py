"""How pgcleave talks to a server, as plain data: ``Settings`` and ``redact``. Kept apart from
``connection.py`` so that what needs no server (the command line's options, ``--version``,
``--help``, error messages) imports no driver."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

APPLICATION_NAME = "pgcleave"

#: ``--duty auto``: the share of the time (percent) a bulk loop works while the application is
#: at work (``throttle.Throttle.app_busy``); measured with bench/impact.py.
AUTO_DUTY_PCT = 33


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
    #: (100: never rests). With ``duty_auto`` it rests only while the application is busy.
    duty_pct: int = 100
    duty_auto: bool = False
    #: ``active=20,lock_waits=5,lag=10s,probe_p95=50ms`` style limits (``throttle.py``): bulk
    #: phases pause over ``max_load`` and stop resumably over ``critical_load``.
    max_load: str | None = None
    critical_load: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def resolved_dsn(self) -> str:
        return self.dsn if self.dsn is not None else os.environ.get("PGCLEAVE_DSN", "")


def redact(text: str) -> str:
    """Hide passwords in DSNs (URL and key=value forms) and error texts."""
    if not text:
        return text
    text = re.sub(r"(postgres(?:ql)?://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)
    text = re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", text)
    return text
