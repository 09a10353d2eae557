"""How many connections a bulk copy or an index build may use at once (``--jobs``), and the
``maintenance_work_mem`` of builds that run side by side.

There is no portable SQL way to read a server's cores. ``--jobs auto`` takes the smallest of:
``AUTO_MAX``; ``max_parallel_workers`` and ``max_worker_processes`` (what the administrator
allows parallel queries: a fair bound of what the server is meant to run at once); half the
connections still free (``max_connections`` minus the reserved ones minus those open now, less
pgcleave's own journal and throttle connections), leaving the other half to the application;
and, when the server is on this machine (a Unix socket, or localhost), this machine's cores.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TypeVar

from psycopg import sql

from ..connection import Connection
from ..errors import Refused, StepFailed
from ..names import QualifiedName
from .tables import collist

T = TypeVar("T")
R = TypeVar("R")

#: The most connections ``--jobs auto`` picks.
AUTO_MAX = 4

#: pgcleave's own connections besides the copying ones (the job's, the throttle's).
OWN_CONNECTIONS = 2

#: Rows of the sample that cuts a key range into shares (``key_cuts``).
SPLIT_SAMPLE_ROWS = 30000

#: The least ``maintenance_work_mem`` given to one of several builds at once, in kB.
MIN_BUILD_MEM_KB = 64 * 1024

_LIMITS_SQL = (
    "SELECT current_setting('max_parallel_workers')::int,"
    " current_setting('max_worker_processes')::int,"
    " current_setting('max_connections')::int"
    " - current_setting('superuser_reserved_connections')::int"
    " - coalesce(nullif(current_setting('reserved_connections', true), '')::int, 0)"
    " - (SELECT count(*) FROM pg_catalog.pg_stat_activity"
    "    WHERE backend_type = 'client backend')::int")


@dataclass(frozen=True)
class Jobs:
    """The connections a run will use and why (shown in the plan)."""

    n: int
    reason: str
    #: maintenance_work_mem of each of ``n`` index builds at once (kB); None: the server's
    build_mem_kb: int | None = None

    @property
    def build_mem(self) -> str:
        return f"{self.build_mem_kb // 1024} MB" if self.build_mem_kb else "the server's"


def _local(conn: Connection) -> bool:
    host = conn.info.host or ""
    return host.startswith("/") or host in ("localhost", "127.0.0.1", "::1")


def resolve_jobs(conn: Connection, jobs: str | int, *, limit: int) -> Jobs:
    """``jobs`` as given (a number, or ``auto``) checked against ``limit`` (the most the
    operation supports) and the connections the server has free."""
    mpw, mwp, free = conn.execute(_LIMITS_SQL).fetchone() or (1, 1, 1)
    free = int(free) - OWN_CONNECTIONS
    if str(jobs) == "auto":
        cands = {"--jobs auto's cap": AUTO_MAX, "max_parallel_workers": int(mpw),
                 "max_worker_processes": int(mwp), "half the free connections": free // 2,
                 "the most this operation uses": limit}
        if _local(conn):
            cands["this machine's cores"] = os.cpu_count() or 1
        name = min(cands, key=lambda k: cands[k])
        n = max(1, cands[name])
        return Jobs(n, f"--jobs auto: {n} (bounded by {name}: {cands[name]})",
                    build_memory_kb(conn, n) if n > 1 else None)
    try:
        n = int(jobs)
    except ValueError:
        raise Refused(f"--jobs {jobs!r} is neither a number nor auto",
                      hint="give --jobs 2, or --jobs auto") from None
    if n < 1 or n > limit:
        raise Refused(f"--jobs {n} is out of range: 1 to {limit}",
                      hint=f"give at most --jobs {limit}, or --jobs auto")
    if n > 1 and n > free:
        raise Refused(f"--jobs {n} needs {n} connections and the server has {max(free, 0)} "
                      "free (max_connections, less those open and reserved); nothing was "
                      "changed", hint="give fewer --jobs, or --jobs auto")
    return Jobs(n, f"--jobs {n}", build_memory_kb(conn, n) if n > 1 else None)


def build_memory_kb(conn: Connection, builds: int) -> int:
    """``maintenance_work_mem`` for each of ``builds`` index builds at once: the server's
    setting shared between them (so together they use what one build would), but never less
    than ``MIN_BUILD_MEM_KB`` nor more than the setting."""
    row = conn.execute("SELECT setting::bigint FROM pg_catalog.pg_settings"
                       " WHERE name = 'maintenance_work_mem'").fetchone()
    total = int(row[0]) if row else MIN_BUILD_MEM_KB
    return max(min(total, MIN_BUILD_MEM_KB), total // max(builds, 1))


@dataclass(frozen=True)
class BlockLayout:
    """Where a table's rows lie now, as a copy in block ranges (TID range scans) needs it."""

    #: its size in blocks (what the ranges cover)
    blocks: int
    #: rows per block as the planner estimates them (100 when it has no estimate): how many
    #: blocks make a range of about the rows wanted
    per_block: float
    #: its file: a rewrite (VACUUM FULL, CLUSTER) gives a new one and renumbers every TID
    filenode: int


def block_layout(conn: Connection, table: str) -> BlockLayout:
    """``table``'s ``BlockLayout`` now (``table`` quoted, as ``to_regclass`` reads it)."""
    row = conn.execute(
        "SELECT pg_relation_size(oid) / current_setting('block_size')::bigint, reltuples,"
        " relpages, pg_relation_filenode(oid) FROM pg_class WHERE oid = to_regclass(%s)",
        [table]).fetchone()
    if row is None:
        raise StepFailed(f"{table} is gone: the copy cannot go on")
    tuples, pages = float(row[1] or 0), int(row[2] or 0)
    return BlockLayout(int(row[0]), tuples / pages if tuples > 0 and pages > 0 else 100.0,
                       int(row[3]))


def block_shares(blocks: int, n: int) -> list[tuple[int, int | None]]:
    """``n`` contiguous block ranges ``[lo, hi)`` covering a table of ``blocks`` blocks, the
    last one open-ended (``hi`` None: to the end, rows added at the end included)."""
    n = max(1, min(n, max(blocks, 1)))
    return [(blocks * i // n, blocks * (i + 1) // n if i + 1 < n else None) for i in range(n)]


def run_threads(work: Sequence[Callable[[threading.Event], None]], *,
                report: Callable[[], None] = lambda: None, name: str = "pgcleave-job",
                stop: threading.Event | None = None) -> None:
    """Run each of ``work`` in its own thread (each gets the run's ``stop`` event and should
    stop at its next batch once it is set). The first error sets ``stop`` and is raised here
    once every thread has ended; ``report`` is called about twice a second meanwhile."""
    stop = stop or threading.Event()
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(fn: Callable[[threading.Event], None]) -> None:
        try:
            fn(stop)
        except BaseException as exc:  # handed to the caller's thread, which raises it
            with lock:
                errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=run, args=(fn,), daemon=True, name=f"{name}-{i + 1}")
               for i, fn in enumerate(work)]
    try:
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(0.5 / max(len(threads), 1))
            report()
    finally:
        stop.set()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]



def run_queue(items: Sequence[T], workers: int, handle: Callable[[R, T, threading.Event], None],
              *, open_worker: Callable[[int], AbstractContextManager[R]],
              report: Callable[[], None] = lambda: None, name: str = "pgcleave-job") -> None:
    """``items`` shared out between ``workers`` threads (``run_threads``, so the same stop and
    error handling), each taking the next item as it frees up: the shares of a parallel copy
    go to whichever connection is done first, so a slow share does not hold the others up.
    Each thread opens what it works with (``open_worker(i)``: its connection) and hands it to
    ``handle(resource, item, stop)``; it takes no further item once ``stop`` is set."""
    queue = list(items)
    lock = threading.Lock()

    def worker(i: int) -> Callable[[threading.Event], None]:
        def go(stop: threading.Event) -> None:
            with open_worker(i) as resource:
                while not stop.is_set():
                    with lock:
                        if not queue:
                            return
                        item = queue.pop(0)
                    handle(resource, item, stop)
        return go

    run_threads([worker(i) for i in range(workers)], report=report, name=name)

def key_cuts(conn: Connection, table: QualifiedName, pk: list[str], n: int
             ) -> list[list[str] | None]:
    """Where to cut ``table``'s primary-key range into ``n`` shares of about the same number
    of rows, whatever the key's type or distribution: quantiles of a sample
    (``TABLESAMPLE SYSTEM``, a few pages; every row when the table is small), as text.
    Share i holds the keys in ``(cuts[i], cuts[i + 1]]``, the first from the beginning (None),
    the last to the end; fewer than ``n`` when the sample has fewer distinct keys."""
    row = conn.execute("SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)",
                       [table.quoted]).fetchone()
    est = int(row[0]) if row and row[0] and row[0] > 0 else 0
    pct = max(SPLIT_SAMPLE_ROWS / est * 100, 0.01) if est > SPLIT_SAMPLE_ROWS else 100.0
    sample = (sql.SQL("TABLESAMPLE SYSTEM ({}) ").format(sql.Literal(pct)) if pct < 100
              else sql.SQL(""))
    # aliased: an output column named like the key would make ORDER BY sort the text
    texts = sql.SQL(", ").join(sql.SQL("{}::text AS {}").format(
        sql.Identifier(c), sql.Identifier(f"pgcleave_k{i}")) for i, c in enumerate(pk))
    rows = conn.execute(sql.SQL("SELECT {t} FROM ONLY {s} {ts}ORDER BY {pk}").format(
        t=texts, s=table.ident, ts=sample, pk=collist(pk))).fetchall()
    cuts: list[list[str] | None] = [None]
    for i in range(1, n):
        k = len(rows) * i // n
        cut = [str(v) for v in rows[k]] if rows and k < len(rows) else None
        if cut is not None and cut != cuts[-1]:
            cuts.append(cut)
    return cuts
