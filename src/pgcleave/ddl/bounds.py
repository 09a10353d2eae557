"""Partition bounds: the one ``range(col)``/``list(col)``/``hash(col)`` parser, ``Bound`` (a
partition's FOR VALUES, its predicate and CHECK), and comparisons the server makes in the key's
own type (overlap, containment, equality), so that text, numbers, timestamps and collations
order exactly as PostgreSQL orders them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from psycopg import sql

from .. import policy as policy_mod
from ..catalog import Partition, TableInfo, relation_exists
from ..connection import Connection
from ..errors import Refused
from ..names import QualifiedName, child_name
from ..schemes import (
    Interval,
    key_kind,
    literal,
    parse_value,
    suffix,
)

_BY_RE = re.compile(r"^\s*(range|list|hash)\s*\(\s*(.+?)\s*\)\s*$", re.I)


# -- small shared helpers (also used by carve) ----------------------------------------------------
def parse_by(text: str) -> tuple[str, str]:
    """``range(created_at)`` -> ("range", "created_at"); a quoted column keeps its case, an
    unquoted one folds to lower case, as PostgreSQL does."""
    m = _BY_RE.match(text)
    if not m:
        raise Refused(f"cannot read --by {text!r}",
                      hint="use 'range(column)', 'list(column)' or 'hash(column)'")
    strategy, col = m.group(1).lower(), m.group(2)
    if col.startswith('"') and col.endswith('"') and len(col) >= 2:
        col = col[1:-1].replace('""', '"')
    else:
        col = col.lower()
    return strategy, col


def cast(value: sql.Composable, type_name: str) -> sql.Composable:
    return sql.SQL("({})::{}").format(value, sql.SQL(type_name))


@dataclass
class Bound:
    """A partition bound with its values as SQL (``None`` = MINVALUE/MAXVALUE for ranges)."""

    kind: str  # range, list, hash, default
    lower: sql.Composable | None = None
    upper: sql.Composable | None = None
    values: list[sql.Composable] = field(default_factory=list)
    has_null: bool = False
    modulus: int = 0
    remainder: int = 0

    @classmethod
    def of(cls, p: Partition) -> Bound:
        """The bound of an existing partition, from its deparsed literals."""
        if p.is_default:
            return cls("default")
        if p.lower is not None and p.upper is not None:
            if len(p.lower) != 1:
                raise Refused(f"partition {p.name} has a multi-column bound; not supported")
            lo, hi = p.lower[0], p.upper[0]
            return cls("range", None if lo.upper() == "MINVALUE" else sql.SQL(lo),
                       None if hi.upper() == "MAXVALUE" else sql.SQL(hi))
        if p.values is not None:
            vals = [v for v in p.values if v.upper() != "NULL"]
            return cls("list", values=[sql.SQL(v) for v in vals],
                       has_null=len(vals) != len(p.values))
        return cls("hash", modulus=p.modulus or 0, remainder=p.remainder or 0)

    def for_values(self) -> sql.Composable:
        if self.kind == "default":
            return sql.SQL("DEFAULT")
        if self.kind == "range":
            return sql.SQL("FOR VALUES FROM ({}) TO ({})").format(
                self.lower if self.lower is not None else sql.SQL("MINVALUE"),
                self.upper if self.upper is not None else sql.SQL("MAXVALUE"))
        if self.kind == "list":
            vals = [*self.values, *([sql.SQL("NULL")] if self.has_null else [])]
            return sql.SQL("FOR VALUES IN ({})").format(sql.SQL(", ").join(vals))
        return sql.SQL("FOR VALUES WITH (MODULUS {}, REMAINDER {})").format(
            sql.Literal(self.modulus), sql.Literal(self.remainder))

    def predicate(self, col: sql.Composable, type_name: str) -> sql.Composable:
        """True for a row of this partition (NULL keys aside, see ``check``)."""
        if self.kind == "range":
            parts: list[sql.Composable] = []
            if self.lower is not None:
                parts.append(sql.SQL("{} >= {}").format(col, cast(self.lower, type_name)))
            if self.upper is not None:
                parts.append(sql.SQL("{} < {}").format(col, cast(self.upper, type_name)))
            if not parts:
                return sql.SQL("({} IS NOT NULL)").format(col)
            return sql.SQL("({})").format(sql.SQL(" AND ").join(parts))
        if self.kind == "list":
            alts: list[sql.Composable] = []
            if self.values:
                alts.append(sql.SQL("{} IN ({})").format(col, sql.SQL(", ").join(
                    cast(v, type_name) for v in self.values)))
            if self.has_null:
                alts.append(sql.SQL("{} IS NULL").format(col))
            return sql.SQL("({})").format(sql.SQL(" OR ").join(alts))
        raise Refused(f"no predicate for a {self.kind} bound")

    def check(self, col: sql.Composable, type_name: str) -> sql.Composable:
        """A CHECK that proves this bound to ATTACH: it excludes NULL keys unless the bound
        holds NULL (a CHECK passes on NULL, so without that ATTACH scans the table for them,
        under its ACCESS EXCLUSIVE lock, when the key column may be NULL)."""
        if self.kind == "range" or (self.kind == "list" and not self.has_null):
            return sql.SQL("{} IS NOT NULL AND {}").format(col, self.predicate(col, type_name))
        return self.predicate(col, type_name)

    def describe(self) -> str:
        return self.for_values().as_string(None)


def value_sql(text: str, kind: str) -> sql.Composable | None:
    """A user-given bound value as SQL (``None`` for MINVALUE/MAXVALUE)."""
    v = parse_value(text, kind)  # type: ignore[arg-type]
    if isinstance(v, str) and v in ("MINVALUE", "MAXVALUE"):
        return None
    return literal(v)


def server_bool(conn: Connection, expr: sql.Composable) -> bool:
    row = conn.execute(sql.SQL("SELECT ({})::bool").format(expr)).fetchone()
    return bool(row and row[0])


def bounds_overlap(conn: Connection, a: Bound, b: Bound, type_name: str) -> bool:
    """Whether two bounds share a value, compared by the server in the key's type."""
    if a.kind == "default" or b.kind == "default":
        return False
    if a.kind == "range" and b.kind == "range":
        # [a.lo, a.hi) and [b.lo, b.hi) are disjoint iff a.hi <= b.lo or b.hi <= a.lo
        def le(x: sql.Composable | None, y: sql.Composable | None) -> bool:
            if x is None or y is None:
                return False  # x is MAXVALUE or y is MINVALUE
            return server_bool(conn, sql.SQL("{} <= {}").format(cast(x, type_name),
                                                                 cast(y, type_name)))
        return not (le(a.upper, b.lower) or le(b.upper, a.lower))
    if a.kind == "list" and b.kind == "list":
        if a.has_null and b.has_null:
            return True
        if not a.values or not b.values:
            return False
        return server_bool(conn, sql.SQL("ARRAY[{}] && ARRAY[{}]").format(
            sql.SQL(", ").join(cast(v, type_name) for v in a.values),
            sql.SQL(", ").join(cast(v, type_name) for v in b.values)))
    return a.kind == b.kind and a.modulus == b.modulus and a.remainder == b.remainder


def refuse_empty_range(conn: Connection, b: Bound, type_name: str) -> None:
    if b.kind == "range" and b.lower is not None and b.upper is not None and server_bool(
            conn, sql.SQL("{} >= {}").format(cast(b.lower, type_name), cast(b.upper, type_name))):
        raise Refused(f"empty range {b.describe()}: the lower bound must be below the upper one")


# -- add-partition --------------------------------------------------------------------------------
def requested_bound(info: TableInfo, *, lower: str | None = None, upper: str | None = None,
                    values: list[str] | None = None, modulus: int | None = None,
                    remainder: int | None = None) -> Bound:
    """The user's --from/--to, --values or --modulus/--remainder as a Bound for ``info``'s key."""
    part = info.partitioning
    assert part is not None
    if len(part.key_columns) != 1 or part.key_columns[0] == "(expression)":
        raise Refused(f"{info.name} is partitioned by {part.key}: only single-column keys are "
                      "supported")
    kind = key_kind(part.key_types[0])
    if part.strategy == "range":
        if lower is None or upper is None or values or modulus is not None:
            raise Refused(f"{info.name} is partitioned by {part.key}: give --from and --to")
        return Bound("range", value_sql(lower, kind), value_sql(upper, kind))
    if part.strategy == "list":
        if not values or lower is not None or upper is not None:
            raise Refused(f"{info.name} is partitioned by {part.key}: give --values")
        vals = [v for v in values if v.upper() != "NULL"]
        return Bound("list", values=[literal(parse_value(v, kind)) for v in vals],
                     has_null=len(vals) != len(values))
    if modulus is None or remainder is None:
        raise Refused(f"{info.name} is partitioned by {part.key}: give --modulus and --remainder")
    if modulus <= 0 or not 0 <= remainder < modulus:
        raise Refused("--remainder must be at least 0 and below --modulus")
    return Bound("hash", modulus=modulus, remainder=remainder)


def default_name(conn: Connection, info: TableInfo, b: Bound) -> QualifiedName:
    """``orders_p2024_09`` for time or number ranges of a pgcleave policy, else ``t_0``,
    ``t_1``, ... (the first free number)."""
    name = info.name
    pol = policy_mod.load(conn, name)
    if b.kind == "range" and pol is not None and pol.interval and b.lower is not None:
        iv = Interval.parse(pol.interval)
        assert info.partitioning is not None
        kind = key_kind(info.partitioning.key_types[0])
        try:
            text = b.lower.as_string(None).strip("'")
            cand = name.sibling(child_name(name.name, suffix(parse_value(text, kind), iv)))
            if not relation_exists(conn, cand):
                return cand
        except (Refused, ValueError, TypeError):
            pass
    if b.kind == "hash":
        cand = name.sibling(child_name(name.name, f"h{b.modulus}_{b.remainder}"))
        if not relation_exists(conn, cand):
            return cand
    k = 0
    while relation_exists(conn, name.sibling(child_name(name.name, str(k)))):
        k += 1
    return name.sibling(child_name(name.name, str(k)))


def check_new_bound(conn: Connection, info: TableInfo, b: Bound,
                    ignore: Partition | None = None) -> None:
    """Refuse an empty range or one that overlaps an existing partition."""
    part = info.partitioning
    assert part is not None
    t = part.key_types[0]
    refuse_empty_range(conn, b, t)
    for p in part.partitions:
        if p is ignore or p.is_default:
            continue
        if bounds_overlap(conn, b, Bound.of(p), t):
            raise Refused(f"{b.describe()} overlaps partition {p.name} ({p.bound})",
                          hint="`pgcleave status` lists the partitions and their bounds")


def bound_le(conn: Connection, x: sql.Composable | None, y: sql.Composable | None, t: str, *,
        x_min: bool, y_min: bool) -> bool:
    """x <= y where None means MINVALUE (``*_min``) or MAXVALUE."""
    if x is None and x_min:
        return True
    if y is None and not y_min:
        return True
    if x is None or y is None:
        return False
    return server_bool(conn, sql.SQL("{} <= {}").format(cast(x, t), cast(y, t)))


def bound_contains(conn: Connection, outer: Bound, inner: Bound, t: str) -> bool:
    """Whether every value of ``inner`` lies in ``outer`` (ranges, or value lists compared
    by the server in the key's type)."""
    if outer.kind == inner.kind == "list":
        if inner.has_null and not outer.has_null:
            return False
        if not inner.values:
            return True
        if not outer.values:
            return False
        return server_bool(conn, sql.SQL("ARRAY[{}] <@ ARRAY[{}]").format(
            sql.SQL(", ").join(cast(v, t) for v in inner.values),
            sql.SQL(", ").join(cast(v, t) for v in outer.values)))
    return (bound_le(conn, outer.lower, inner.lower, t, x_min=True, y_min=True)
            and bound_le(conn, inner.upper, outer.upper, t, x_min=False, y_min=False))


def same_bound(conn: Connection, a: Bound, b: Bound, t: str) -> bool:
    return bound_contains(conn, a, b, t) and bound_contains(conn, b, a, t)


def same_value(conn: Connection, a: sql.Composable | None, b: sql.Composable | None, t: str
                ) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return server_bool(conn, sql.SQL("{} = {}").format(cast(a, t), cast(b, t)))


# -- hash bounds that another server can check --------------------------------------------------
#: PostgreSQL's HASH_PARTITION_SEED and the constant of hash_combine64 (src/include/common/
#: hashfn.h), with which a row's remainder is computed for a one-column hash key.
HASH_PARTITION_SEED = 0x7A5B22367996DCFD
_HASH_COMBINE = 0x49A0F4DD15E5A8E3


def portable_hash_check(conn: Connection, parent: QualifiedName, col: str, modulus: int,
                        remainder: int) -> str:
    """A hash partition's constraint that needs no parent. ``pg_get_partition_constraintdef``
    gives ``satisfies_hash_partition('<parent oid>'::oid, ...)``, which names the local
    parent by OID: a shard's CHECK made of it fails on every row (no such relation there).
    This computes the remainder as PostgreSQL does for one key column: the key's extended
    hash support function (of its operator class) with the partition seed, combined into a
    zero row hash, as an unsigned 64-bit number, modulo the modulus."""
    row = conn.execute(
        "SELECT p.amproc::regproc::text FROM pg_partitioned_table pt"
        " JOIN pg_opclass oc ON oc.oid = pt.partclass[0]"
        " JOIN pg_amproc p ON p.amprocfamily = oc.opcfamily AND p.amprocnum = 2"
        " AND p.amproclefttype = oc.opcintype AND p.amprocrighttype = oc.opcintype"
        " WHERE pt.partrelid = to_regclass(%s) AND pt.partnatts = 1", [parent.quoted]).fetchone()
    if row is None:
        raise Refused(f"cannot find the hash function of {parent}'s partition key")
    u64 = 2 ** 64
    return sql.SQL(
        "({c} IS NULL AND {r} = 0 OR ((({f}({c}, {seed})::numeric + {k} + {u}) % {u}) % {m})"
        " = {r})").format(
        c=sql.Identifier(col), f=sql.SQL(str(row[0])), seed=sql.Literal(HASH_PARTITION_SEED),
        k=sql.Literal(_HASH_COMBINE), u=sql.Literal(u64), m=sql.Literal(modulus),
        r=sql.Literal(remainder)).as_string(None)
