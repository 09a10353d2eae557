"""``merge``: adjacent range partitions (or list partitions) of one parent become one, online.

The swap method of ``carve`` (DESIGN.md "Carving") run the other way round, with its actions
(``carve.copy``, ``carve.verify``, ``carve.swap``): one new standalone table, created with a
CHECK of the union of the sources' bounds (valid from the start: the table is empty); a
capture trigger on each source logs the primary key of every row written there (a row moving
from one source to another logs its key on both); one bulk ``INSERT ... SELECT`` of every
source in one REPEATABLE READ snapshot; indexes built after it; replays of the key log; a
count and row hash of the sources and of the copy in one snapshot; then one short
transaction under ACCESS EXCLUSIVE (lock_timeout, retried) replays the last keys, detaches
every source and attaches the new table (no scan: its CHECK proves the bound). The sources
are dropped whole afterwards. Nothing is scanned under an exclusive lock; the extra disk is
one copy of the sources.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from psycopg import sql

from .. import journal, preflight
from ..catalog import Partition, TableInfo, relation_exists, snapshot
from ..connection import Connection
from ..ddl import dependents, identity
from ..ddl.bounds import Bound
from ..ddl.capture import key_log_function
from ..ddl.exclusion import run_exclusion, span_exclusion
from ..ddl.parallel import Jobs, resolve_jobs
from ..ddl.standalone import digest_query, hashes_by_type, index_statements, like_source
from ..ddl.tables import collist, insert_columns, overriding
from ..errors import NotFound, Refused
from ..levels import evaluate_bounds
from ..names import QualifiedName, child_name
from ..plan import Lock, LockTaken, Plan, Statement, Step, render
from . import branch
from .carve import (
    CAPTURE_TRIGGER,
    CATCHUP_ROWS,
    FINAL_REPLAY_ROWS,
    MAX_COPY_JOBS,
    ONE,
    SUB_CHECK,
)
from .carve_state import CopyParams, SwapParams, VerifyParams, parallel_copy

__all__ = ["copy_bytes", "merge_steps", "partition_of", "plan_merge", "refuse_unsplittable"]


def partition_of(conn: Connection, name: str) -> tuple[TableInfo, Partition]:
    """The parent's snapshot and the partition ``name`` in it (any level of a two-level
    table: the parent is the partition's own parent)."""
    row = conn.execute("SELECT to_regclass(%s)::oid, (SELECT inhparent::regclass::text FROM "
                       "pg_inherits WHERE inhrelid = to_regclass(%s))", [name, name]).fetchone()
    if row is None or row[0] is None:
        raise NotFound(f"no table {name}", hint="`pgcleave status TABLE` lists its partitions")
    if row[1] is None:
        raise Refused(f"{name} is not a partition",
                      hint="give a partition's name (`pgcleave status TABLE` lists them)")
    info = snapshot(conn, str(row[1]))
    assert info.partitioning is not None
    part = next(p for p in info.partitioning.partitions if p.oid == int(row[0]))
    return info, part


def refuse_unsplittable(info: TableInfo, part: Partition, what: str, *,
                        branches: bool = False) -> None:
    """What neither split nor merge handles, refused before anything changes; ``branches``:
    a branch of a two-level table is re-cut (ops/branch.py), not refused. Split and merge
    work beside a DEFAULT, on list partitions and at either level of a two-level table: the
    hints name what does the job instead."""
    if part.kind == "f":
        raise Refused(f"{part.name} is a foreign partition (on {part.server}): its rows live "
                      f"on another server, it cannot be {what} here",
                      hint=f"bring it back first: pgcleave move {part.name} --to local")
    if part.kind == "p" and not branches:
        # reslice leaves branches as they are; split and merge re-cut them (ops/branch.py)
        raise Refused(f"{part.name} is itself partitioned: a branch of a two-level table "
                      f"cannot be {what}, but it can be split or merged",
                      hint=f"pgcleave split {part.name} (--at, --interval or --values), or "
                           f"pgcleave merge {part.name} B; or re-cut its own partitions: "
                           f"pgcleave reslice {part.name} --interval I")
    if part.is_default:
        assert info.partitioning is not None
        rows = ("--values A,B" if info.partitioning.strategy == "list"
                else "--from A --to B")
        raise Refused(f"{part.name} is the DEFAULT partition: it has no bound to re-cut",
                      hint=f"move rows out of it into a partition of their own: pgcleave "
                           f"carve {info.name} {rows}; the partitions beside it can be split "
                           "and merged")
    if part.detach_pending:
        raise Refused(f"{part.name} is being detached",
                      hint=f"finish it first: pgcleave maintain {info.name}")


def _union(conn: Connection, info: TableInfo, parts: list[Partition]) -> tuple[
        list[Partition], Bound]:
    """The sources in bound order and the one bound they make together; non-adjacent
    ranges (a gap or another partition between them) are refused."""
    p = info.partitioning
    assert p is not None
    if p.strategy == "list":
        vals = [v for x in parts for v in (x.values or [])]
        b = Bound("list", values=[sql.SQL(v) for v in vals if v.upper() != "NULL"],
                  has_null=any(v.upper() == "NULL" for v in vals))
        return parts, b
    if p.strategy != "range":
        raise Refused(f"{info.name} is {p.strategy} partitioned: only range or list "
                      "partitions can be merged")
    oids = {x.oid for x in parts}
    ranges = [rp for rp in evaluate_bounds(conn, p) if rp.part.oid in oids]
    ranges.sort(key=lambda rp: (rp.lo is not None, rp.lo))
    for a, b2 in pairwise(ranges):
        if a.hi is None or b2.lo is None or a.hi != b2.lo:
            raise Refused(f"{a.part.name} ({a.part.bound}) and {b2.part.name} "
                          f"({b2.part.bound}) are not adjacent: merged, they would cover "
                          "a range that is not theirs",
                          hint="merge partitions that follow each other without a gap")
    first, last = Bound.of(ranges[0].part), Bound.of(ranges[-1].part)
    return [rp.part for rp in ranges], Bound("range", first.lower, last.upper)


def plan_merge(conn: Connection, partitions: Sequence[str], *, name: str | None = None,
               catchup_rows: int = CATCHUP_ROWS, jobs: str | int = 1,
               max_rate: float | None = None) -> Plan:
    """Plan merging ``partitions`` (two or more of one parent) into one partition named
    ``name`` (by default the first one's name, by bound); ``jobs``, ``max_rate``: the bulk
    copy's connections and rows per second (``carve_state.parallel_copy``)."""
    if len(partitions) < 2:
        raise Refused("give at least two partitions to merge")
    found = [partition_of(conn, n) for n in partitions]
    info = found[0][0]
    for i2, p2 in found[1:]:
        if i2.name != info.name:
            raise Refused(f"{p2.name} is a partition of {i2.name}, {found[0][1].name} of "
                          f"{info.name}: only partitions of one parent can be merged")
    parts = [p for _, p in found]
    if len({p.oid for p in parts}) != len(parts):
        raise Refused("a partition is named twice")
    for p in parts:
        refuse_unsplittable(info, p, "merged", branches=True)
    shape = _branch_shape(conn, info, parts)
    part = info.partitioning
    assert part is not None
    journal.refuse_unfinished(conn, info.name.quoted)
    parts, bound = _union(conn, info, parts)
    final = info.name.sibling(name) if name else parts[0].name
    if name and relation_exists(conn, final) and final not in {p.name for p in parts}:
        raise Refused(f"{final} already exists", hint="choose another --name")
    tmp = final.sibling(child_name(final.name, "pgcleave_new"))
    if relation_exists(conn, tmp):
        raise Refused(f"{tmp} exists, left over from an earlier run",
                      hint="drop it, or resume/rollback the job that created it")
    infos = [snapshot(conn, p.name.quoted) for p in parts]
    pks = {tuple(i.primary_key.columns) if i.primary_key else None for i in infos}
    if None in pks or len(pks) != 1:
        raise Refused("every partition to merge needs the same primary key: the change "
                      "capture keeps the copy in sync by it",
                      hint="add the primary key on the parent first (pgcleave keys ...)")
    n = resolve_jobs(conn, jobs, limit=MAX_COPY_JOBS)
    steps = merge_steps(conn, info, parts, infos, bound, final, tmp, catchup_rows,
                        copy_jobs=n, max_rate=max_rate, shape=shape)
    size = copy_bytes(conn, parts)
    notes = [f"merge {', '.join(p.name.name for p in parts)} into {final.name} "
             f"({bound.describe()}): copy with change capture, then one short swap",
             *([f"the branches are sub-partitioned by {shape.describe()}: {final.name} is "
                "built so (each partition with a CHECK of the merged bound, so the ATTACH "
                "does not scan), the copy reads the branches through their leaves"]
               if shape is not None else [])]
    notes = [*notes,
             f"needs free space for a copy of the partitions ({size / 1024 / 1024:.1f} MB "
             "with their indexes); free disk: unknown (PostgreSQL shows it to no table owner)"]
    args = {"partitions": [p.name.quoted for p in parts], "name": final.quoted,
            "bound": bound.describe()}
    return Plan("merge", info.name.quoted, args, steps, notes=notes,
                requires=[*preflight.table_change(info.name),
                          *(preflight.owner(p.name) for p in parts)])


def merge_steps(conn: Connection, info: TableInfo, parts: list[Partition],
                infos: list[TableInfo], bound: Bound, final: QualifiedName,
                tmp: QualifiedName, catchup_rows: int = CATCHUP_ROWS,
                suffix: str = "", *, copy_jobs: Jobs = ONE, max_rate: float | None = None,
                shape: branch.Shape | None = None) -> list[Step]:
    """The five steps of a merge (see the module's docstring); ``suffix`` tells them apart
    when one job merges several groups (reslice); ``shape``: the sources are branches of a
    two-level table sub-partitioned so, and the new partition is built so too."""
    part = info.partitioning
    assert part is not None
    src = infos[0]
    assert src.primary_key is not None
    parent = info.name
    col = sql.Identifier(part.key_columns[0])
    t = part.key_types[0]
    cols = collist(insert_columns(src))
    pk = collist(src.primary_key.columns)
    first = parts[0]
    fname = QualifiedName("pgcleave", f"merge_{first.oid}")
    log = QualifiedName("pgcleave", f"merge_{first.oid}_log")
    trig = sql.Identifier(CAPTURE_TRIGGER)
    names = ", ".join(p.name.name for p in parts)
    # Beside a DEFAULT the ATTACH would scan it under ACCESS EXCLUSIVE for rows of the merged
    # bound (PostgreSQL cannot know they were all the sources'): a validated CHECK proves it.
    pre, post = span_exclusion(conn, info, [bound], op="merge", suffix=suffix,
                               tag=str(first.oid),
                               done=sql.SQL("NOT EXISTS (SELECT 1 FROM pg_inherits WHERE "
                                            "inhrelid = {})").format(sql.Literal(first.oid)))

    prepare, leaves, renames, marks = _new_table(conn, src, parts, tmp, final,
                                                 bound.check(col, t), shape,
                                                 identity.partitions_share(info))
    own = ({tmp.sibling(n): o for n, o in branch.origins(shape, *branch.leaf_names(
        conn, shape, tmp, check=False)).items()} if shape else None)
    for fk in info.foreign_keys_out:
        prepare += [sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {} NOT VALID").format(
            leaf.ident, sql.Identifier(fk.name), sql.SQL(fk.definition)) for leaf in leaves]
    prepare += dependents.grants(src, tmp)
    prepare += [
        sql.SQL("CREATE TABLE {} AS SELECT {} FROM ONLY {} WITH NO DATA").format(
            log.ident, pk, first.name.ident),
        key_log_function(fname, log, list(src.primary_key.columns))]
    # Each source's trigger in a transaction of its own (a step of its own, after the
    # prepare): a transaction that holds SHARE ROW EXCLUSIVE on one source while it waits for
    # the next one's can deadlock with a writer moving a row between them, and a server whose
    # deadlock_timeout is under our lock_timeout makes the writer the victim. Holding one lock
    # at a time, pgcleave is never in a lock cycle. OR REPLACE: a resumed step runs them again.
    capture: list[Statement] = [
        sql.SQL("CREATE OR REPLACE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH "
                "ROW EXECUTE FUNCTION {}()").format(trig, p.name.ident, fname.ident)
        for p in parts]
    undo_prepare: list[Statement] = [
        sql.SQL("DO $pgcleave$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid"
                " = {}) THEN RAISE EXCEPTION 'the swap of % has begun: it can only be finished "
                "(pgcleave resume)', {}; END IF; END $pgcleave$").format(
            sql.Literal(first.oid), first.name.literal),
        *[sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(trig, p.name.ident) for p in parts],
        sql.SQL("DROP FUNCTION IF EXISTS {}()").format(fname.ident),
        sql.SQL("DROP TABLE IF EXISTS {}").format(log.ident),
        sql.SQL("DROP TABLE IF EXISTS {}").format(tmp.ident)]
    oids = sql.SQL(", ").join(sql.Literal(p.oid) for p in parts)
    steps = [*pre, Step.sql(
        "merge-prepare" + suffix,
        f"create {tmp.name} (CHECK of {bound.describe()}, no index yet), a key log, and the "
        "capture function that fills it", prepare,
        locks=[LockTaken(Lock.ACCESS_SHARE, f"{names} (CREATE TABLE LIKE, brief)")],
        guard=sql.SQL("SELECT to_regclass({}) IS NOT NULL").format(log.literal),
        undo=undo_prepare), Step.sql(
        "merge-capture" + suffix,
        f"a capture trigger on each of {names}, each in a transaction of its own", capture,
        locks=[LockTaken(Lock.SHARE_ROW_EXCLUSIVE, f"{p.name} (CREATE TRIGGER, brief)")
               for p in parts], transactional=False,
        guard=sql.SQL("SELECT count(*) = {} FROM pg_trigger WHERE tgname = {} AND tgrelid IN "
                      "({})").format(sql.Literal(len(parts)), sql.Literal(CAPTURE_TRIGGER),
                                     oids),
        nothing_to_undo=True)]

    in_log = sql.SQL("({}) IN (SELECT {} FROM {})").format(pk, pk, log.ident)
    over = overriding(src)
    replay: list[Statement] = [
        sql.SQL("SET LOCAL enable_seqscan = off"), sql.SQL("SET LOCAL enable_hashjoin = off"),
        sql.SQL("SET LOCAL enable_mergejoin = off"), sql.SQL("SET LOCAL jit = off"),
        sql.SQL("DELETE FROM {} WHERE {}").format(tmp.ident, in_log),
        *[sql.SQL("INSERT INTO {} ({}){} SELECT {} FROM {} WHERE {}").format(
            tmp.ident, cols, over, cols, branch.source_sql(p), in_log) for p in parts],
        sql.SQL("DELETE FROM {}").format(log.ident)]
    # One statement over every source (one snapshot); wrapped so that carve.copy runs it
    # whole rather than cutting its last source into block ranges.
    copy_sql = sql.SQL("INSERT INTO {} ({}){} SELECT {} FROM ({}) pgcleave_sources").format(
        tmp.ident, cols, over, cols, sql.SQL(" UNION ALL ").join(
            sql.SQL("SELECT {} FROM {}").format(cols, branch.source_sql(p)) for p in parts))
    per_leaf, top = index_statements(conn, src, tmp, leaves, own)
    jobs = [(leaf, [*stmts, sql.SQL("ANALYZE {}").format(leaf.ident)])
            for leaf, stmts in per_leaf]
    index_sql = [x for _, stmts in jobs for x in stmts] + (top if shape else [])
    # the swap has begun (and, being one transaction, is done) once the first source is no
    # partition any more; by oid, which no rename changes
    begun = sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = {})").format(
        sql.Literal(first.oid))
    par, shown, how = parallel_copy(copy_jobs, [(x, sql.SQL(
        "INSERT INTO {} ({}){} SELECT {} FROM ONLY {}").format(
        tmp.ident, cols, over, cols, x.ident)) for x in branch.copy_sources(parts)], tmp, max_rate)
    copy_step = Step.sql(
        "merge-copy" + suffix,
        f"copy the rows of {names} into {tmp.name} {how}, build "
        "and analyze its indexes, then replay the logged keys until few are left",
        [shown or copy_sql, *index_sql, *replay],
        locks=[LockTaken(Lock.ACCESS_SHARE, f"{names} (reads only)")], ddl=False)
    cp = CopyParams(
        copy=render(copy_sql), index=[render(x) for x in index_sql],
        leaf_jobs=[(leaf.quoted, [render(x) for x in stmts]) for leaf, stmts in jobs],
        index_top=[render(x) for x in top] if shape else [],
        replay=[render(x) for x in replay], catchup_rows=catchup_rows,
        begun=render(begun))
    if par:
        cp["parallel"] = par
    steps.append(dataclasses.replace(copy_step, action="carve.copy", params=cp))

    ddl = [sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
        leaf.ident, sql.Identifier(fk.name)) for fk in info.foreign_keys_out for leaf in leaves]
    ddl += [sql.SQL("ANALYZE {}").format(tmp.ident)] if shape else []
    by_type = all(hashes_by_type(conn, p.name) for p in parts)
    count_src = digest_query([p.name for p in parts], only=shape is None, by_type=by_type)
    count_copy = digest_query([tmp], only=shape is None, by_type=by_type)
    verify = Step.sql(
        "merge-verify" + suffix,
        f"validate foreign keys and check in one snapshot (after a replay) that {tmp.name} "
        f"holds exactly the rows of {names} (count and hash of every row)",
        [*ddl, *replay, count_src, count_copy],
        locks=[LockTaken(Lock.SHARE_UPDATE_EXCLUSIVE, tmp.name)], ddl=False)
    steps.append(dataclasses.replace(verify, action="carve.verify", params=VerifyParams(
        ddl=[render(x) for x in ddl], replay=[render(x) for x in replay],
        count_source=render(count_src), count_copies=render(count_copy),
        begun=render(begun))))

    n_set = 4
    # Only what must happen at once: the sources leave, the copy comes in. Their triggers go
    # with them afterwards (nobody writes to a detached source); a source is renamed only when
    # the merged partition takes its name.
    taken = [p for p in parts if p.name == final]
    swap_sql: list[Statement] = [
        *replay[:n_set],
        # the parent first, the order writers lock them in
        sql.SQL("LOCK TABLE ONLY {}, {} IN ACCESS EXCLUSIVE MODE").format(
            parent.ident, sql.SQL(", ").join(p.name.ident for p in parts)),
        *replay[n_set:],
        *[sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent.ident, p.name.ident)
          for p in parts],
        *[sql.SQL("ALTER TABLE {} RENAME TO {}").format(
            p.name.ident, sql.Identifier(child_name(p.name.name, "pgcleave_retired")))
          for p in taken],
        sql.SQL("ALTER TABLE {} RENAME TO {}").format(tmp.ident, sql.Identifier(final.name)),
        sql.SQL("ALTER TABLE {} ATTACH PARTITION {} {}").format(
            parent.ident, final.ident, bound.for_values()), *marks]
    swap = Step.sql(
        "merge-swap" + suffix,
        f"one short transaction: replay the last keys, detach {names}, attach {final.name} "
        f"for {bound.describe()} (no scan: its CHECK proves the bound)", swap_sql,
        locks=[LockTaken(Lock.ACCESS_EXCLUSIVE, str(parent)),
               *(LockTaken(Lock.ACCESS_EXCLUSIVE, str(p.name)) for p in parts)],
        guard=begun, undo=[])
    steps.append(dataclasses.replace(swap, action="carve.swap", params=SwapParams(
        first=[render(x) for x in swap_sql], first_done=render(begun), groups=[],
        replay=[render(x) for x in replay],
        catchup_rows=min(catchup_rows, FINAL_REPLAY_ROWS))))

    drop: list[Statement] = [
        # by oid, and only once detached: a name may have been given to another table since
        sql.SQL("DO $pgcleave$ DECLARE r record; BEGIN FOR r IN SELECT oid FROM pg_class "
                "WHERE oid IN ({}) AND NOT relispartition LOOP EXECUTE format('DROP TABLE %s', "
                "r.oid::regclass); END LOOP; END $pgcleave$").format(oids),
        sql.SQL("DROP TABLE IF EXISTS {}").format(log.ident),
        sql.SQL("DROP FUNCTION IF EXISTS {}()").format(fname.ident),
        _rename_indexes(tmp, final), *renames, *post]
    steps.append(Step.sql(
        "merge-drop-old" + suffix,
        f"drop the detached {names}, the key log and the capture function; "
        f"{final.name}'s indexes take its name", drop,
        locks=[LockTaken(Lock.ACCESS_EXCLUSIVE, f"{names} (detached, unused)")],
        guard=sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM pg_class WHERE oid IN ({})) AND "
                      "to_regclass({}) IS NULL").format(oids, log.literal), undo=[]))
    return steps


def _branch_shape(conn: Connection, info: TableInfo, parts: list[Partition]
                  ) -> branch.Shape | None:
    """The sub-partitioning of branches to merge (ops/branch.py), None for plain partitions;
    a mix of both is refused."""
    kinds = {p.kind for p in parts}
    if "p" not in kinds:
        return None
    if kinds != {"p"}:
        raise Refused("some of these partitions are themselves partitioned and some not: "
                      "merged, they would not pair up",
                      hint="merge branches with branches, plain partitions with plain ones")
    return branch.same_shape(conn, parts)


def _new_table(conn: Connection, src: TableInfo, parts: list[Partition], tmp: QualifiedName,
               final: QualifiedName, check: sql.Composable, shape: branch.Shape | None,
               shared: bool = False
               ) -> tuple[list[Statement], list[QualifiedName], list[Statement], list[Statement]]:
    """The merged table (a branch shaped like the sources when ``shape``), its leaves, and
    the renames that give the leaves names derived from ``final`` once the sources (whose
    leaves may hold those names) are dropped; a name another table holds is refused now,
    not found taken after the swap. ``shared`` (17+, an identity the partitions share): the
    swap attaches each leaf again so it is marked too (``identity.mark_partitions``), a CHECK
    of its bound proving it; these statements come last."""
    if shape is None:
        return like_source(src, tmp, check, indexes=False), [tmp], [], []
    stmts = like_source(src, tmp, check, indexes=False, partition_by=sql.SQL("{} ({})").format(
        sql.SQL(shape.strategy.upper()), sql.Identifier(shape.key)))
    now, dflt = branch.leaf_names(conn, shape, tmp)
    later, dflt2 = branch.leaf_names(conn, shape, final, check=False)
    mine = {x.name for p in parts for x in (p.partitioning.partitions if p.partitioning else [])}
    for n in [*(n for n, _ in later), *([dflt2] if dflt2 else [])]:
        if relation_exists(conn, final.sibling(n)) and final.sibling(n) not in mine:
            raise Refused(f"{final.sibling(n)} already exists: the merged branch "
                          f"{final.name} would name a partition so", hint="choose another --name")
    pairs = [(tmp.sibling(a), tmp.sibling(b), bd) for (a, bd), (b, _) in zip(
        now, later, strict=True)]
    if dflt and dflt2:
        pairs.append((tmp.sibling(dflt), tmp.sibling(dflt2), Bound("default")))
    stmts += [sql.SQL("CREATE TABLE {} PARTITION OF {} {}").format(a.ident, tmp.ident,
                                                                  bd.for_values())
              for a, _, bd in pairs]
    renames: list[Statement] = []
    for a, b, _ in pairs:
        renames += [sql.SQL("ALTER TABLE IF EXISTS {} RENAME TO {}").format(
            a.ident, sql.Identifier(b.name)), _rename_indexes(a, b)]
    if not shared:
        return stmts, [a for a, _, _ in pairs], renames, []
    col, t = sql.Identifier(shape.key), shape.key_type
    stmts += [sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({})").format(
        a.ident, sql.Identifier(SUB_CHECK), bd.check(col, t) if bd.kind != "default" else
        run_exclusion(conn, shape.strategy, [x for _, _, x in pairs if x.kind != "default"],
                      col, t)) for a, _, bd in pairs]
    renames += [sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
        b.ident, sql.Identifier(SUB_CHECK)) for _, b, _ in pairs]
    marks = identity.mark_partitions(final, [(a, bd) for a, _, bd in pairs])
    return stmts, [a for a, _, _ in pairs], renames, list(marks)


def _rename_indexes(tmp: QualifiedName, final: QualifiedName) -> Statement:
    """Indexes made while the table had its temporary name take the final one."""
    return sql.SQL(
        "DO $pgcleave$ DECLARE r record; BEGIN FOR r IN SELECT c.relname FROM pg_index i "
        "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = to_regclass({t}) AND "
        "starts_with(c.relname, {tmp}) LOOP EXECUTE format('ALTER INDEX %I.%I RENAME TO %I',"
        " {s}, r.relname, left({final} || substr(r.relname, length({tmp}) + 1), 63)); "
        "END LOOP; END $pgcleave$").format(
        t=final.literal, tmp=sql.Literal(tmp.name), s=sql.Literal(final.schema),
        final=sql.Literal(final.name))


def copy_bytes(conn: Connection, parts: list[Any]) -> int:
    """Bytes of ``parts`` (tables with their indexes and TOAST): what a copy of them needs."""
    if not parts:
        return 0
    row = conn.execute("SELECT coalesce(sum(pg_total_relation_size(x)), 0) FROM "
                       "unnest(%s::regclass[]) x", [[p.name.quoted for p in parts]]).fetchone()
    return int(row[0]) if row else 0
