"""The parameters of carve's actions (``carve_run.py``), as journaled: what the planner
(``carve.py``) fills and the actions read back, a TypedDict per action."""

from __future__ import annotations

from typing import NotRequired, TypedDict


# -- the parameters of carve's actions (carve_run.py), as journaled ----------------------------
class CopyParams(TypedDict):
    copy: str  # the bulk INSERT ... SELECT
    index: list[str]  # every index statement (shown; jobs of 0.1.0 before leaf_jobs ran these)
    leaf_jobs: NotRequired[list[tuple[str, list[str]]]]  # (leaf, its index + ANALYZE statements)
    index_top: NotRequired[list[str]]  # the holder's indexes, attaching the leaves' ones
    replay: list[str]  # SET LOCALs, then the statements that apply the key log
    catchup_rows: int
    begun: str  # guard: true once the swap has begun


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
