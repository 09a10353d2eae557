"""Throwaway local PostgreSQL clusters (initdb + pg_ctl) on free loopback ports.

Used by ``pgcleave sandbox``, ``pgcleave demo`` and the test suite. Each cluster gets the
settings the rest of pgcleave relies on: ``wal_level=logical`` (online moves),
``max_prepared_transactions`` (two-phase DDL on shards), and the contrib modules postgres_fdw and
dblink. Durability is traded for speed (``fsync=off``): these servers hold nothing of value.

initdb refuses to run as root, so when we are root every server command runs as an unprivileged
user (``postgres`` by default, created if missing) that owns the data directories.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import PgcleaveError, Refused

SERVER_SETTINGS: dict[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "wal_level": "logical",
    "max_prepared_transactions": "64",
    "max_wal_senders": "16",
    "max_replication_slots": "16",
    "max_logical_replication_workers": "8",
    "max_worker_processes": "16",
    "max_connections": "200",
    "max_locks_per_transaction": "256",
    "shared_buffers": "256MB",
    "maintenance_work_mem": "256MB",
    # fsync=off keeps commits in the OS cache, which survives a crash of the server (kill -9,
    # pg_ctl -m immediate) but not of the machine: enough for throwaway servers. With
    # synchronous_commit on, a crash test then loses no committed transaction, as on a real
    # server; it costs little, since nothing waits for a disk flush.
    "fsync": "off",
    "synchronous_commit": "on",
    "full_page_writes": "off",
    "checkpoint_timeout": "15min",
    "max_wal_size": "4GB",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] %a '",
}


class SandboxError(PgcleaveError):
    pass


@dataclass
class Server:
    name: str
    port: int
    datadir: str
    host: str = "127.0.0.1"
    user: str = "postgres"
    dbname: str = "postgres"

    @property
    def dsn(self) -> str:
        return self.dsn_for(self.dbname)

    def dsn_for(self, dbname: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    @property
    def logfile(self) -> str:
        return str(Path(self.datadir).parent / f"{self.name}.log")


def find_bindir() -> Path:
    """PostgreSQL server binaries: $PGCLEAVE_PG_BIN, ``pg_config --bindir``, then the newest
    ``/usr/lib/postgresql/*/bin``."""
    candidates: list[Path] = []
    if env := os.environ.get("PGCLEAVE_PG_BIN"):
        candidates.append(Path(env))
    if shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                                 check=True).stdout.strip()
            candidates.append(Path(out))
    def major(p: str) -> int:
        name = Path(p).parent.name
        return int(name) if name.isdigit() else 0

    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major, reverse=True)
    candidates += [Path(p) for p in versions]
    for c in candidates:
        if (c / "initdb").exists() and (c / "pg_ctl").exists():
            return c
    raise SandboxError(
        "no PostgreSQL server binaries found (initdb, pg_ctl)",
        hint="install them (apt-get install -y postgresql postgresql-contrib) "
             "or set PGCLEAVE_PG_BIN to their directory",
    )


def default_dir() -> Path:
    """One state directory per user. Root's lives outside /root so the server user can reach it."""
    if os.geteuid() == 0:
        return Path("/var/lib/pgcleave/sandbox")
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "pgcleave" / "sandbox"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sandbox:
    """A directory of throwaway clusters, described by ``servers.json`` inside it."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.dir = Path(directory) if directory else default_dir()
        self.state_file = self.dir / "servers.json"
        self.servers: list[Server] = self._load()

    # -- state ---------------------------------------------------------------------------
    def _load(self) -> list[Server]:
        if not self.state_file.exists():
            return []
        return [Server(**s) for s in json.loads(self.state_file.read_text())]

    def _save(self) -> None:
        self.state_file.write_text(json.dumps([asdict(s) for s in self.servers], indent=2))

    def server(self, name: str) -> Server:
        for s in self.servers:
            if s.name == name:
                return s
        raise Refused(f"no sandbox server named {name!r} in {self.dir}")

    # -- running commands as the server user ----------------------------------------------
    def _run(self, args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        run_as = _server_user()
        extra: dict[str, object] = {}
        if run_as is not None:
            extra = {"user": run_as.pw_uid, "group": run_as.pw_gid, "extra_groups": []}
        env = dict(os.environ, LC_ALL="C.UTF-8", LANG="C.UTF-8")
        try:
            proc: subprocess.CompletedProcess[str] = subprocess.run(  # type: ignore[call-overload]
                args, capture_output=True, text=True, check=True, env=env, cwd="/", **extra, **kw)
            return proc
        except subprocess.CalledProcessError as exc:
            raise SandboxError(f"{Path(args[0]).name} failed: {(exc.stderr or exc.stdout).strip()}"
                               ) from None

    def _prepare_dir(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        run_as = _server_user()
        if run_as is not None:
            # The server user must traverse to its data directory and write its log next to it.
            for p in [self.dir, *self.dir.parents]:
                if p == Path("/"):
                    break
                mode = p.stat().st_mode
                if not mode & 0o001:
                    os.chmod(p, mode | 0o001)
            os.chown(self.dir, run_as.pw_uid, run_as.pw_gid)

    # -- lifecycle ---------------------------------------------------------------------------
    def up(self, count: int = 2) -> list[Server]:
        """Start ``count`` servers named db1..dbN; servers already there are started again."""
        if count < 1:
            raise Refused("--servers must be at least 1")
        bindir = find_bindir()
        self._prepare_dir()
        existing = {s.name for s in self.servers}
        new = [f"db{i}" for i in range(1, count + 1) if f"db{i}" not in existing]
        with ThreadPoolExecutor(max_workers=4) as pool:
            created = list(pool.map(lambda n: self._init(bindir, n), new))
        self.servers = sorted([*self.servers, *created], key=lambda s: int(s.name[2:] or 0))
        self._save()
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda s: self.start(s.name), self.servers))
        self._save()
        return self.servers

    def _init(self, bindir: Path, name: str) -> Server:
        datadir = self.dir / name
        if datadir.exists():
            shutil.rmtree(datadir)
        self._run([str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust",
                   "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"])
        conf = "\n".join(f"{k} = {v}" for k, v in SERVER_SETTINGS.items())
        self._append(datadir / "postgresql.conf", f"\n# pgcleave sandbox\n{conf}\n")
        self._append(datadir / "pg_hba.conf",
                     "\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n")
        return Server(name=name, port=0, datadir=str(datadir))

    def _append(self, path: Path, text: str) -> None:
        with open(path, "a") as f:
            f.write(text)

    def is_running(self, name: str) -> bool:
        s = self.server(name)
        return (Path(s.datadir) / "postmaster.pid").exists() and _accepts(s.port)

    def start(self, name: str) -> Server:
        """Start a server (again), on its old port when free, else on a new free port."""
        bindir = find_bindir()
        s = self.server(name)
        if self.is_running(name):
            return s
        for attempt in range(5):
            if s.port == 0 or attempt > 0 or _accepts(s.port):
                s.port = free_port()
            try:
                self._run([str(bindir / "pg_ctl"), "-D", s.datadir, "-l", s.logfile, "-w",
                           "-t", "60", "-o", f"-p {s.port}", "start"])
            except SandboxError:
                if attempt == 4:
                    raise
                continue
            break
        self._save()
        return s

    def stop(self, name: str, mode: str = "fast") -> None:
        """Stop one server (``mode`` as pg_ctl: smart, fast, immediate)."""
        s = self.server(name)
        if not (Path(s.datadir) / "postmaster.pid").exists():
            return
        with contextlib.suppress(SandboxError):
            self._run([str(find_bindir() / "pg_ctl"), "-D", s.datadir, "-m", mode, "-w",
                       "-t", "60", "stop"])

    def down(self) -> None:
        """Stop every server and remove the directory."""
        for s in self.servers:
            self.stop(s.name, mode="immediate")
        if self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
        self.servers = []

    def password_role(self, role: str, password: str) -> None:
        """A login role on every server that must authenticate with its password
        (scram-sha-256), as on a managed service; other roles keep trust. Non-superuser
        postgres_fdw and dblink connections need this: the shard must ask for a password."""
        import psycopg
        from psycopg import sql

        for s in self.servers:
            hba = Path(s.datadir) / "pg_hba.conf"
            line = f"host all {role} 127.0.0.1/32 scram-sha-256\n"
            text = hba.read_text()
            if line not in text:
                hba.write_text(line + text)  # first match wins: before the trust lines
            with psycopg.connect(s.dsn, autocommit=True) as c:
                exists = c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone()
                c.execute(sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                    sql.SQL("ALTER" if exists else "CREATE"), sql.Identifier(role),
                    sql.Literal(password)))
                c.execute("SELECT pg_reload_conf()")

    def env_lines(self) -> list[str]:
        lines: list[str] = []
        for i, s in enumerate(self.servers):
            if i == 0:
                lines.append(f"export PGCLEAVE_DSN='{s.dsn}'")
            lines.append(f"export PGCLEAVE_DSN_{s.name.upper()}='{s.dsn}'")
        return lines


def _accepts(port: int) -> bool:
    if port == 0:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _server_user() -> pwd.struct_passwd | None:
    """The account servers run as when we are root (None when we are not root)."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("PGCLEAVE_SANDBOX_USER", "postgres")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        name], check=True)
        return pwd.getpwnam(name)


@contextlib.contextmanager
def temporary(count: int = 2, directory: str | None = None) -> Iterator[Sandbox]:
    """A sandbox that is removed on exit (tests, demo)."""
    import tempfile

    d = directory or tempfile.mkdtemp(prefix="pgcleave-")
    sb = Sandbox(d)
    try:
        sb.up(count)
        yield sb
    finally:
        sb.down()


def wait_ready(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _accepts(port):
            return
        time.sleep(0.05)
    raise SandboxError(f"server on port {port} did not come up within {timeout:.0f}s")
