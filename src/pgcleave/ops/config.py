"""``pgcleave config``: change a table's maintenance policy, or adopt a table partitioned
elsewhere, and the placement rules (``--place 'range(A,B)=db2'``) that put new partitions on
servers."""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import sql

from .. import preflight, schemes, servers
from ..catalog import TableInfo, snapshot
from ..connection import Connection
from ..ddl.bounds import parse_by
from ..ddl.shards import first_move_warnings, refuse_parent_keys
from ..errors import NotFound, Refused
from ..levels import (
    evaluate_bounds,
    infer_interval,
)
from ..plan import Plan, Step
from ..policy import Policy, load, range_rule_values, rule_text, validate


# -- config: change a policy, or adopt a table partitioned elsewhere ---------------------------
def plan_config(conn: Connection, table: str, *, interval: str | None = None,
                premake: int | None = None, retention: str | None = None,
                no_retention: bool = False, retention_action: str | None = None,
                archive_dir: str | None = None, archive_format: str | None = None,
                time_zone: str | None = None, then: str | None = None,
                place: list[str] | None = None, no_place: bool = False) -> tuple[Plan, Policy]:
    """The plan that stores the changed (or adopted) policy, and that policy."""

    info = snapshot(conn, table)
    p = info.partitioning
    if p is None:
        raise Refused(f"{info.name} is not partitioned",
                      hint=f"partition it with `pgcleave partition {info.name} ...` (which "
                           "stores the policy), then adjust it here")
    current = load(conn, info.name)
    notes: list[str] = []
    if current is None:
        current = Policy(info.name, p.strategy, p.key_columns[0])
        branch = next((x for x in p.partitions if x.partitioning is not None), None)
        if p.strategy != "range" and branch is not None and branch.partitioning is not None:
            bp = branch.partitioning
            current.sub_strategy, current.sub_key_column = bp.strategy, bp.key_columns[0]
        key = current.range_key
        if key is not None and interval is None:
            src = p if current.strategy == "range" else (
                branch.partitioning if branch is not None else None)
            if src is not None:
                kind = schemes.key_kind(info.column(key).type)
                guessed = infer_interval(evaluate_bounds(conn, src), kind)
                if guessed:
                    interval = guessed
                    notes.append(f"interval {guessed} inferred from the existing partitions")
        notes.append(f"adopting {info.name} ({len(p.leaves())} partitions, whatever their "
                     "names: pgcleave orders them by their bounds)")
    pol_ = Policy(**{**current.__dict__})
    if then is not None:
        pol_.sub_strategy, pol_.sub_key_column = parse_by(then)
    if interval is not None:
        schemes.Interval.parse(interval)
        if pol_.sub_strategy is not None:
            pol_.sub_interval = interval
        else:
            pol_.interval = interval
    if premake is not None:
        pol_.premake = premake
    if no_retention:
        pol_.retention = None
    elif retention is not None:
        schemes.Interval.parse(retention)
        pol_.retention = retention
    if retention_action is not None:
        pol_.retention_action = retention_action
    if archive_dir is not None:
        import os
        pol_.archive_dir = os.path.abspath(archive_dir)
    if archive_format is not None:
        pol_.archive_format = archive_format
    if time_zone is not None:
        pol_.time_zone = time_zone
    validate(pol_, info)
    warnings: list[str] = []
    if no_place:
        pol_.placement = []
    if place:
        # added to the rules already there (--no-place --place ... replaces them)
        pol_.placement = parse_placement(
            conn, pol_, info, [rule_text(r) for r in pol_.placement] + list(place))
        if not any(leaf.kind == "f" for leaf in p.leaves()):
            warnings += first_move_warnings(info)
        notes.append("existing partitions stay where they are (`pgcleave move PARTITION --to "
                     "SERVER` moves one); maintain creates new partitions inside a rule's "
                     "range on its server")
    step = Step.sql("policy", f"store the policy of {info.name}: {pol_.summary()}",
                    [pol_.upsert()], ddl=False)
    plan = Plan("config", info.name.quoted, {"policy": pol_.to_json()}, [step], notes=notes,
                warnings=warnings, requires=[preflight.owner(info.name)])
    return plan, pol_


# -- placement: which server new partitions go to ----------------------------------------------
_PLACE_RE = re.compile(r"^\s*(range|list)\s*\((.*)\)\s*=\s*(\S+?)\s*$", re.I | re.S)


def _split_values(text: str) -> list[str]:
    """``a, 'b,c', "d"`` -> ['a', 'b,c', 'd'] (single quotes: a value; '' inside is one ')."""
    out: list[str] = []
    cur, quoted, i = "", False, 0
    while i < len(text):
        ch = text[i]
        if quoted:
            if ch == "'" and text[i + 1:i + 2] == "'":
                cur += "'"
                i += 1
            elif ch == "'":
                quoted = False
            else:
                cur += ch
        elif ch == "'":
            quoted = True
        elif ch == ",":
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
        i += 1
    if quoted:
        raise Refused(f"unbalanced quote in {text!r}")
    out.append(cur.strip())
    return out


def _canonical(conn: Connection, values: list[str], typ: str, tz: str) -> list[str]:
    """Each value cast to the key's type by the server (in the policy's time zone), as text."""

    try:
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL TimeZone = {}").format(sql.Literal(tz)))
            row = conn.execute(sql.SQL("SELECT ARRAY[{}]::text[]").format(sql.SQL(", ").join(
                sql.SQL("({})::{}").format(sql.Literal(v), sql.SQL(typ)) for v in values))
            ).fetchone()
    except psycopg.Error as exc:
        raise Refused(f"placement value(s) {', '.join(values)} do not fit the key's type {typ}: "
                      f"{str(exc).strip().splitlines()[0]}",
                      hint="e.g. --place 'range(2025-04-01, 2026-01-01)=db2'") from None
    assert row is not None
    return [str(v) for v in row[0]]


def parse_placement(conn: Connection, policy: Policy, info: TableInfo,
                    texts: list[str]) -> list[dict[str, Any]]:
    """Read and check ``--place`` rules: ``range(FROM, TO)=SERVER`` (FROM/TO may be MINVALUE/
    MAXVALUE) for a range-partitioned table, ``list(V1, V2)=SERVER`` for a list-partitioned
    one. Values are cast to the key's type; the server must exist; rules must not overlap; the
    table must be able to take foreign partitions."""

    p = info.partitioning
    assert p is not None
    key = info.column(policy.key_column)
    rules: list[dict[str, Any]] = []
    for text in texts:
        m = _PLACE_RE.match(text)
        if not m:
            raise Refused(f"cannot read placement rule {text!r}",
                          hint="write it as 'range(FROM, TO)=SERVER' or 'list(V1, V2)=SERVER'")
        kind, args, server = m.group(1).lower(), _split_values(m.group(2)), m.group(3)
        if server == "local":
            raise Refused("a placement rule names a server; partitions without a rule stay "
                          "local", hint="drop the rule (config --no-place, then --place the "
                          "others)")
        try:
            servers.get_server(conn, server)
        except NotFound as exc:
            raise Refused(exc.message, hint=exc.hint) from None
        if policy.sub_strategy is not None:
            raise Refused(f"{info.name} has two levels: its branches are partitioned and "
                          "cannot be foreign tables, and sub-partitions cannot be placed")
        if kind != policy.strategy:
            raise Refused(f"a {kind} rule does not fit {info.name}, partitioned by {p.key}",
                          hint=f"write '{policy.strategy}(...)={server}'")
        if kind == "range":
            if len(args) != 2 or not all(args):
                raise Refused(f"{text!r}: a range rule takes two bounds, FROM and TO",
                              hint="e.g. 'range(2025-04-01, 2026-01-01)=db2'")
            inf = [a.upper() in ("MINVALUE", "MAXVALUE") for a in args]
            fin = [a for a, i in zip(args, inf, strict=True) if not i]
            canon = iter(_canonical(conn, fin, key.type, policy.time_zone))
            lo = None if inf[0] else next(canon)
            hi = None if inf[1] else next(canon)
            if args[0].upper() == "MAXVALUE" or args[1].upper() == "MINVALUE":
                raise Refused(f"{text!r}: FROM may be MINVALUE and TO MAXVALUE, not the reverse")
            rules.append({"kind": "range", "from": lo, "to": hi, "server": server})
        else:
            if not all(args):
                raise Refused(f"{text!r}: empty value in a list rule")
            vals = _canonical(conn, args, key.type, policy.time_zone)
            rules.append({"kind": "list", "values": sorted(set(vals)), "server": server})
    # bounds in order, no overlap (compared by the server, in the key's type)
    ranges = [r for r in rules if r["kind"] == "range"]
    if ranges:
        bounds = range_rule_values(conn, ranges, key.type)
        for r, (lo, hi) in zip(ranges, bounds, strict=True):
            if lo is not None and hi is not None and not lo < hi:
                raise Refused(f"placement rule {rule_text(r)}: FROM must be below TO")
        for i, (lo1, hi1) in enumerate(bounds):
            for j, (lo2, hi2) in enumerate(bounds[:i]):
                if (lo1 is None or hi2 is None or lo1 < hi2) and \
                        (lo2 is None or hi1 is None or lo2 < hi1):
                    raise Refused(f"placement rules {rule_text(ranges[j])} and "
                                  f"{rule_text(ranges[i])} overlap",
                                  hint="give each range one server")
    seen: dict[str, dict[str, Any]] = {}
    for r in rules:
        for v in r.get("values", []):
            if v in seen:
                raise Refused(f"placement rules {rule_text(seen[v])} and {rule_text(r)} "
                              f"overlap on {v!r}", hint="give each value one server")
            seen[v] = r
    refuse_parent_keys(info)
    if any(col.generated for col in info.columns):
        raise Refused(f"{info.name} has generated columns; foreign partitions cannot carry them")
    return rules
