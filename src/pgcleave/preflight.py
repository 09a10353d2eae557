"""What a plan needs of the role and the servers, checked before its first change.

A planner lists the privileges and settings its steps need as ``Requirement`` values on the plan
(``Plan.requires``); the executor checks them all before it creates the journal or changes
anything, and refuses with every missing one and the statement or setting that fixes it. A
resumed job checks them again (it may run as another role). ``pgcleave doctor`` asks the same
questions capability by capability.

A requirement is a query returning one boolean, run on this database, or through dblink on a
registered server; a few are client-side facts (a directory the archive is written to).
Nothing here changes anything.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus

from .connection import Connection
from .errors import Refused
from .names import QualifiedName


@dataclass(frozen=True)
class Requirement:
    """``what`` must hold (``query`` returns true) for the plan to run; ``fix`` says how to
    make it hold. ``{user}`` in ``fix`` stands for the connected role. ``server``: the query
    runs on that registered server. ``path``: a directory this process must be able to write
    (``query`` unused)."""

    what: str
    query: str
    fix: str
    server: str | None = None
    path: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Requirement:
        return cls(**d)


@dataclass(frozen=True)
class Result:
    requirement: Requirement
    ok: bool
    detail: str = ""  # why it could not be checked (a server away)
    away: bool = False  # its server is out of reach: not asked, or asked in vain

    @property
    def fix(self) -> str:
        return self.requirement.fix


def _q(text: str, *args: sql.Composable) -> str:
    return sql.SQL(text).format(*args).as_string(None)


# -- the questions --------------------------------------------------------------------------
def owner(table: QualifiedName) -> Requirement:
    """ALTER, DROP, ATTACH and triggers need the table's owner (or a member of its role).
    A table that does not exist (yet) asks nothing."""
    return Requirement(
        f"owner of {table}",
        _q("SELECT coalesce((SELECT pg_has_role(current_user, c.relowner, 'USAGE') FROM "
           "pg_class c WHERE c.oid = to_regclass({})), true)", table.literal),
        f"run pgcleave as the owner of {table} (or a member of its owning role), or: "
        f"ALTER TABLE {table} OWNER TO {{user}}")


def create_in(schema: str) -> Requirement:
    return Requirement(
        f"CREATE on schema {schema}",
        _q("SELECT coalesce((SELECT has_schema_privilege(current_user, oid, 'CREATE') FROM "
           "pg_namespace WHERE nspname = {}), false)", sql.Literal(schema)),
        f"GRANT CREATE ON SCHEMA {sql.Identifier(schema).as_string(None)} TO {{user}}")


def journal_schema() -> Requirement:
    """The ``pgcleave`` schema holds the journal: create it, or write into it."""
    return Requirement(
        "the pgcleave journal schema (CREATE on this database, or on schema pgcleave)",
        "SELECT CASE WHEN to_regnamespace('pgcleave') IS NULL"
        " THEN has_database_privilege(current_database(), 'CREATE')"
        " ELSE has_schema_privilege('pgcleave', 'CREATE') AND"
        " has_schema_privilege('pgcleave', 'USAGE') END",
        "GRANT CREATE ON DATABASE <this database> TO {user}; or have an administrator run "
        "CREATE SCHEMA pgcleave AUTHORIZATION {user}")


#: What a job does to the journal's tables: its row and its steps' rows; a parallel copy's
#: connections (carve's --jobs or --max-rate) insert one row per committed range into
#: step_parts, read them on a resume and delete them when a rewritten source is copied again.
_JOURNAL_WRITES = {"jobs": ("SELECT", "INSERT", "UPDATE"), "steps": ("SELECT", "INSERT", "UPDATE"),
                   "step_parts": ("SELECT", "INSERT", "DELETE")}


def journal_tables(parts: bool = False) -> Requirement:
    """Writing the journal's tables when another role created them (an administrator who ran
    pgcleave first): a job the role cannot journal is refused before its first change, not
    stopped in the middle (step_parts is first written by the copy, after the first steps
    changed things). ``parts``: the plan has a parallel copy. A table not there yet is
    created by this role, its owner."""
    tables = ["jobs", "steps", *(["step_parts"] if parts else [])]
    checks = " AND ".join(
        f"coalesce(has_table_privilege(to_regclass('pgcleave.{t}'), '{priv}'), true)"
        for t in tables for priv in _JOURNAL_WRITES[t])
    grants = "; ".join(f"GRANT {', '.join(_JOURNAL_WRITES[t])} ON pgcleave.{t} TO {{user}}"
                       for t in tables)
    names = ", ".join(f"pgcleave.{t}" for t in tables)
    return Requirement(f"writing the pgcleave journal ({names})", f"SELECT {checks}", grants)


def parallel_copy(steps: Iterable[Any]) -> bool:
    """Whether a plan's steps hold a parallel copy that journals its ranges in step_parts."""
    return any(s.action == "carve.copy" and "parallel" in (s.params or {}) for s in steps)


def table_change(table: QualifiedName) -> list[Requirement]:
    """What changing ``table`` and creating tables beside it needs."""
    return [owner(table), create_in(table.schema)]


def references(table: QualifiedName) -> Requirement:
    return Requirement(
        f"REFERENCES on {table}",
        _q("SELECT coalesce(has_table_privilege(current_user, to_regclass({}), 'REFERENCES'),"
           " true)", table.literal),
        f"GRANT REFERENCES ON {table} TO {{user}}")


def superuser(why: str) -> Requirement:
    return Requirement(
        f"superuser ({why})", "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
        "run as a superuser, or use what works without it (pgcleave doctor lists it)")


def create_subscription() -> Requirement:
    return Requirement(
        "the right to create subscriptions (superuser; on PostgreSQL 16+ membership in "
        "pg_create_subscription and CREATE on the database)",
        "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) OR ("
        "current_setting('server_version_num')::int >= 160000 AND EXISTS (SELECT 1 FROM "
        "pg_roles r WHERE r.rolname = 'pg_create_subscription' AND pg_has_role(current_user, "
        "r.oid, 'MEMBER')) AND has_database_privilege(current_database(), 'CREATE'))",
        "GRANT pg_create_subscription TO {user} (PostgreSQL 16+; on RDS/Aurora grant "
        "rds_superuser or use `move --method copy`); on 15 only a superuser can subscribe: "
        "use `move --method copy`")


def wal_level_logical() -> Requirement:
    return Requirement(
        "wal_level = logical", "SELECT current_setting('wal_level') = 'logical'",
        "set wal_level = logical and restart (RDS/Aurora: rds.logical_replication = 1 in the "
        "parameter group; Cloud SQL: cloudsql.logical_decoding = on; Azure: "
        "wal_level = logical), or use `move --method copy`")


def replication_slot_free() -> Requirement:
    return Requirement(
        "a free replication slot and WAL sender",
        "SELECT (SELECT count(*) FROM pg_replication_slots) < "
        "current_setting('max_replication_slots')::int AND (SELECT count(*) FROM "
        "pg_stat_replication) < current_setting('max_wal_senders')::int",
        "raise max_replication_slots and max_wal_senders (restart), or drop unused slots "
        "(SELECT pg_drop_replication_slot(name))")


def prepared_transactions() -> Requirement:
    return Requirement(
        "max_prepared_transactions > 0 (two-phase commit)",
        "SELECT current_setting('max_prepared_transactions')::int > 0",
        "set max_prepared_transactions (e.g. 64) and restart the server (RDS: in the "
        "parameter group); without it `pgcleave alter` applies ADD/DROP COLUMN step by step")


def fdw_usage() -> Requirement:
    return Requirement(
        "postgres_fdw installed (or installable) and USAGE on it",
        "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_foreign_data_wrapper WHERE fdwname = "
        "'postgres_fdw') THEN has_foreign_data_wrapper_privilege('postgres_fdw', 'USAGE') ELSE "
        "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user) END",
        "as a superuser (RDS: rds_superuser): CREATE EXTENSION postgres_fdw; "
        "GRANT USAGE ON FOREIGN DATA WRAPPER postgres_fdw TO {user}")


def extension(name: str) -> Requirement:
    return Requirement(
        f"extension {name} installed (or installable by this role)",
        _q("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = {}) OR (SELECT rolsuper "
           "FROM pg_roles WHERE rolname = current_user) OR coalesce((SELECT trusted FROM "
           "pg_available_extension_versions WHERE name = {} AND installed IS NOT TRUE "
           "ORDER BY version DESC LIMIT 1), false) AND has_database_privilege("
           "current_database(), 'CREATE')", sql.Literal(name), sql.Literal(name)),
        f"as a superuser: CREATE EXTENSION {name}")


def database_owner(why: str) -> Requirement:
    return Requirement(
        f"owner of this database ({why})",
        "SELECT pg_has_role(current_user, d.datdba, 'USAGE') FROM pg_database d"
        " WHERE d.datname = current_database()",
        "run as the database owner, or ALTER DATABASE <db> OWNER TO {user}")


def writable(directory: str) -> Requirement:
    return Requirement(f"a writable archive directory {directory}", "",
                       f"create {directory} and let this user write to it", path=directory)


def on_server(req: Requirement, server: str, dblink_schema: str) -> Requirement:
    """The same question asked of the shard behind ``server`` (through dblink and the user
    mapping, as pgcleave's remote DDL runs)."""
    query = _q("SELECT ok FROM {}.dblink({}, {}) AS t(ok boolean)", sql.Identifier(dblink_schema),
               sql.Literal(server), sql.Literal(req.query))
    return Requirement(f"{req.what} on server {server}", query, req.fix + f" (on {server})",
                       server=server)


# -- asking them ----------------------------------------------------------------------------
def check(conn: Connection, requirements: Iterable[Requirement]) -> list[Result]:
    """Every requirement with its answer. A query that fails (a server away, a function this
    version lacks) counts as not met, with the error as detail.

    The questions of this database are asked together, and those of each server together
    (``_group``), so a server that does not answer is waited for once, however many of its
    questions there are: each of them is then not met, the server named in its detail."""
    seen: set[tuple[str, str | None, str | None]] = set()
    unique = []
    for req in requirements:
        key = (req.query, req.server, req.path)
        if key not in seen:
            seen.add(key)
            unique.append(req)
    groups: dict[str | None, list[Requirement]] = {}
    for req in unique:
        if req.path is None:
            groups.setdefault(req.server, []).append(req)
    answers = {id(res.requirement): res for reqs in groups.values()
               for res in _group(conn, reqs)}
    return [Result(req, _writable(Path(req.path))) if req.path is not None
            else answers[id(req)] for req in unique]


#: A shard's questions are given up after its foreign server's ``connect_timeout`` (10 s when
#: it has none) and this much more: libpq's connect_timeout bounds dblink's connection on
#: PostgreSQL 15, but a link that takes the connection and never answers kept 18's waiting.
REMOTE_GRACE_S = 5


def _group(conn: Connection, requirements: list[Requirement]) -> list[Result]:
    """The answers of requirements asked of one server (or of this database), those of a
    shard under a statement_timeout (``REMOTE_GRACE_S``)."""
    server = requirements[0].server
    if server is None:
        return _group_asked(conn, requirements)
    row = conn.execute(
        "SELECT current_setting('statement_timeout'), set_config('statement_timeout', ("
        "coalesce((SELECT option_value FROM pg_options_to_table((SELECT srvoptions FROM"
        " pg_foreign_server WHERE srvname = %s)) WHERE option_name = 'connect_timeout'),"
        " '10')::int + %s) * 1000 || '', false)", [server, REMOTE_GRACE_S]).fetchone()
    try:
        return _group_asked(conn, requirements)
    finally:
        if row is not None:
            conn.execute("SELECT set_config('statement_timeout', %s, false)", [row[0]])


def _group_asked(conn: Connection, requirements: list[Requirement]) -> list[Result]:
    """In one statement when the connection allows it (``_together``), else, or when that
    fails for another reason than the server being out of reach, one by one to say which
    failed and why. Out of reach (a dblink connection that failed, SQLSTATE class 08, or
    that did not answer in time) answers for the whole group: asking again would only wait
    again."""
    try:
        together = _together(conn, requirements)
    except psycopg.Error as exc:
        if not _unreachable(requirements[0], exc):
            together = None
        else:
            return [Result(r, False, _detail(r, exc), away=True) for r in requirements]
    if together is not None:
        return [Result(r, ok) for r, ok in zip(requirements, together, strict=True)]
    out: list[Result] = []
    for req in requirements:
        try:
            out.append(Result(req, _ask(conn, req)))
        except psycopg.Error as exc:
            if _unreachable(req, exc):
                return out + [Result(r, False, _detail(r, exc), away=True)
                              for r in requirements[len(out):]]
            out.append(Result(req, False, _detail(req, exc)))
    return out


def _ask(conn: Connection, req: Requirement) -> bool:
    if conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE:
        # a statement of its own fails alone: no transaction to keep it in
        row = conn.execute(req.query.encode()).fetchone()
    else:
        with conn.transaction():
            row = conn.execute(req.query.encode()).fetchone()
    return bool(row and row[0])


def _unreachable(req: Requirement, exc: psycopg.Error) -> bool:
    """dblink could not connect to ``req``'s server (08001) or it did not answer before the
    statement_timeout (57014), not a question that failed."""
    state = exc.sqlstate or ""
    return req.server is not None and (state.startswith("08") or state == "57014")


def _detail(req: Requirement, exc: psycopg.Error) -> str:
    first = str(exc).strip().splitlines()[0]
    if not _unreachable(req, exc):
        return first
    why = (exc.diag.message_detail or "").strip().splitlines()
    return f"server {req.server} is out of reach: {first}" + (f" ({why[0]})" if why else "")


def _together(conn: Connection, requirements: list[Requirement]) -> list[bool] | None:
    """Every requirement's answer in one statement (one round trip: each query is a scalar
    subquery of it); None when they are too few or the connection is not idle in autocommit
    (only there does a failed statement of its own change nothing). A failure is raised, for
    ``_group`` to tell a server out of reach from a question that failed."""
    if len(requirements) < 2 or not conn.autocommit \
            or conn.info.transaction_status != TransactionStatus.IDLE:
        return None
    query = sql.SQL("SELECT {}").format(sql.SQL(", ").join(
        sql.SQL("({})::bool").format(sql.SQL(r.query)) for r in requirements))
    row = conn.execute(query).fetchone()
    return [bool(v) for v in row] if row is not None else None


def _writable(p: Path) -> bool:
    """Can this process create files in ``p``? Tried for real (permission bits say yes to
    root on read-only and special file systems): the directory is created if missing, as the
    archive step would, and a probe file is written and removed."""
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".pgcleave-probe-"):
            pass
    except OSError:
        return False
    return True


def refuse_missing(conn: Connection, requirements: Sequence[Requirement], what: str) -> None:
    """Raise ``Refused`` (nothing changed) naming every requirement not met and its fix."""
    missing = [r for r in check(conn, requirements) if not r.ok]
    if not missing:
        return
    if all(r.away for r in missing):  # nothing the role lacks: the servers did not answer
        away = sorted({str(r.requirement.server) for r in missing})
        raise Refused(f"{what} cannot ask server {', '.join(away)} what it needs there; nothing "
                      f"was changed: {missing[0].detail}",
                      hint="start the server or fix the network, then run it again")
    user = str(conn.info.user)
    lines = [f"  - {r.requirement.what}" + (f" ({r.detail})" if r.detail else "")
             for r in missing]
    fixes = [f"  - {r.fix.replace('{user}', user)}" for r in missing]
    raise Refused(f"{what} needs what role {user} does not have here; nothing was changed:\n"
                  + "\n".join(lines), hint="\n" + "\n".join(fixes))
