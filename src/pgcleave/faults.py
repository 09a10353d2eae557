"""Fault injection for the tests: ``PGCLEAVE_FAULT``, a comma-separated list of
``<kind>:<where>``, makes this process die as ``kill -9`` would (or a step fail) at a chosen
point, so a test can show that a job killed there resumes or rolls back with nothing lost.

The forms the code asks for (each where it happens):

- ``kill-before:STEP``, ``kill-inside:STEP``, ``kill-after:STEP``, ``fail-before:STEP``: around
  a plan's step, STEP its name or 1-based number (``execute``);
- ``kill-in:POINT``: at a named point inside an action (``kill-in:alter-prepared``);
- ``kill-carve-after-ranges:N``, ``kill-fill-after-batches:N``, ``kill-move-after-shares:N``:
  once a parallel copy has committed N of its parts in this run.

One module for them all, so every form is parsed the same way and the kill is the same signal.
"""

from __future__ import annotations

import os
import signal


def _wheres(kind: str) -> list[str]:
    """The ``<where>`` of each ``<kind>:<where>`` in ``PGCLEAVE_FAULT``, in order."""
    out = []
    for part in os.environ.get("PGCLEAVE_FAULT", "").split(","):
        k, _, where = part.partition(":")
        if k == kind:
            out.append(where)
    return out


def injected(kind: str, *points: str) -> str | None:
    """Which of ``points`` ``PGCLEAVE_FAULT`` names for ``kind`` (``fail-before:3``: "3"),
    or None."""
    return next((w for w in _wheres(kind) if w in points), None)


def kill() -> None:
    """Die now, as ``kill -9`` would: no cleanup, no rollback sent, connections cut."""
    os.kill(os.getpid(), signal.SIGKILL)


def kill_at(kind: str, *points: str) -> None:
    """Die now if ``PGCLEAVE_FAULT`` holds ``<kind>:<point>`` for one of ``points``."""
    if injected(kind, *points) is not None:
        kill()


def kill_if_due(kind: str, n: int) -> None:
    """Die now if ``PGCLEAVE_FAULT`` holds ``<kind>:N`` (the first such) and ``n``, the parts
    done so far in this run, has reached N."""
    due = next((int(w) for w in _wheres(kind) if w.isdigit()), None)
    if due is not None and n >= due:
        kill()
