"""Change capture by key log: a trigger that records the primary key of every row the
application writes on a table being copied, so the copy is brought up to date by replaying the
log (carve, maintain's DEFAULT drain, move's copy method) instead of repeating each write."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from ..names import QualifiedName
from .tables import collist


def key_log_function(fname: QualifiedName, log: QualifiedName, pk: list[str], *,
                     definer: bool = False) -> sql.Composable:
    """An AFTER ROW trigger function on the source: logs the primary key of the old row and
    of the new one (once when the key did not change). Nothing else: the copies are brought
    up to date by replaying the log, so writers pay one small insert per row they write.

    ``definer``: the function runs as its owner (who owns the log), so application roles
    writing the source need no privilege on the log or its schema."""
    def row(r: str) -> sql.Composed:
        return sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.SQL(r), sql.Identifier(c))
                                  for c in pk)

    def ins(r: str) -> sql.Composed:
        return sql.SQL("INSERT INTO {} ({}) VALUES ({});").format(log.ident, collist(pk), row(r))

    body = sql.SQL(
        "BEGIN IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND ({o}) IS DISTINCT FROM ({n})) THEN "
        "{io} END IF; IF TG_OP <> 'DELETE' THEN {inn} END IF; RETURN NULL; END").format(
        o=row("OLD"), n=row("NEW"), io=ins("OLD"), inn=ins("NEW"))
    extra = sql.SQL(" SECURITY DEFINER SET search_path = pg_catalog, pg_temp" if definer else "")
    return sql.SQL("CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql{} AS {}").format(
        fname.ident, extra, sql.Literal(body.as_string(None)))


#: The session settings of both ends of a copy between servers: the text form of dates,
#: intervals, floats and bytea is then read back as it was written (and hashes the same).
PORTABLE_SETTINGS = ["SET TimeZone = 'UTC'", "SET DateStyle = 'ISO, MDY'",
                     "SET IntervalStyle = 'postgres'", "SET extra_float_digits = 3",
                     "SET bytea_output = 'hex'"]

#: Keep a replay on index lookups of the few logged keys (see carve's replay: the disabled
#: plan types would otherwise switch JIT on, hundreds of ms per replay).
REPLAY_SETTINGS = ["SET LOCAL enable_seqscan = off", "SET LOCAL enable_hashjoin = off",
                   "SET LOCAL enable_mergejoin = off", "SET LOCAL jit = off"]

KEYS_TABLE = "pgcleave_replay_keys"


@dataclass(frozen=True)
class CopyAcross:
    """The statements that copy a table's rows to a table on another server through two
    connections (``COPY ... TO STDOUT`` streamed into ``COPY ... FROM STDIN``), and that
    replay a key log kept on the source side:

    - bulk: on the source, in one REPEATABLE READ snapshot, ``bulk_out``; on the destination,
      in one transaction, ``truncate`` then ``rows_in``;
    - replay: on the source, in one REPEATABLE READ snapshot T, ``keys_out`` and ``rows_out``
      (the logged keys and those keys' rows as of T); on the destination, in one transaction,
      ``keys_table``, ``keys_in``, ``delete`` (the rows of those keys), ``rows_in``; once the
      destination committed, ``consume`` on the source, still in T: it deletes exactly the
      log rows visible at T. A log row written after T stays for the next replay; a replay cut
      short anywhere leaves its log rows, and replaying them again is harmless."""

    src: QualifiedName
    dst: QualifiedName
    log: QualifiedName
    columns: list[str]
    pk: list[str]
    binary: bool

    def _fmt(self) -> sql.Composable:
        return sql.SQL(" (FORMAT binary)" if self.binary else "")

    def _in_log(self) -> sql.Composable:
        k = collist(self.pk)
        return sql.SQL("({}) IN (SELECT {} FROM {})").format(k, k, self.log.ident)

    @property
    def truncate(self) -> sql.Composed:
        return sql.SQL("TRUNCATE {}").format(self.dst.ident)

    @property
    def bulk_out(self) -> sql.Composed:
        return sql.SQL("COPY (SELECT {} FROM ONLY {}) TO STDOUT{}").format(
            collist(self.columns), self.src.ident, self._fmt())

    def key_range(self, types: list[str], after: list[str] | None,
                  upto: list[str] | None) -> sql.Composable:
        """The keys in ``(after, upto]`` (None: no bound on that side), compared as rows in
        the key's types: one share of a parallel copy (``--jobs``)."""
        k = collist(self.pk)

        def row(vals: list[str]) -> sql.Composable:
            return sql.SQL(", ").join(sql.SQL("CAST({} AS {})").format(sql.Literal(v), sql.SQL(t))
                                      for v, t in zip(vals, types, strict=True))

        conds = ([sql.SQL("({}) > ({})").format(k, row(after))] if after is not None else []) \
            + ([sql.SQL("({}) <= ({})").format(k, row(upto))] if upto is not None else [])
        return sql.SQL(" AND ").join(conds) if conds else sql.SQL("true")

    def range_out(self, cond: sql.Composable) -> sql.Composed:
        return sql.SQL("COPY (SELECT {} FROM ONLY {} WHERE {}) TO STDOUT{}").format(
            collist(self.columns), self.src.ident, cond, self._fmt())

    def range_delete(self, cond: sql.Composable) -> sql.Composed:
        """What an earlier try of a share left on the destination (its commit and the
        journal's are on two servers: a kill between them leaves the share copied but not
        recorded), deleted in the transaction that copies it again."""
        return sql.SQL("DELETE FROM ONLY {} WHERE {}").format(self.dst.ident, cond)

    @property
    def rows_in(self) -> sql.Composed:
        return sql.SQL("COPY {} ({}) FROM STDIN{}").format(
            self.dst.ident, collist(self.columns), self._fmt())

    @property
    def keys_out(self) -> sql.Composed:
        return sql.SQL("COPY (SELECT DISTINCT {} FROM {}) TO STDOUT{}").format(
            collist(self.pk), self.log.ident, self._fmt())

    @property
    def keys_table(self) -> sql.Composed:
        return sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM ONLY {} WITH NO "
                       "DATA").format(sql.Identifier(KEYS_TABLE), collist(self.pk),
                                      self.dst.ident)

    @property
    def keys_in(self) -> sql.Composed:
        return sql.SQL("COPY pg_temp.{} ({}) FROM STDIN{}").format(
            sql.Identifier(KEYS_TABLE), collist(self.pk), self._fmt())

    @property
    def delete(self) -> sql.Composed:
        k = collist(self.pk)
        return sql.SQL("DELETE FROM ONLY {} WHERE ({}) IN (SELECT {} FROM pg_temp.{})").format(
            self.dst.ident, k, k, sql.Identifier(KEYS_TABLE))

    @property
    def rows_out(self) -> sql.Composed:
        return sql.SQL("COPY (SELECT {} FROM ONLY {} WHERE {}) TO STDOUT{}").format(
            collist(self.columns), self.src.ident, self._in_log(), self._fmt())

    @property
    def consume(self) -> sql.Composed:
        return sql.SQL("DELETE FROM {}").format(self.log.ident)

    def shown(self, src_where: str, dst_where: str, catchup_keys: int) -> list[sql.Composable]:
        """What the bulk copy and its replays run, for the dry run."""
        c = sql.SQL
        return [
            c(f"-- on {src_where} (the source), one REPEATABLE READ snapshot:"),
            c("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"), self.bulk_out,
            c(f"-- on {dst_where} (the destination), one transaction, fed block by block:"),
            self.truncate, self.rows_in,
            c(f"-- then replays until fewer than {catchup_keys} keys were logged during the last"
              f" one; each replay: on {src_where}, one REPEATABLE READ snapshot T:"),
            c("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"),
            *map(c, REPLAY_SETTINGS), self.keys_out, self.rows_out,
            c(f"-- on {dst_where}, one transaction:"), *map(c, REPLAY_SETTINGS),
            self.keys_table, self.keys_in, self.delete, self.rows_in,
            c(f"-- on {src_where}, in T, once {dst_where} committed:"), self.consume]
