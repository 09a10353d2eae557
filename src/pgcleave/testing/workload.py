"""Application-like writers: INSERT ... RETURNING, UPDATE, DELETE, key-moving UPDATE and reads,
each thread on its own connection and its own rows, remembering what it committed.

``verify`` then proves the table holds exactly what the writers committed: no row lost, none
duplicated, none changed behind their back. During the run every UPDATE/DELETE/read of a row
the writer knows to exist must find exactly one row; a miss means a row was invisible for a
moment (the failure mode of naive DELETE+INSERT moves) and is recorded as an anomaly.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import psycopg
from psycopg import sql

KeyFn = Callable[[random.Random], Any]


@dataclass
class Spec:
    table: sql.Composable  # e.g. sql.Identifier("public", "orders")
    key_col: str
    make_key: KeyFn
    id_col: str = "id"
    payload_col: str = "payload"
    extra: dict[str, Callable[[random.Random], Any]] = field(default_factory=dict)
    # Name the partition key in UPDATE/DELETE/SELECT too (``WHERE id = $1 AND key = $2``), as
    # an application on a table with hundreds of partitions does so that the planner prunes
    # to one partition instead of locking and scanning every one.
    prune_by_key: bool = False


@dataclass
class WriterResult:
    expected: dict[Any, tuple[Any, str]] = field(default_factory=dict)
    deleted: set[Any] = field(default_factory=set)
    ops: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    max_stall_ms: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    # rows whose last write was in flight when the writer's connection broke (a server
    # restart): committed or not, nobody can tell; verify(connection_loss_ok=True) skips them
    in_doubt: set[Any] = field(default_factory=set)
    connection_lost: str | None = None
    # the row each error's statement was about (None for an INSERT), beside ``errors``
    error_rows: list[Any] = field(default_factory=list)


class Workload:
    WEIGHTS: ClassVar[dict[str, int]] = {
        "insert": 4, "update": 2, "delete": 1, "move": 2, "read": 2}

    def __init__(self, dsn: str, spec: Spec, *, writers: int = 4, seed: int = 1,
                 max_seconds: float = 60.0, pause_s: float = 0.0,
                 weights: dict[str, int] | None = None, server_log: str | None = None) -> None:
        self.dsn = dsn
        self.spec = spec
        self.n = writers
        self.seed = seed
        self.max_seconds = max_seconds
        self.pause_s = pause_s
        self.weights = weights or self.WEIGHTS
        self.results = [WriterResult() for _ in range(writers)]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = threading.Barrier(writers + 1)
        self.server_log_path = server_log
        self.server_log: StatementLog | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Workload:
        if self.server_log_path is not None:
            self.server_log = StatementLog(self.server_log_path)
        for i in range(self.n):
            t = threading.Thread(target=self._writer, args=(i,), daemon=True,
                                 name=f"writer-{i}")
            t.start()
            self._threads.append(t)
        self._started.wait(timeout=30)
        return self

    def stop(self) -> Workload:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.max_seconds + 30)
        return self

    def __enter__(self) -> Workload:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run_for(self, seconds: float) -> None:
        time.sleep(seconds)

    # -- summary -------------------------------------------------------------------------------
    @property
    def errors(self) -> list[str]:
        return [e for r in self.results for e in r.errors]

    @property
    def anomalies(self) -> list[str]:
        return [a for r in self.results for a in r.anomalies]

    @property
    def max_stall_ms(self) -> float:
        return max((r.max_stall_ms for r in self.results), default=0.0)

    @property
    def ops(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for r in self.results:
            for k, v in r.ops.items():
                total[k] = total.get(k, 0) + v
        return total

    def expected_rows(self) -> dict[Any, tuple[Any, str]]:
        rows: dict[Any, tuple[Any, str]] = {}
        for r in self.results:
            rows.update(r.expected)
        return rows

    def summary(self) -> str:
        text = (f"writers={self.n} ops={self.ops} errors={len(self.errors)} "
                f"anomalies={len(self.anomalies)} longest_stall_ms={self.max_stall_ms:.1f}")
        if self.server_log is not None:
            slow = self.server_log.slow()  # the log read once
            text += f" longest_server_ms={slow[0][0] if slow else 0.0:.1f} {slow[:2]}"
        return text

    @property
    def max_lock_wait_ms(self) -> float:
        """The writers' longest lock wait as their server logged it (``server_log``, with
        log_lock_waits on: waits under deadlock_timeout count as 0)."""
        assert self.server_log is not None, "Workload(server_log=...) reads the server's times"
        return max(self.server_log.lock_waits(), default=0.0)

    @property
    def max_server_ms(self) -> float:
        """The writers' longest statement as their server timed it (needs ``server_log``: the
        server's log file, with log_min_duration_statement set)."""
        assert self.server_log is not None, "Workload(server_log=...) reads the server's times"
        slow = self.server_log.slow()
        return slow[0][0] if slow else 0.0

    def verify(self, conn: psycopg.Connection[Any], *, connection_loss_ok: bool = False,
               fault_error: Callable[[str], bool] | None = None) -> None:
        """Assert the table holds every committed write exactly once. With
        ``connection_loss_ok`` (a fault that restarts the writers' own server), a writer whose
        connection broke is no error, and the write it had in flight is not judged. An error
        ``fault_error`` says the fault itself caused (a shard cut off) is no error either,
        and the row it was about is not judged."""
        s = self.spec
        dup = conn.execute(sql.SQL("SELECT {id}, count(*) FROM {t} GROUP BY {id} HAVING "
                                   "count(*) > 1 LIMIT 5").format(
            id=sql.Identifier(s.id_col), t=s.table)).fetchall()
        assert not dup, f"duplicated rows: {dup}"
        mine = {i for r in self.results for i in (*r.expected, *r.deleted)}
        rows = {r[0]: (r[1], r[2]) for r in conn.execute(
            sql.SQL("SELECT {id}, {k}, {p} FROM {t} WHERE {id} = ANY(%s)").format(
                id=sql.Identifier(s.id_col), k=sql.Identifier(s.key_col),
                p=sql.Identifier(s.payload_col), t=s.table), [list(mine)])}
        expected = self.expected_rows()
        doubt = {i for r in self.results for i in r.in_doubt} if connection_loss_ok else set()
        if fault_error is not None:
            doubt |= {rid for r in self.results for e, rid in zip(r.errors, r.error_rows,
                                                                  strict=True)
                      if fault_error(e) and rid is not None}
        expected = {i: v for i, v in expected.items() if i not in doubt}
        missing = [i for i in expected if i not in rows]
        assert not missing, f"{len(missing)} committed rows lost, e.g. {missing[:5]}"
        resurrected = [i for r in self.results for i in r.deleted
                       if i in rows and i not in doubt]
        assert not resurrected, f"{len(resurrected)} deleted rows came back: {resurrected[:5]}"
        wrong = [(i, rows[i], v) for i, v in expected.items() if rows[i] != v]
        assert not wrong, f"{len(wrong)} rows differ from the last committed write: {wrong[:3]}"
        errors = [e for r in self.results for e in r.errors
                  if not (connection_loss_ok and r.connection_lost == e)
                  and not (fault_error is not None and fault_error(e))]
        assert not errors, f"writers got errors: {errors[:5]}"
        assert not self.anomalies, f"rows invisible for a moment: {self.anomalies[:5]}"

    # -- the writer ----------------------------------------------------------------------------
    def _writer(self, i: int) -> None:
        try:
            self._write(i)
        except Exception as exc:  # a crashed writer must fail verify(), never pass silently
            self.results[i].errors.append(f"writer {i} crashed: {type(exc).__name__}: {exc}")
            self.results[i].error_rows.append(None)

    def _write(self, i: int) -> None:
        res = self.results[i]
        rng = random.Random(self.seed * 1000 + i)
        s = self.spec
        ident = {"t": s.table, "id": sql.Identifier(s.id_col), "k": sql.Identifier(s.key_col),
                 "p": sql.Identifier(s.payload_col)}
        cols = [s.key_col, s.payload_col, *s.extra]
        q_insert = sql.SQL("INSERT INTO {t} ({cols}) VALUES ({vals}) RETURNING {id}").format(
            cols=sql.SQL(", ").join(map(sql.Identifier, cols)),
            vals=sql.SQL(", ").join(sql.Placeholder() * len(cols)), **ident)
        where = sql.SQL("{id} = %s AND {k} = %s" if s.prune_by_key else "{id} = %s").format(
            **ident)
        q_update = sql.SQL("UPDATE {t} SET {p} = %s WHERE {w}").format(w=where, **ident)
        q_move = sql.SQL("UPDATE {t} SET {k} = %s, {p} = %s WHERE {w}").format(w=where, **ident)
        q_delete = sql.SQL("DELETE FROM {t} WHERE {w}").format(w=where, **ident)
        q_read = sql.SQL("SELECT {k}, {p} FROM {t} WHERE {w}").format(w=where, **ident)

        def match(rid: Any) -> list[Any]:
            return [rid, res.expected[rid][0]] if s.prune_by_key else [rid]

        ops = [k for k, w in self.weights.items() for _ in range(w)]
        deadline = time.monotonic() + self.max_seconds
        seq = 0
        try:
            conn = psycopg.connect(self.dsn, autocommit=True, application_name=f"writer-{i}")
        except psycopg.Error as exc:
            res.errors.append(f"connect: {exc}")
            res.error_rows.append(None)
            self._started.wait(timeout=30)
            return
        self._started.wait(timeout=30)
        with conn:
            while not self._stop.is_set() and time.monotonic() < deadline:
                op = rng.choice(ops)
                ids = list(res.expected)
                if op != "insert" and not ids:
                    op = "insert"
                seq += 1
                payload = f"w{i}-{seq}"
                rid: Any = None
                t0 = time.monotonic()
                try:
                    if op == "insert":
                        key = s.make_key(rng)
                        extra = [f(rng) for f in s.extra.values()]
                        row = conn.execute(q_insert, [key, payload, *extra]).fetchone()
                        assert row is not None
                        res.expected[row[0]] = (key, payload)
                    elif op == "update":
                        rid = rng.choice(ids)
                        n = conn.execute(q_update, [payload, *match(rid)]).rowcount
                        self._check(res, op, rid, n)
                        if n == 1:
                            res.expected[rid] = (res.expected[rid][0], payload)
                    elif op == "move":
                        rid = rng.choice(ids)
                        key = s.make_key(rng)
                        n = conn.execute(q_move, [key, payload, *match(rid)]).rowcount
                        self._check(res, op, rid, n)
                        if n == 1:
                            res.expected[rid] = (key, payload)
                    elif op == "delete":
                        rid = rng.choice(ids)
                        n = conn.execute(q_delete, match(rid)).rowcount
                        self._check(res, op, rid, n)
                        if n == 1:
                            del res.expected[rid]
                            res.deleted.add(rid)
                    else:
                        rid = rng.choice(ids)
                        found = conn.execute(q_read, match(rid)).fetchall()
                        self._check(res, op, rid, len(found))
                        if len(found) == 1 and tuple(found[0]) != res.expected[rid]:
                            res.anomalies.append(f"read {rid}: {tuple(found[0])} != "
                                                 f"{res.expected[rid]}")
                except psycopg.Error as exc:
                    res.errors.append(f"{op}: {type(exc).__name__}: {str(exc).strip()}")
                    res.error_rows.append(rid)
                    if conn.closed or conn.broken:
                        res.connection_lost = res.errors[-1]
                        if rid is not None:
                            res.in_doubt.add(rid)
                        return
                elapsed = (time.monotonic() - t0) * 1000
                res.latencies_ms.append(elapsed)
                res.max_stall_ms = max(res.max_stall_ms, elapsed)
                res.ops[op] = res.ops.get(op, 0) + 1
                if self.pause_s:
                    time.sleep(self.pause_s)

    @staticmethod
    def _check(res: WriterResult, op: str, rid: Any, n: int) -> None:
        if n != 1:
            res.anomalies.append(f"{op} of row {rid} touched {n} rows (expected 1)")


class StatementLog:
    """The writers' statements as their server timed them: every one that ran longer than
    ``log_min_duration_statement`` is logged with its length, measured by the server, so a
    client thread scheduled late on a busy machine does not inflate it (lock waits count,
    the client's own delays do not). Read from where the log stood when the writers
    started; statements under the threshold are not logged (they count as 0)."""

    LINE = re.compile(r"^(\S+ \S+) \S+ \[\d+\] (writer-\d+) LOG:  duration: ([\d.]+) ms  "
                      r"(?:statement|execute[^:]*|parse[^:]*|bind[^:]*): (.{0,80})")

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = os.path.getsize(path)

    WAIT = re.compile(r" (writer-\d+) LOG:  process \d+ acquired (\S+) on (.+?) after "
                      r"([\d.]+) ms")

    def lock_waits(self) -> list[float]:
        """The writers' lock waits the server logged (``log_lock_waits``: those longer than
        ``deadlock_timeout``), in ms, as it measured them."""
        with open(self.path, encoding="utf-8", errors="replace") as f:
            f.seek(self.offset)
            return [float(m[4]) for m in map(self.WAIT.search, f) if m]

    def slow(self) -> list[tuple[float, str]]:
        """(ms, which writer ran what), longest first."""
        return sorted(((ms, who) for ms, who, _ in self.timed()), reverse=True)

    def timed(self) -> list[tuple[float, str, datetime]]:
        """(ms, which writer ran what, when it ended: the server's clock, UTC), in log order
        (the sandbox's log_line_prefix starts with %m, the server's time with milliseconds)."""
        with open(self.path, encoding="utf-8", errors="replace") as f:
            f.seek(self.offset)
            return [(float(m[3]), f"{m[2]}: {m[4]}",
                     datetime.fromisoformat(m[1]).replace(tzinfo=UTC))
                    for m in map(self.LINE.search, f) if m]


class Referencing:
    """Writers on a table whose foreign key points at the table being converted: each thread
    INSERTs (RETURNING its id) rows referencing one of ``parents`` (key values no other writer
    deletes), re-points its own rows at another parent and DELETEs some, remembering what it
    committed. ``verify`` proves the table holds exactly that and no writer got an error (a
    refused reference would be one: the foreign key, re-pointed or emulated, lost a parent)."""

    def __init__(self, dsn: str, table: sql.Composable, columns: list[str],
                 parents: list[tuple[Any, ...]], *, writers: int = 2, seed: int = 7,
                 id_col: str = "id", max_seconds: float = 60.0) -> None:
        self.dsn, self.table, self.columns, self.parents = dsn, table, columns, parents
        self.id_col, self.max_seconds, self.seed = id_col, max_seconds, seed
        self.expected: dict[Any, tuple[Any, ...]] = {}
        self.inserted: set[Any] = set()  # every id a writer committed (rows before: not ours)
        self.errors: list[str] = []
        self.ops = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._writer, args=(i,), daemon=True)
                         for i in range(writers)]

    def start(self) -> Referencing:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> Referencing:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.max_seconds + 30)
        return self

    def __enter__(self) -> Referencing:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _writer(self, i: int) -> None:
        rng = random.Random(self.seed * 1000 + i)
        cols = sql.SQL(", ").join(map(sql.Identifier, self.columns))
        ph = sql.SQL(", ").join(sql.Placeholder() * len(self.columns))
        idc = sql.Identifier(self.id_col)
        q_insert = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING {}").format(
            self.table, cols, ph, idc)
        q_update = sql.SQL("UPDATE {} SET ({}) = ROW({}) WHERE {} = %s").format(
            self.table, cols, ph, idc)
        q_delete = sql.SQL("DELETE FROM {} WHERE {} = %s").format(self.table, idc)
        mine: list[Any] = []
        deadline = time.monotonic() + self.max_seconds
        try:
            conn = psycopg.connect(self.dsn, autocommit=True, application_name=f"ref-{i}")
        except psycopg.Error as exc:
            with self._lock:
                self.errors.append(f"connect: {exc}")
            return
        with conn:
            while not self._stop.is_set() and time.monotonic() < deadline:
                op = rng.choice(["insert", "insert", "update", "delete"]) if mine else "insert"
                ref = rng.choice(self.parents)
                try:
                    if op == "insert":
                        row = conn.execute(q_insert, list(ref)).fetchone()
                        assert row is not None
                        mine.append(row[0])
                        with self._lock:
                            self.expected[row[0]] = ref
                            self.inserted.add(row[0])
                    elif op == "update":
                        rid = rng.choice(mine)
                        conn.execute(q_update, [*ref, rid])
                        with self._lock:
                            self.expected[rid] = ref
                    else:
                        rid = mine.pop(rng.randrange(len(mine)))
                        conn.execute(q_delete, [rid])
                        with self._lock:
                            del self.expected[rid]
                    self.ops += 1
                except psycopg.Error as exc:
                    with self._lock:
                        self.errors.append(f"{op}: {type(exc).__name__}: {str(exc).strip()}")
                    if conn.closed or conn.broken:
                        return

    def verify(self, conn: psycopg.Connection[Any]) -> None:
        assert not self.errors, f"referencing writers got errors: {self.errors[:5]}"
        # rows that were there before the writers started are not theirs to account for
        assert self.ops > 0, "the referencing writers wrote nothing"
        cols = sql.SQL(", ").join(map(sql.Identifier, self.columns))
        got = {r[0]: tuple(r[1:]) for r in conn.execute(sql.SQL("SELECT {}, {} FROM {}").format(
            sql.Identifier(self.id_col), cols, self.table)) if r[0] in self.inserted}
        assert got == self.expected, (
            f"{len(got)} rows, {len(self.expected)} committed; differing: "
            f"{sorted(set(got.items()) ^ set(self.expected.items()))[:5]}")
