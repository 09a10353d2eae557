"""Branches of a two-level table (a partition that is itself partitioned) as split and merge
re-cut them: the shape a new branch copies from its source (the same sub-key, the same leaf
bounds or value groups, its DEFAULT), the names of the new leaves, and the refusals of what
is not built (hash or multi-column sub-keys, a third level, foreign leaves, branches of
different shapes).

``split`` gives every new branch this shape through carve's ``Sub`` pieces (carve's holder
then has three levels while it is filled); ``merge`` builds its one new branch with it in
``merge_steps``. Either way the new branch carries a CHECK of its own bound, which its
leaves inherit, so its ATTACH proves the bound without a scan; the bulk copy, the key-log
replays and the verification read the source branch through its leaves (never ``ONLY``).
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from ..catalog import Partition, relation_exists
from ..connection import Connection
from ..ddl.bounds import Bound
from ..errors import Refused
from ..names import QualifiedName, child_name
from .carve import Sub

__all__ = ["Shape", "copy_sources", "leaf_names", "origins", "same_shape", "shape_of",
           "source_sql", "sub_for"]


@dataclass
class Shape:
    """The sub-partitioning of a branch: its strategy and key, and each leaf as (the suffix
    its name adds to the branch's name, its bound); the DEFAULT leaf's suffix if it has one."""

    strategy: str
    key: str
    key_type: str
    leaves: list[tuple[str, Partition]]  # (suffix, the source's leaf)
    default: str | None
    default_leaf: Partition | None = None

    def describe(self) -> str:
        return (f"{self.strategy}({self.key}) with {len(self.leaves)} partition(s)"
                + (" and a DEFAULT" if self.default else ""))


def _suffix(branch: str, leaf: str) -> str:
    """What the leaf's name adds to its branch's (``orders_2026_01_us`` -> ``us``), or its
    whole name when it does not start with the branch's."""
    return leaf[len(branch) + 1:] if leaf.startswith(branch + "_") and len(leaf) > len(
        branch) + 1 else leaf


def shape_of(part: Partition) -> Shape:
    """The shape of branch ``part`` (from the parent's snapshot); what is not built is
    refused before anything changes."""
    sub = part.partitioning
    assert sub is not None
    if sub.strategy not in ("range", "list") or len(sub.key_columns) != 1:
        raise Refused(f"{part.name} is sub-partitioned by {sub.key}: a branch is re-cut only "
                      "when its partitions are by range or list of one column",
                      hint=f"re-cut the partitions of {part.name} instead")
    leaves: list[tuple[str, Partition]] = []
    default: str | None = None
    for leaf in sub.partitions:
        if leaf.kind != "r":
            raise Refused(f"{leaf.name}, a partition of {part.name}, is "
                          f"{'foreign' if leaf.kind == 'f' else 'itself partitioned'}: only a "
                          "branch of plain local tables is re-cut",
                          hint=f"pgcleave move {leaf.name} --to local first" if leaf.kind == "f"
                          else f"re-cut the partitions of {leaf.name} instead")
        sfx = _suffix(part.name.name, leaf.name.name)
        if leaf.is_default:
            default = sfx
        else:
            leaves.append((sfx, leaf))
    dleaf = next((x for x in sub.partitions if x.is_default), None)
    return Shape(sub.strategy, sub.key_columns[0], sub.key_types[0], leaves, default, dleaf)


def same_shape(conn: Connection, parts: list[Partition]) -> Shape:
    """The one shape every branch of ``parts`` has (same sub-key, same leaf bounds as the
    server prints them, a DEFAULT in all or none), else refused: merged, their leaves must
    pair up bound for bound."""
    del conn
    shapes = [shape_of(p) for p in parts]
    first = shapes[0]

    def key(s: Shape) -> tuple[str, str, frozenset[str], bool]:
        return s.strategy, s.key, frozenset(x.bound for _, x in s.leaves), s.default is not None

    for p, s in zip(parts[1:], shapes[1:], strict=True):
        if key(s) != key(first):
            raise Refused(f"{parts[0].name} ({first.describe()}) and {p.name} "
                          f"({s.describe()}) are not sub-partitioned alike: merged, their "
                          "partitions would not pair up",
                          hint="re-cut the partitions of one branch to match the other's "
                               "first (pgcleave split/merge of its partitions)")
    return first


def leaf_names(conn: Connection, shape: Shape, branch: QualifiedName, *,
               check: bool = True) -> tuple[list[tuple[str, Bound]], str | None]:
    """The leaves a new branch named ``branch`` gets: (name, bound) each, and its DEFAULT's
    name; ``check``: refuse names taken already."""
    out = [(child_name(branch.name, sfx), Bound.of(x)) for sfx, x in shape.leaves]
    dflt = child_name(branch.name, shape.default) if shape.default is not None else None
    if check:
        for n in [*(n for n, _ in out), *([dflt] if dflt else [])]:
            if relation_exists(conn, branch.sibling(n)):
                raise Refused(f"{branch.sibling(n)} already exists: the new branch "
                              f"{branch.name} would name a partition so",
                              hint="choose other names for the new partitions (--names)")
    return out, dflt


def sub_for(conn: Connection, shape: Shape, branch: QualifiedName) -> Sub:
    """Carve's description of a new branch named ``branch`` shaped like ``shape``."""
    leaves, dflt = leaf_names(conn, shape, branch)
    return Sub(shape.key, leaves, dflt, shape.strategy, origins(shape, leaves, dflt))


def origins(shape: Shape, leaves: list[tuple[str, Bound]], dflt: str | None) -> dict[str, int]:
    """Each new leaf's name -> the oid of the source leaf it pairs with (whose indexes,
    its own ones too, it gets)."""
    out = {n: x.oid for (n, _), (_, x) in zip(leaves, shape.leaves, strict=True)}
    if dflt is not None and shape.default_leaf is not None:
        out[dflt] = shape.default_leaf.oid
    return out


def copy_sources(parts: list[Partition]) -> list[QualifiedName]:
    """The tables a parallel copy (``--jobs``) cuts into block ranges: a branch's leaves (a
    partitioned table has no blocks), a plain partition itself."""
    return [x.name for p in parts
            for x in (p.partitioning.partitions if p.partitioning else [p])]


def source_sql(part: Partition) -> sql.Composable:
    """How a copy reads a source: a branch through its leaves, a plain table ``ONLY``."""
    return sql.SQL("{}" if part.kind == "p" else "ONLY {}").format(part.name.ident)
