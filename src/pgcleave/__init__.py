"""pgcleave: partition live PostgreSQL tables online, keep their partitions maintained, and
spread partitions over more servers with postgres_fdw.

The library mirrors the command line: each operation in ``pgcleave.ops`` returns a ``Plan``
(inert, printable with ``plan.render_sql()``), and ``Executor`` runs plans as journaled,
resumable jobs under short lock timeouts.
"""

from importlib.metadata import PackageNotFoundError, version

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
from .execute import Executor, run_plan, use_registry
from .ops.registry import REGISTRY
from .plan import Lock, LockTaken, Plan, Step

# The composition root: every Executor resolves pgcleave's own actions and recovery passes.
use_registry(REGISTRY)

try:
    __version__ = version("pgcleave")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

__all__ = [
    "Busy", "ConfirmationRequired", "ConnectionFailed", "Executor", "Lock", "LockContention",
    "LockTaken", "NotFound", "PgcleaveError", "Plan", "Refused", "Settings", "Step",
    "StepFailed", "UsageError", "__version__", "connect", "run_plan",
]
