"""The way back from ``add-partition`` (a migration's downgrade): drop an *empty* partition.

One short transaction under lock_timeout with retry: lock the partition (ACCESS EXCLUSIVE:
no row can arrive any more), refuse if it holds a row (``EXISTS`` stops at the first one, so
this is no scan), then ``DROP TABLE``, which takes ACCESS EXCLUSIVE on the parent for a
catalog change only. A partition with rows is refused at planning and, should rows arrive
meanwhile, by the step itself: nothing is dropped then.
"""

from __future__ import annotations

from psycopg import sql

from .. import journal, preflight
from ..catalog import snapshot
from ..connection import Connection
from ..errors import NotFound, Refused
from ..plan import Lock, LockTaken, Plan, Step

__all__ = ["plan_drop_partition"]


def plan_drop_partition(conn: Connection, table: str, name: str) -> Plan:
    """Drop partition ``name`` of ``table`` if it is empty."""
    info = snapshot(conn, table)
    if info.partitioning is None:
        raise Refused(f"{info.name} is not partitioned")
    journal.refuse_unfinished(conn, info.name.quoted)
    part = next((p for p in info.partitioning.partitions
                 if name in (p.name.name, p.name.quoted, str(p.name))), None)
    if part is None:
        raise NotFound(f"{info.name} has no partition {name}",
                       hint="`pgcleave status " + str(info.name) + "` lists its partitions")
    if part.kind != "r":
        raise Refused(f"partition {part.name} is not a plain table (foreign or sub-partitioned)",
                      hint="move it back or drop its own partitions first")
    has_rows = conn.execute(sql.SQL("SELECT EXISTS (SELECT FROM {})").format(
        part.name.ident)).fetchone()
    if has_rows and has_rows[0]:
        raise Refused(f"partition {part.name} holds rows; dropping it would lose them",
                      hint="move the rows elsewhere first, or detach it with retention")
    refuse = sql.SQL(
        "DO $$ BEGIN IF EXISTS (SELECT FROM {}) THEN RAISE EXCEPTION "
        "'partition % holds rows: not dropped', {}; END IF; END $$").format(
        part.name.ident, sql.Literal(str(part.name)))
    step = Step.sql(
        "drop-partition", f"drop the empty partition {part.name} of {info.name}",
        [sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(part.name.ident), refuse,
         sql.SQL("DROP TABLE {}").format(part.name.ident)],
        locks=[LockTaken(Lock.ACCESS_EXCLUSIVE, str(part.name)),
               LockTaken(Lock.ACCESS_EXCLUSIVE, str(info.name))],
        guard=sql.SQL("SELECT to_regclass({}) IS NULL").format(part.name.literal))
    return Plan("drop-partition", info.name.quoted, {"partition": str(part.name)}, [step],
                requires=[preflight.owner(info.name)])
