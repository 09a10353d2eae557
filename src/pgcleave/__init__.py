"""pgcleave: partition live PostgreSQL tables online, keep their partitions maintained, and
spread partitions over more servers with postgres_fdw.

The library mirrors the command line: each operation in ``pgcleave.ops`` returns a ``Plan``
(inert, printable with ``plan.render_sql()``), and ``Executor`` runs plans as journaled,
resumable jobs under short lock timeouts.

The names below are imported when first used (PEP 562), so that ``import pgcleave`` (and every
``pgcleave --version``, which imports it) costs nothing of the driver or the operations.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .connection import Settings, connect
    from .errors import (
        Busy,
        ConfirmationRequired,
        ConnectionFailed,
        LockContention,
        NotFound,
        PgcleaveError,
        Refused,
        StepFailed,
        UsageError,
    )
    from .execute import Executor, run_plan
    from .plan import Lock, LockTaken, Plan, Step

    __version__: str

#: Each public name and the module that holds it.
_LAZY = {
    "Settings": "settings", "connect": "connection", "Executor": "execute",
    "run_plan": "execute", "Lock": "plan", "LockTaken": "plan", "Plan": "plan", "Step": "plan",
    **{name: "errors" for name in (
        "Busy", "ConfirmationRequired", "ConnectionFailed", "LockContention", "NotFound",
        "PgcleaveError", "Refused", "StepFailed", "UsageError")},
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("pgcleave")
        except PackageNotFoundError:  # running from a source tree without installing
            value = "0.0.0"
    elif name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "Busy", "ConfirmationRequired", "ConnectionFailed", "Executor", "Lock", "LockContention",
    "LockTaken", "NotFound", "PgcleaveError", "Plan", "Refused", "Settings", "Step",
    "StepFailed", "UsageError", "__version__", "connect", "run_plan",
]
