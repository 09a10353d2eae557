"""Being gentle on the application while bulk work runs: batches bounded by time, and a
throttle on what the database reports.

Two pieces every bulk loop shares (the copy's fill, carve's and the DEFAULT drain's copy, move
by copy):

- ``Pacer`` sizes the next batch from the rate the last ones ran at, so each batch's
  transaction lasts about ``Settings.batch_time_ms`` (20 ms by default) whatever the machine's
  load. An application statement that meets a row a batch holds (the capture trigger's upsert
  of a row the batch inserted and has not committed) waits for that batch's commit, so the
  batch's duration is the bound of that wait. With ``--duty`` below 100 it also rests
  between batches so the loop works at most that share of the time (a core left to the
  application on a small machine). The default is 100: bench/impact.py measured no gain for
  pgbench from resting once batches are bounded, and a fill several times slower.
- ``Throttle`` samples the database between batches (at most every ``SAMPLE_EVERY_S``): active
  backends and sessions waiting on a lock (both without pgcleave's own sessions), the replay
  lag of standbys and logical subscribers (``pg_stat_replication``), and the 95th percentile
  of a small probe statement's duration. Over ``--max-load`` it pauses, says so in the
  progress, and goes on by itself once every figure is back under its limit; over
  ``--critical-load`` it raises ``Overloaded``: the job stops where its progress was last saved
  and ``pgcleave resume N`` continues it.

Limits are written ``active=20,lock_waits=5,lag=10s,probe_p95=50ms`` (any subset; ``lag`` and
``probe_p95`` take ``ms`` or ``s``, a bare number being seconds for ``lag`` and milliseconds
for ``probe_p95``).
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields

from .connection import Connection, Settings, connect
from .errors import Overloaded, Refused, UsageError

#: How often the throttle asks the database at most (between batches; a pause re-asks at
#: this pace too).
SAMPLE_EVERY_S = 0.25

#: ``--duty auto`` rests while a sample of this many seconds back saw the application at work.
BUSY_MEMORY_S = 1.0

#: Probes kept for the percentile.
PROBE_WINDOW = 20

#: Never grow a batch by more than this factor from one batch to the next.
GROWTH = 2.0


@dataclass(frozen=True)
class Limits:
    """The figures a load is compared with; None: not limited."""

    active: int | None = None
    lock_waits: int | None = None
    lag_s: float | None = None
    probe_p95_ms: float | None = None

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    def exceeded(self, load: Load) -> list[str]:
        """What is over its limit, in words (empty: nothing)."""
        out = []
        if self.active is not None and load.active > self.active:
            out.append(f"active={load.active} > {self.active}")
        if self.lock_waits is not None and load.lock_waits > self.lock_waits:
            out.append(f"lock_waits={load.lock_waits} > {self.lock_waits}")
        if self.lag_s is not None and load.lag_s > self.lag_s:
            out.append(f"lag={load.lag_s:.1f}s > {self.lag_s:g}s")
        if self.probe_p95_ms is not None and load.probe_p95_ms > self.probe_p95_ms:
            out.append(f"probe_p95={load.probe_p95_ms:.0f}ms > {self.probe_p95_ms:g}ms")
        return out

    @property
    def wants_probe(self) -> bool:
        return self.probe_p95_ms is not None


_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s)?\s*$")


def _duration(text: str, default_unit: str) -> float:
    """Seconds from ``10s``, ``250ms`` or a bare number in ``default_unit``."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(text)
    value, unit = float(m.group(1)), m.group(2) or default_unit
    return value / 1000 if unit == "ms" else value


def parse_limits(text: str | None, option: str = "--max-load") -> Limits:
    """``active=20,lock_waits=5,lag=10s,probe_p95=50ms`` (any subset) -> Limits. Raises
    UsageError naming the option and the accepted keys."""
    if text is None or not text.strip():
        return Limits()
    keys = "active=N, lock_waits=N, lag=DURATION, probe_p95=DURATION"
    vals: dict[str, float | int] = {}
    for part in text.split(","):
        key, eq, value = (s.strip() for s in part.partition("="))
        try:
            if not eq:
                raise ValueError(part)
            if key in ("active", "lock_waits"):
                n = int(value)
                if n < 0:
                    raise ValueError(value)
                vals[key] = n
            elif key == "lag":
                vals["lag_s"] = _duration(value, "s")
            elif key == "probe_p95":
                vals["probe_p95_ms"] = _duration(value, "ms") * 1000
            else:
                raise UsageError(f"{option}: unknown figure {key!r} in {text!r}",
                                 hint=f"use any of {keys}, separated by commas")
        except ValueError:
            raise UsageError(f"{option}: cannot read {part.strip()!r} in {text!r}",
                             hint=f"write e.g. active=20,lock_waits=5,lag=10s,probe_p95=50ms "
                                  f"(any of {keys})") from None
    return Limits(**vals)  # type: ignore[arg-type]


def validate_limits(settings: Settings, conn: Connection | None = None) -> None:
    """Refuse malformed --max-load/--critical-load before anything changes; with ``conn``,
    also a ``lag`` limit the role cannot read (``pg_stat_replication`` shows the lag columns
    only to superusers and members of ``pg_read_all_stats``: the limit would never trip)."""
    limits = [parse_limits(settings.max_load, "--max-load"),
              parse_limits(settings.critical_load, "--critical-load")]
    if conn is None or all(x.lag_s is None for x in limits):
        return
    row = conn.execute("SELECT rolsuper OR pg_has_role(current_user, 'pg_read_all_stats',"
                       " 'USAGE') FROM pg_roles WHERE rolname = current_user").fetchone()
    if not (row and row[0]):
        raise Refused("a lag limit needs to read the replication lag of standbys and "
                      "subscribers, which pg_stat_replication shows only to superusers and "
                      "members of pg_read_all_stats; nothing was changed",
                      hint="GRANT pg_read_all_stats TO the role pgcleave runs as, or drop lag= "
                           "from the limits")


@dataclass(frozen=True)
class Load:
    active: int
    lock_waits: int
    lag_s: float
    probe_p95_ms: float
    # sessions in a statement or a transaction, or out of one for less than a second: the
    # application at work (an idle pool's connections are not)
    busy: int = 0

    def describe(self) -> str:
        return (f"active={self.active}, lock_waits={self.lock_waits}, lag={self.lag_s:.1f}s, "
                f"probe_p95={self.probe_p95_ms:.0f}ms")


# pgcleave's own sessions carry application_name pgcleave[:purpose] (connection.py); the
# walsenders of standbys and subscribers are not client backends.
_LOAD_SQL = """
SELECT count(*) FILTER (WHERE state = 'active'),
       count(*) FILTER (WHERE wait_event_type = 'Lock'),
       (SELECT coalesce(max(extract(epoch FROM replay_lag)), 0)
          FROM pg_stat_replication),
       count(*) FILTER (WHERE state <> 'idle'
                          OR state_change > now() - interval '1 second')
  FROM pg_stat_activity
 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
   AND application_name NOT LIKE %s
"""

#: The probe: a small statement that reads the catalog (it queues behind what slows the
#: server down: CPU, I/O, lock manager).
PROBE_SQL = "SELECT count(*) FROM pg_catalog.pg_class WHERE relkind = 'r'"


class Throttle:
    """Pauses a bulk loop while the database is over ``max_load``; raises ``Overloaded`` over
    ``critical_load``. ``check()`` is called between batches; it costs nothing when no limit
    is set and one small query per ``SAMPLE_EVERY_S`` otherwise (on its own connection,
    opened at the first sample, so it can be asked while the loop's connections are busy)."""

    def __init__(self, settings: Settings, report: Callable[[str, dict[str, object]], None],
                 *, job_id: int | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.max_load = parse_limits(settings.max_load, "--max-load")
        self.critical = parse_limits(settings.critical_load, "--critical-load")
        self.report = report
        self.job_id = job_id
        self._sleep = sleep
        self._conn: Connection | None = None
        self._probes: deque[float] = deque(maxlen=PROBE_WINDOW)
        self._last = 0.0
        self.paused_s = 0.0
        self.pauses = 0
        self._busy_at = -BUSY_MEMORY_S  # when a sample last saw the application at work
        self._busy_sampled = -SAMPLE_EVERY_S
        # the connections of one parallel copy share one throttle: one sample at a time,
        # and a pause holds every connection (they wait on this lock)
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return bool(self.max_load) or bool(self.critical)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Throttle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sample(self) -> Load:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.settings, purpose="throttle")
        conn = self._conn
        if self.max_load.wants_probe or self.critical.wants_probe:
            t0 = time.perf_counter()
            conn.execute(PROBE_SQL).fetchone()
            self._probes.append((time.perf_counter() - t0) * 1000)
        row = conn.execute(_LOAD_SQL, [self.settings.application_name + "%"]).fetchone()
        assert row is not None
        p95 = 0.0
        if self._probes:
            ordered = sorted(self._probes)
            p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        load = Load(int(row[0]), int(row[1]), float(row[2] or 0), p95, int(row[3]))
        if load.busy:
            self._busy_at = time.monotonic()
        return load

    def app_busy(self) -> bool:
        """Whether the application is at work (``--duty auto`` rests only then): one of its
        sessions was in a statement or a transaction, or had left one less than a second
        before, at a sample of the last ``BUSY_MEMORY_S``. Sampled at most every
        ``SAMPLE_EVERY_S``; without ``--duty auto`` always True (``--duty`` rests after every
        batch)."""
        if not self.settings.duty_auto:
            return True
        with self._lock:
            # a sample ``check()`` took just before answers this too
            if time.monotonic() - max(self._busy_sampled, self._last) >= SAMPLE_EVERY_S:
                self._busy_sampled = time.monotonic()
                self.sample()
        return time.monotonic() - self._busy_at < BUSY_MEMORY_S

    def check(self) -> None:
        """Return at once when under the limits (or sampled less than SAMPLE_EVERY_S ago);
        pause while over ``max_load``; raise ``Overloaded`` over ``critical_load``."""
        if not self.active or time.monotonic() - self._last < SAMPLE_EVERY_S:
            return
        with self._lock:
            self._check()

    def _check(self) -> None:
        if time.monotonic() - self._last < SAMPLE_EVERY_S:
            return
        paused_at: float | None = None
        while True:
            self._last = time.monotonic()
            load = self.sample()
            crit = self.critical.exceeded(load)
            if crit:
                job = f"pgcleave resume {self.job_id}" if self.job_id else "pgcleave resume"
                self.report(f"critical load ({', '.join(crit)}): stopping; resume with {job}",
                            {"critical": crit, "final": True})
                raise Overloaded(
                    f"stopped at critical load ({', '.join(crit)}; limit --critical-load "
                    f"{self.settings.critical_load}); the work done so far is kept",
                    hint=f"resume with {job} once the load is down", job_id=self.job_id)
            over = self.max_load.exceeded(load)
            if not over:
                if paused_at is not None:
                    s = time.monotonic() - paused_at
                    self.paused_s += s
                    self.report(f"load back under --max-load ({load.describe()}): going on "
                                f"after a pause of {s:.1f} s", {"resumed": True, "paused_s": s,
                                                                 "final": True})
                return
            if paused_at is None:
                paused_at = time.monotonic()
                self.pauses += 1
                self.report(f"paused: load over --max-load ({', '.join(over)}); going on by "
                            "itself once it is back under", {"paused": over, "final": True})
            self._sleep(SAMPLE_EVERY_S)


class RateLimit:
    """``--max-rate`` over every connection of one bulk copy: after each batch, ``add`` counts
    its rows and sleeps while the copy as a whole is ahead of the rate. Thread-safe (the
    connections of ``fill --jobs`` share one)."""

    def __init__(self, rows_per_s: float | None, *,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rows_per_s = rows_per_s
        self._sleep = sleep
        self._lock = threading.Lock()
        self._rows = 0
        self._started = time.monotonic()

    def add(self, rows: int) -> None:
        if not self.rows_per_s:
            return
        with self._lock:
            self._rows += rows
            ahead = self._rows / self.rows_per_s - (time.monotonic() - self._started)
        if ahead > 0:
            self._sleep(ahead)


class Pacer:
    """The size of the next batch, so that each batch's transaction lasts about ``target_ms``:
    ``units`` are what a batch is counted in (rows for keyset batches, blocks for block
    ranges). Starts at ``first`` (or ``cap`` if smaller), grows at most ``GROWTH`` times per
    batch, and shrinks at once after a batch that ran long. ``target_ms`` 0: fixed
    ``cap``-sized batches, as before time bounds existed."""

    def __init__(self, target_ms: float, cap: int, first: int, floor: int = 1, *,
                 duty: int = 100, sleep: Callable[[float], None] = time.sleep,
                 busy: Callable[[], bool] | None = None) -> None:
        self.target_s = target_ms / 1000
        self.duty = min(max(duty, 1), 100)
        # whether to rest at all after this batch (``Throttle.app_busy``): None, always
        self.busy = busy
        self.rests = 0
        self._sleep = sleep
        self._last_s = 0.0
        self.rested_s = 0.0
        self.cap = max(cap, 1)
        self.floor = max(min(floor, self.cap), 1)
        self.size = self.cap if target_ms <= 0 else max(min(first, self.cap), self.floor)
        self.longest_ms = 0.0

    def record(self, units: int, seconds: float, held_s: float | None = None) -> int:
        """After a batch of ``units`` whose statement ran ``seconds`` (and that held its
        transaction ``held_s``, the statement plus the batch's fixed costs: its lock, saving
        its position, the commit): the next size. The rate is the statement's alone: fixed
        costs do not shrink with the batch, and counting them in would drive the size down
        to nothing on a slow machine."""
        held = seconds if held_s is None else held_s
        self.longest_ms = max(self.longest_ms, held * 1000)
        self._last_s = held
        if self.target_s <= 0 or units <= 0:
            return self.size
        rate = units / max(seconds, 1e-4)
        want = rate * self.target_s * 0.8  # aim under the target: batches vary
        nxt = min(want, self.size * GROWTH)
        self.size = int(max(self.floor, min(self.cap, nxt)))
        return self.size

    def rest(self) -> float:
        """Between two batches: rest so the loop works ``duty`` percent of the time (the last
        batch's length times (100 - duty) / duty), leaving the rest of a core to the
        application. At 100, return at once. Returns the seconds rested."""
        if self.duty >= 100 or self._last_s <= 0:
            return 0.0
        if self.busy is not None and not self.busy():
            return 0.0
        pause = self._last_s * (100 - self.duty) / self.duty
        self.rested_s += pause
        self.rests += 1
        self._sleep(pause)
        return pause
