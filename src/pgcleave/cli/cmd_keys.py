"""``set-primary-key``, ``create-index``, ``add-foreign-key``, ``drop-index``,
``drop-constraint``: keys and indexes of a partitioned table, changed online."""

from __future__ import annotations

import click

from ..errors import UsageError
from ..names import parse_columns
from ..ops import keys
from . import common
from .app import app
from .common import db, dry_run_option, json_option, yes_option


@app.command("set-primary-key")
@click.argument("table")
@click.option("--columns", required=True, metavar="COLS",
              help="Key columns, comma-separated; must include the partition key "
                   "(e.g. id,created_at).")
@click.option("--keep-old-key", is_flag=True,
              help="Keep each partition's old primary key as a UNIQUE constraint (one more "
                   "concurrent index build per partition) instead of dropping it.")
@dry_run_option
@yes_option
@json_option
def set_primary_key(table: str, columns: str, keep_old_key: bool, dry_run: bool, yes: bool,
                    as_json: bool) -> None:
    """Give partitioned TABLE a PRIMARY KEY on COLS without blocking writes while it builds.

    Builds a unique index concurrently on each partition, proves NOT NULL with validated
    CHECKs, turns each index into the partition's primary key (retiring the old per-partition
    key), then adds the key on the parent, which adopts the partitions' keys without a build.
    """
    with db() as conn:
        plan = keys.plan_set_primary_key(conn, table, parse_columns(columns),
                                         keep_old_key=keep_old_key)
    common.execute(plan, dry_run=dry_run, yes=yes, as_json=as_json)


@app.command("create-index")
@click.argument("table")
@click.argument("columns", nargs=-1, required=True)
@click.option("--unique", is_flag=True, help="A unique index (must include the partition key).")
@click.option("--name", default=None, help="Index name (default: TABLE_COLS_idx, or _key).")
@click.option("--where", default=None, metavar="CONDITION",
              help="Partial index condition, SQL, e.g. \"status = 'open'\".")
@click.option("--using", "method", default=None, metavar="METHOD",
              help="Index method (btree, hash, gin, brin, ...).")
@dry_run_option
@yes_option
@json_option
def create_index(table: str, columns: tuple[str, ...], unique: bool, name: str | None,
                 where: str | None, method: str | None, dry_run: bool, yes: bool,
                 as_json: bool) -> None:
    """Create an index on partitioned TABLE (COLUMNS, e.g. customer_id,created_at) online.

    CREATE INDEX ON ONLY the parent, CREATE INDEX CONCURRENTLY on each partition, then ATTACH;
    an INVALID index left by an interrupted run is dropped and built again.
    """
    with db() as conn:
        plan = keys.plan_create_index(conn, table, parse_columns(columns), unique=unique,
                                      name=name, where=where, method=method)
    common.execute(plan, dry_run=dry_run, yes=yes, as_json=as_json)


@app.command("add-foreign-key")
@click.argument("table")
@click.argument("spec", nargs=-1, required=True)
@click.option("--name", default=None, help="Constraint name (default: TABLE_COLS_fkey).")
@click.option("--on-delete", type=click.Choice(keys.ON_DELETE, case_sensitive=False),
              default=None, help="Referential action on delete.")
@dry_run_option
@yes_option
@json_option
def add_foreign_key(table: str, spec: tuple[str, ...], name: str | None,
                    on_delete: str | None, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Add a foreign key: TABLE COLS REFERENCES OTHER [REF_COLS].

    Example: add-foreign-key orders customer_id REFERENCES customers id. Works from and to
    partitioned tables: each partition's key is added NOT VALID and validated without blocking
    writes, then the parent adopts them. REF_COLS default to OTHER's primary key.
    """
    cols, other, ref_cols = _parse_fk(spec)
    with db() as conn:
        plan = keys.plan_add_foreign_key(conn, table, cols, other, ref_cols, name=name,
                                         on_delete=on_delete)
    common.execute(plan, dry_run=dry_run, yes=yes, as_json=as_json)


def _parse_fk(spec: tuple[str, ...]) -> tuple[list[str], str, list[str] | None]:
    parts = list(spec)
    if len(parts) >= 2 and parts[1].upper() == "REFERENCES":
        parts.pop(1)
    if len(parts) not in (2, 3):
        raise UsageError("expected: TABLE COLS REFERENCES OTHER [REF_COLS]",
                         hint="e.g. pgcleave add-foreign-key orders customer_id REFERENCES "
                              "customers id")
    other = parts[1]
    ref_cols = parse_columns(parts[2]) if len(parts) == 3 else None
    if ref_cols is None and other.endswith(")") and "(" in other:
        other, _, rest = other.partition("(")
        ref_cols = parse_columns("(" + rest)
    return parse_columns(parts[0]), other, ref_cols


@app.command("drop-index")
@click.argument("index")
@dry_run_option
@yes_option
@json_option
def drop_index(index: str, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Drop INDEX: CONCURRENTLY on a plain table; on a partitioned table one short catalog-only
    transaction, tried under lock_timeout and retried."""
    with db() as conn:
        plan = keys.plan_drop_index(conn, index)
    common.execute(plan, dry_run=dry_run, yes=yes, as_json=as_json)


@app.command("drop-constraint")
@click.argument("table")
@click.argument("name")
@dry_run_option
@yes_option
@json_option
def drop_constraint(table: str, name: str, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Drop constraint NAME of TABLE in one short catalog-only transaction (refused while
    foreign keys depend on it)."""
    with db() as conn:
        plan = keys.plan_drop_constraint(conn, table, name)
    common.execute(plan, dry_run=dry_run, yes=yes, as_json=as_json)
