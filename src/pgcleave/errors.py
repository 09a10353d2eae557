"""Typed errors. Each says what is wrong, what to do, and whether retrying can help.

The CLI maps each class to its own exit code, so scripts and cron jobs can tell a refusal
(bad input, nothing changed) from lock contention (try again later) from a failure. Exit code 7
is no error: ``pgcleave audit`` found a warning (``ops.audit.FINDINGS_EXIT``), for CI.
"""

from __future__ import annotations

from typing import Any


class PgcleaveError(Exception):
    """Base class. ``hint`` names the fix; ``retryable`` tells whether running again can help."""

    exit_code = 1
    retryable = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nhint: {self.hint}"


class UsageError(PgcleaveError):
    """The command line itself is wrong (unknown option, malformed value)."""

    exit_code = 2


class Refused(PgcleaveError):
    """The request was understood and checked, and cannot be done as asked. Nothing changed."""

    exit_code = 3


class NotFound(Refused):
    """A table, column, job or server named by the user does not exist."""


class ConfirmationRequired(Refused):
    """The operation changes behaviour the user must accept; rerun with --yes."""


class Busy(Refused):
    """Another pgcleave run holds the advisory lock of this table."""

    retryable = True


class LockContention(PgcleaveError):
    """A lock could not be taken within the retry budget. Nothing of the failed step is applied."""

    exit_code = 4
    retryable = True


class Overloaded(PgcleaveError):
    """A bulk phase stopped because the database was over ``--critical-load``. The work done so
    far is kept; ``pgcleave resume`` continues the job."""

    exit_code = 6
    retryable = True

    def __init__(self, message: str, *, hint: str | None = None, job_id: int | None = None
                 ) -> None:
        super().__init__(message, hint=hint)
        self.job_id = job_id


class ConnectionFailed(PgcleaveError):
    """The server could not be reached or refused the login."""

    exit_code = 5
    retryable = True


class StepFailed(PgcleaveError):
    """A step of a job failed; the job stays resumable with ``pgcleave resume``."""

    exit_code = 1

    def __init__(self, message: str, *, job_id: int | None = None, hint: str | None = None,
                 sqlstate: str | None = None, diag: Any = None) -> None:
        super().__init__(message, hint=hint)
        self.job_id = job_id
        #: The SQLSTATE and ``psycopg.errors.Diagnostic`` of the server error that caused the
        #: failure, when there was one (the original exception is also ``__cause__``).
        self.sqlstate = sqlstate
        self.diag = diag
