"""The parameters of carve's actions (``carve_run.py``), as journaled: what the planner
(``carve.py``) fills and the actions read back, a TypedDict per action."""

from __future__ import annotations

from typing import NotRequired, TypedDict

from psycopg import sql

from ..ddl.parallel import Jobs
from ..names import QualifiedName
from ..plan import Statement, render


# -- the parameters of carve's actions (carve_run.py), as journaled ----------------------------
class ParallelSource(TypedDict):
    source: str  # a source table (quoted)
    copy: str  # INSERT INTO <the copy> (...) SELECT ... FROM ONLY <source>, without WHERE


class ParallelCopy(TypedDict):
    """``--jobs N`` (N > 1): the bulk copy on N connections sharing one exported snapshot."""

    jobs: int
    sources: list[ParallelSource]
    truncate: str  # empties the copy (a source rewritten between two runs: copy again)
    max_rate: NotRequired[float]  # --max-rate, rows/s over every connection


class CopyParams(TypedDict):
    copy: str  # the bulk INSERT ... SELECT
    index: list[str]  # every index statement (shown; jobs of 0.1.0 before leaf_jobs ran these)
    leaf_jobs: NotRequired[list[tuple[str, list[str]]]]  # (leaf, its index + ANALYZE statements)
    index_top: NotRequired[list[str]]  # the holder's indexes, attaching the leaves' ones
    replay: list[str]  # SET LOCALs, then the statements that apply the key log
    catchup_rows: int
    begun: str  # guard: true once the swap has begun
    parallel: NotRequired[ParallelCopy]  # absent: one statement on the job's connection


class VerifyParams(TypedDict):
    ddl: list[str]  # VALIDATE of foreign keys, ANALYZE of branches
    replay: list[str]
    count_source: NotRequired[str]
    count_copies: NotRequired[str]
    count: NotRequired[str]  # one query for both counts (jobs of earlier versions)
    begun: str


class SwapGroup(TypedDict):
    sql: list[str]  # one short transaction
    done: str  # guard: true once this transaction committed
    what: str


class SwapParams(TypedDict):
    first: list[str]  # detach the source, attach the holder (and more, see _swap_steps)
    first_done: str
    groups: list[SwapGroup]
    replay: NotRequired[list[str]]
    catchup_rows: NotRequired[int]


def parallel_copy(jobs: Jobs, sources: list[tuple[QualifiedName, sql.Composable]],
                  target: QualifiedName, max_rate: float | None
                  ) -> tuple[ParallelCopy | None, Statement | None, str]:
    """The bulk copy of ``sources`` (each with its ``INSERT ... SELECT ... FROM ONLY source``)
    as the plan journals and shows it: with ``jobs.n`` > 1, ``carve.copy`` runs it on that
    many connections, each taking disjoint block ranges of the sources, every range in its
    own transaction that imports one snapshot exported by the job's connection (so together
    they copy what one statement would; each range's commit is journaled with it). Returns
    (the parallel parameters and the statements to show, or None and None: the caller's one
    statement; how the description says it)."""
    if jobs.n <= 1 and not max_rate:
        return None, None, "in one statement (one snapshot)"
    par = ParallelCopy(jobs=jobs.n, sources=[ParallelSource(source=s.quoted, copy=render(c))
                                             for s, c in sources],
                       truncate=render(sql.SQL("TRUNCATE {}").format(target.ident)))
    if max_rate:
        par["max_rate"] = float(max_rate)
    shown = "\n".join([
        f"-- {jobs.n} connection(s) ({jobs.reason}), each copying disjoint block ranges of "
        f"{', '.join(s.quoted for s, _ in sources)}, each range in its own transaction:",
        "SELECT pg_export_snapshot(); -- the job's connection, REPEATABLE READ, held open",
        *(f"BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '$snapshot'; "
          f"{render(c)} WHERE ctid >= '($lo,0)' AND ctid < '($hi,0)'; "
          "INSERT INTO pgcleave.step_parts ...; COMMIT" for _, c in sources)])
    rate = f", at most {max_rate:,.0f} rows/s together" if max_rate else ""
    return par, shown, (f"on {jobs.n} connection(s) at once ({jobs.reason}) in one exported "
                        f"snapshot, block ranges each committed and journaled{rate}")
