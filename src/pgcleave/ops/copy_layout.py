"""Partition by copy into a hash, list, or list-then-range layout (seed 000's LIST/HASH TODO,
seed 001's orders by country and month).

The copy itself is the range copy's (``pgcleave.ops.copy``): ``T_intermediate`` with the old
key plus every partition column as its primary key, the capture trigger, the keyset or
block-range fill, verify, the short swap and the lossless unswap. What differs is planned here:

- *hash* (``--modulus N``): partitions ``T_p0`` .. ``T_p{N-1}`` ``FOR VALUES WITH (MODULUS N,
  REMAINDER r)``; a hash-partitioned table cannot have a DEFAULT, and needs none: every value
  has a remainder.
- *list*: one partition per ``--values`` group (``--values RU --values US,GB``), or one per
  distinct value found in the table, named after its values, plus a DEFAULT for the values not
  listed (new ones the application writes during the copy land there).
- *list then range* (``--then 'range(col)' --interval '1 month'``): each list partition and the
  DEFAULT are themselves partitioned by range, with partitions covering every row already in
  the table (history, not only new rows) plus ``premake`` ahead, and a DEFAULT each, as the
  range copy makes one. ``maintain`` keeps this layout afterwards: the swap stores its policy.

Verify compares old and new per leaf partition (each partition's own constraint applied to the
old table's rows), since hash and list partitions have no ranges to bucket by.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import psycopg
from psycopg import sql

from .. import preflight
from ..catalog import TableInfo, relation_exists, relation_exists_sql, snapshot
from ..connection import Connection
from ..ddl.bounds import Bound, parse_by
from ..ddl.parallel import resolve_jobs
from ..errors import Refused
from ..names import QualifiedName, child_name
from ..plan import Lock, LockTaken, Plan, Step
from ..schemes import key_kind
from . import copy as copy_ops
from .copy_state import MAX_FILL_JOBS, Spec, make_spec, policy_steps
from .copy_swap import swap_steps

AE = Lock.ACCESS_EXCLUSIVE
MAX_MODULUS = 1024
MAX_LIST_PARTITIONS = 100


def _slug(values: list[str]) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", "_".join(values).lower()).strip("_")[:40].strip("_")
    return s or "v"


def _canonical(conn: Connection, info: TableInfo, col: str, value: str) -> str:
    """``value`` as the column's type prints it (the server casts it); refused when it does
    not fit (a text value cut short by ``varchar(n)`` does not fit either)."""
    typ = info.column(col).type
    try:
        with conn.transaction():
            row = conn.execute(sql.SQL("SELECT CAST({} AS {})::text").format(
                sql.Literal(value), sql.SQL(typ))).fetchone()
    except psycopg.Error as exc:
        raise Refused(f"--values {value!r} does not fit column {col} ({typ}): "
                      f"{str(exc).strip().splitlines()[0]}; nothing was changed") from None
    assert row is not None
    out = str(row[0])
    if key_kind(typ) == "text" and out != value:
        raise Refused(f"--values {value!r} does not fit column {col} ({typ}): it would be "
                      f"stored as {out!r}; nothing was changed")
    return out


def list_groups(conn: Connection, info: TableInfo, col: str, values: list[str] | None
                ) -> list[list[str]]:
    """The value groups of a list layout: the user's (``--values``, one group each, values
    separated by commas), checked against the column's type and for values in two groups; or
    each distinct value of the table (a scan of the old table, no lock beyond ACCESS SHARE)."""
    if values:
        groups: list[list[str]] = []
        seen: dict[str, int] = {}
        for gi, text in enumerate(values):
            vals = [v.strip() for v in text.split(",")]
            if not all(vals):
                raise Refused(f"--values {text!r} has an empty value")
            group = []
            for v in vals:
                c = _canonical(conn, info, col, v)
                if c in seen:
                    where = ("twice in one group" if seen[c] == gi
                             else f"in --values {values[seen[c]]!r} and {text!r}")
                    raise Refused(f"value {v!r} of {col} is listed {where}: each value belongs "
                                  "to one partition; nothing was changed")
                seen[c] = gi
                group.append(c)
            groups.append(group)
        return groups
    rows = conn.execute(sql.SQL(
        "SELECT DISTINCT {c}, {c}::text FROM ONLY {t} WHERE {c} IS NOT NULL ORDER BY 1 LIMIT {n}"
    ).format(c=sql.Identifier(col), t=info.name.ident,
             n=sql.Literal(MAX_LIST_PARTITIONS + 1))).fetchall()
    if len(rows) > MAX_LIST_PARTITIONS:
        raise Refused(f"{info.name}.{col} has more than {MAX_LIST_PARTITIONS} distinct values: "
                      "one list partition each would be too many; nothing was changed",
                      hint="group them with --values 'A,B' --values 'C' ... (the values not "
                           "listed go to the DEFAULT partition), or partition by hash")
    if not rows:
        raise Refused(f"{info.name} has no rows to take the list values of {col} from",
                      hint="give them with --values")
    return [[str(r[1])] for r in rows]


def _fresh(conn: Connection, base: QualifiedName, suffix: str, taken: set[str]
           ) -> QualifiedName:
    name = base.sibling(child_name(base.name, suffix))
    n = 2
    while name.name in taken or relation_exists(conn, name):
        name = base.sibling(child_name(base.name, f"{suffix}_{n}"))
        n += 1
    taken.add(name.name)
    return name


def _create_step(parent: QualifiedName, part: QualifiedName, b: Bound, what: str,
                 sub_stmts: list[sql.Composable], sub: str | None) -> Step:
    by = sql.SQL(" PARTITION BY RANGE ({})").format(sql.Identifier(sub)) if sub else sql.SQL("")
    return Step.sql(
        f"partition {part.name}", f"create partition {part} {what}",
        [sql.SQL("CREATE TABLE {} PARTITION OF {} {}{}").format(
            part.ident, parent.ident, b.for_values(), by), *sub_stmts],
        locks=[LockTaken(AE, str(parent))], guard=relation_exists_sql(part),
        undo=[sql.SQL("DROP TABLE {}").format(part.ident)])


def _sub_statements(conn: Connection, spec: Spec, branch: QualifiedName,
                    ranges: list[tuple[Any, Any]], taken: set[str]) -> list[sql.Composable]:
    """The range partitions of one branch (named as ``maintain`` names them: branch_p2025_01)
    and its DEFAULT."""
    assert spec.sub is not None
    col = spec.sub
    typ = spec.column_types[col]
    sub = dataclasses.replace(spec, table=branch, by=col, key_type=typ, kind=key_kind(typ))
    out: list[sql.Composable] = []
    for lo, hi in ranges:
        taken.add(sub.partition_name(lo).name)
        out += copy_ops.partition_statements(sub, branch, lo, hi, has_default=False)
    d = _fresh(conn, branch, "default", taken)
    out.append(sql.SQL("CREATE TABLE {} PARTITION OF {} DEFAULT").format(d.ident, branch.ident))
    return out


def layout_steps(conn: Connection, spec: Spec, premake: int) -> tuple[list[Step], int]:
    """The partitions of the intermediate table (and the number of leaves)."""
    inter = spec.intermediate
    lay = spec.layout
    taken = {spec.intermediate.name, spec.retired.name, spec.default.name,
             *lay.get("names", [])}
    steps: list[Step] = []
    if spec.method == "hash":
        n = int(lay["modulus"])
        for r in range(n):
            b = Bound("hash", modulus=n, remainder=r)
            part = _fresh(conn, spec.table, f"p{r}", taken)
            steps.append(_create_step(inter, part, b, b.describe(), [], None))
        return steps, n
    ranges: list[tuple[Any, Any]] = []
    if spec.sub:
        typ = spec.column_types[spec.sub]
        sub = dataclasses.replace(spec, by=spec.sub, key_type=typ, kind=key_kind(typ))
        ranges = copy_ops.candidate_ranges(conn, sub, source=spec.table, past=None,
                                           future=premake)
    leaves = 0
    for group, pname in zip(lay["groups"], lay["names"], strict=True):
        part = spec.table.sibling(pname)
        b = Bound("list", values=[sql.Literal(v) for v in group])
        subs = _sub_statements(conn, spec, part, ranges, taken) if spec.sub else []
        what = b.describe() + (f" with {len(ranges)} partitions of {spec.interval} and a DEFAULT"
                               if spec.sub else "")
        steps.append(_create_step(inter, part, b, what, subs, spec.sub))
        leaves += len(ranges) + 1 if spec.sub else 1
    subs = _sub_statements(conn, spec, spec.default, ranges, taken) if spec.sub else []
    steps.append(_create_step(inter, spec.default, Bound("default"), "DEFAULT (values not "
                              "listed)", subs, spec.sub))
    leaves += len(ranges) + 1 if spec.sub else 1
    return steps, leaves


def make_layout(conn: Connection, info: TableInfo, *, method: str, col: str,
                modulus: int | None, values: list[str] | None, then: str | None,
                interval: str | None, premake: int) -> tuple[dict[str, Any], str]:
    """Validate the user's layout; return it (as recorded in ``pgcleave.copies``) and the
    second level's interval ('' when there is none)."""
    info.column(col)
    if method == "hash":
        if values:
            raise Refused("--values goes with list partitioning; a hash layout takes --modulus")
        if then is not None:
            raise Refused("--then is supported as list, then range",
                          hint="--by 'list(COLUMN)' --then 'range(COLUMN)' --interval ...")
        if modulus is None:
            raise Refused("hash partitioning needs --modulus N (the number of partitions)",
                          hint="e.g. --modulus 16")
        if not 2 <= modulus <= MAX_MODULUS:
            raise Refused(f"--modulus must be between 2 and {MAX_MODULUS}, got {modulus}")
        if interval is not None:
            raise Refused("--interval applies to range partitioning only")
        return {"method": "hash", "modulus": modulus}, ""
    if method != "list":
        raise Refused(f"no {method} layout for the copy here")
    if modulus is not None:
        raise Refused("--modulus goes with hash partitioning")
    lay: dict[str, Any] = {"method": "list"}
    iv = ""
    if then is not None:
        sub_method, sub = parse_by(then)
        if sub_method != "range":
            raise Refused(f"--then {then!r}: the second level must be range",
                          hint="--then 'range(COLUMN)' --interval '1 month'")
        info.column(sub)
        if sub == col:
            raise Refused("--then must name another column than --by")
        if interval is None:
            raise Refused("--then needs --interval (the second level's width, e.g. '1 month')")
        lay.update(then=sub, premake=premake)
        iv = interval
    elif interval is not None:
        raise Refused("--interval applies to range partitioning only (with list, to the "
                      "second level given by --then)")
    groups = list_groups(conn, info, col, values)
    taken = {child_name(info.name.name, s) for s in ("intermediate", "retired", "default")}
    names = [_fresh(conn, info.name, _slug(g), taken).name for g in groups]
    lay.update(groups=groups, names=names)
    return lay, iv


def plan_partition_layout(conn: Connection, table: str, *, by: str, modulus: int | None = None,
                          values: list[str] | None = None, then: str | None = None,
                          interval: str | None = None, premake: int = 3,
                          batch_size: int = 10000, order: str = "auto",
                          notes: list[str] | None = None, warnings: list[str] | None = None,
                          swap: bool = True, inbound_fks: str = "refuse",
                          jobs: str | int = 1) -> Plan:
    """``pgcleave partition TABLE --by 'hash(col)' --modulus N`` or ``--by 'list(col)'
    [--values ...] [--then 'range(col)' --interval ...]``: prep, partitions, capture, fill,
    analyze, verify, swap and the policy, as one resumable job."""
    method, col = parse_by(by)
    info = snapshot(conn, table)
    layout, iv = make_layout(conn, info, method=method, col=col, modulus=modulus,
                             values=values, then=then, interval=interval, premake=premake)
    spec = make_spec(info, col, iv, "UTC", layout)
    spec.inbound_fks = inbound_fks
    copy_ops.check_fresh(conn, info, spec)
    notes = list(notes or [])
    warnings = list(warnings or [])  # a key that widens: confirmed like every strategy's
    steps, deferred = copy_ops.prep_steps(conn, info, spec, defer_indexes=False, notes=notes,
                                          warnings=warnings)
    parts, leaves = layout_steps(conn, spec, premake)
    steps += parts
    steps.append(copy_ops.capture_step(spec))
    fill = copy_ops.fill_steps(spec, copy_ops.deferred_params(spec, deferred, info),
                               batch_size=batch_size, sleep=0.0, where=None, max_rate=None,
                               order=copy_ops.resolve_order(conn, order),
                               jobs=(n := resolve_jobs(conn, jobs, limit=MAX_FILL_JOBS)))
    # no DEFAULT of leftovers to report: a list DEFAULT holds the values not listed
    steps += [dataclasses.replace(s, params={**s.params, "default": []})
              if s.action == "copy.fill" else s for s in fill]
    steps.append(copy_ops.analyze_step(spec.intermediate))
    steps.append(copy_ops.verify_step(spec))
    if swap:
        steps += swap_steps(conn, info, spec, copy_ops.copied_names(
            info, copy_ops.new_indexes(info, spec, [], [])))
        steps += policy_steps(spec)
    if method == "hash":
        notes.append(f"{layout['modulus']} hash partitions of {spec.table} on {col} (a hash "
                     "layout has no DEFAULT: every value has its partition)")
    else:
        notes.append(f"{len(layout['groups'])} list partitions on {col} plus a DEFAULT for "
                     "the values not listed" + (
                         f", each partitioned by range ({spec.sub}) every {spec.interval}"
                         if spec.sub else "") + f": {leaves} leaf partitions")
        if not values:
            notes.append("the values were taken from the table; values the application writes "
                         "from now on that are not among them go to the DEFAULT partition")
    notes.append(f"{spec.table} is kept as {spec.retired}, in sync, until `pgcleave unprep`")
    args = {"strategy": "copy", "by": by, "modulus": modulus, "values": values, "then": then,
            "interval": interval, "premake": premake, "batch_size": batch_size,
            **({"jobs": n.n} if str(jobs) != "1" else {})}
    return Plan("partition", spec.table.quoted, args, steps, notes=notes,
                warnings=warnings, requires=preflight.table_change(spec.table))


__all__ = ["list_groups", "make_layout", "plan_partition_layout"]
