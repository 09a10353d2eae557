"""The CHECK a split or merge beside a DEFAULT partition adds to it (``ddl/exclusion``'s
``span_exclusion``) and drops after its swap, when a killed job left it there: found in the
catalog, with the unfinished job that owns it (the newest whose statements name it).

``check`` and ``status`` report it; the recovery pass (``maintain``, ``resume``, ``rollback``)
drops one that no unfinished job owns any more (its job was deleted by hand, or is done or
rolled back without it): it only restricts what the DEFAULT may hold, so dropping it loses
nothing, while kept it refuses the rows of its span once one of their partitions is detached.
One whose job is unfinished is left to that job's resume or rollback. Here rather than in
``ddl``: ``status`` imports no DDL recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psycopg import errors, sql

from .connection import Connection
from .journal import JOB_ALIVE_SQL
from .names import QualifiedName, quote_ident

#: The name of every such CHECK starts with this and ``_``.
SPAN_CHECK = "pgcleave_span"

#: How long the recovery pass waits for the DEFAULT's lock to drop one (ms): it is never
#: urgent, and the next run tries again.
DROP_LOCK_TIMEOUT_MS = 100

#: The span CHECKs on the relations ``%s`` (oids of DEFAULT partitions): ``(conrelid,
#: conname)``.
CATALOG_SQL = ("SELECT conrelid, conname FROM pg_constraint WHERE conrelid = ANY(%s::oid[])"
               " AND contype = 'c' AND starts_with(conname, %s) ORDER BY conrelid, conname")

#: Every span CHECK on a DEFAULT partition of this database: the DEFAULT's and its parent's
#: schema and name, and the CHECK's.
DATABASE_SQL = (
    "SELECT n.nspname, c.relname, pn.nspname, p.relname, k.conname FROM pg_constraint k"
    " JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
    " JOIN pg_inherits i ON i.inhrelid = c.oid JOIN pg_class p ON p.oid = i.inhparent"
    " JOIN pg_namespace pn ON pn.oid = p.relnamespace WHERE k.contype = 'c'"
    " AND starts_with(k.conname, %s) AND c.relispartition"
    " AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT' ORDER BY 1, 2, 5")

#: For each CHECK name of ``%s`` (a text array), in order: the newest unfinished job whose
#: statements name it (quoted, as a plan writes it), its operation, and whether its process
#: is alive; NULLs when no unfinished job owns it. One statement for all of them.
OWNERS_SQL = (
    "SELECT c.con, o.id, o.operation, o.alive FROM unnest(%s::text[]) WITH ORDINALITY"
    " c(con, i) LEFT JOIN LATERAL (SELECT j.id, j.operation, " + JOB_ALIVE_SQL + " AS alive"
    " FROM pgcleave.jobs j WHERE j.state IN ('running', 'failed') AND EXISTS (SELECT 1"
    " FROM pgcleave.steps s, jsonb_array_elements_text(s.step->'statements') st"
    " WHERE s.job_id = j.id AND strpos(st, '\"' || c.con || '\"') > 0)"
    " ORDER BY j.id DESC LIMIT 1) o ON true ORDER BY c.i")


@dataclass(frozen=True)
class SpanCheck:
    """One span CHECK left on a DEFAULT, and the unfinished job that owns it (None: none)."""

    default: QualifiedName
    constraint: str
    job: int | None = None
    operation: str | None = None
    alive: bool = False

    def message(self) -> str:
        con, dflt = self.constraint, self.default
        if self.job is None:
            return (f"CHECK {con} on the DEFAULT {dflt} is left by a split or merge that no "
                    "unfinished job owns: it refuses the rows of its span once one of their "
                    f"partitions is detached; drop it (`ALTER TABLE {dflt} DROP CONSTRAINT "
                    f"{quote_ident(con)}`; `pgcleave maintain` drops it too)")
        head = (f"CHECK {con} on the DEFAULT {dflt} (it refuses the rows of the span being "
                "re-cut once one of their partitions is detached): left by job "
                f"{self.job} ({self.operation})")
        if self.alive:
            return head + " (the job is still running; it drops it after its swap)"
        return (head + f", unfinished; `pgcleave resume {self.job}` finishes the job and drops "
                f"it, `pgcleave rollback {self.job}` drops it")

    def to_json(self) -> dict[str, Any]:
        return {"default": self.default.quoted, "constraint": self.constraint, "job": self.job,
                "operation": self.operation, "alive": self.alive, "message": self.message()}


def prefix() -> str:
    """The ``starts_with`` argument of the queries (``_`` is no wildcard there)."""
    return f"{SPAN_CHECK}_"


def owned(found: list[tuple[QualifiedName, str]], owners: list[tuple[Any, ...]] | None
          ) -> list[SpanCheck]:
    """``found`` (DEFAULT, CHECK name) with ``OWNERS_SQL``'s rows for their names (None: no
    journal, so no job owns any)."""
    if owners is None:
        return [SpanCheck(d, con) for d, con in found]
    return [SpanCheck(d, con) if o[1] is None else
            SpanCheck(d, con, int(o[1]), str(o[2]), bool(o[3]))
            for (d, con), o in zip(found, owners, strict=True)]


def find(conn: Connection, defaults: dict[int, QualifiedName]) -> list[SpanCheck]:
    """The span CHECKs on ``defaults`` (oid: name) and their owners (``check``: two round
    trips when there is one, none when there is no DEFAULT)."""
    if not defaults:
        return []
    rows = conn.execute(CATALOG_SQL, [list(defaults), prefix()]).fetchall()
    found = [(defaults[int(oid)], str(con)) for oid, con in rows]
    return owned(found, _owners(conn, [con for _, con in found]))


def _owners(conn: Connection, names: list[str]) -> list[tuple[Any, ...]] | None:
    if not names:
        return []
    if conn.execute("SELECT to_regclass('pgcleave.jobs')").fetchone() == (None,):
        return None
    return conn.execute(OWNERS_SQL, [names]).fetchall()


@dataclass(frozen=True)
class Dropped:
    """What the recovery pass did: dropped a span CHECK no unfinished job owned."""

    default: QualifiedName
    constraint: str

    def __str__(self) -> str:
        return (f"CHECK {self.constraint} dropped from the DEFAULT {self.default} (a split's "
                "or merge's that no unfinished job owned)")

    def to_json(self) -> dict[str, str]:
        return {"check": self.constraint, "table": self.default.quoted, "action": "dropped"}


def drop_unowned(conn: Connection) -> list[Dropped]:
    """The recovery pass: drop every span CHECK on a DEFAULT of this database that no
    unfinished job owns, each under a short lock_timeout (one not granted in time waits for
    the next run). Each is asked again holding its table's advisory lock (which every job on
    it holds while it runs; a table a job holds it for is left alone), so a job started since
    the first look is never robbed of its CHECK. Idempotent."""
    rows = conn.execute(DATABASE_SQL, [prefix()]).fetchall()
    found = [(QualifiedName(str(r[0]), str(r[1])), QualifiedName(str(r[2]), str(r[3])),
              str(r[4])) for r in rows]
    if not found:
        return []
    owners = _owners(conn, [con for _, _, con in found])
    dropped = []
    for (dflt, parent, con), sc in zip(found, owned([(d, c) for d, _, c in found], owners),
                                       strict=True):
        if sc.job is None and _drop_one(conn, dflt, parent, con):
            dropped.append(Dropped(dflt, con))
    return dropped


def _drop_one(conn: Connection, dflt: QualifiedName, parent: QualifiedName, con: str) -> bool:
    key = "pgcleave:" + parent.quoted
    got = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", [key]).fetchone()
    if not (got and got[0]):
        return False  # a job runs on the table
    try:
        again = _owners(conn, [con])
        if again and again[0][1] is not None:
            return False
        from .execute import Executor  # the recovery pass runs beside the executor anyway

        # busy: False, and the next run tries again
        return Executor.once_under_lock_timeout(
            conn, DROP_LOCK_TIMEOUT_MS, sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}"
                                                ).format(dflt.ident, sql.Identifier(con)))
    except errors.InsufficientPrivilege:
        return False  # not ours to drop (check names it)
    finally:
        conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", [key])
