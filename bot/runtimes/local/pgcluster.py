"""loopgate's own PostgreSQL cluster for services' state, used where the configured server trusts
loopback logins (there any fork could log in as any role, or as the superuser, with no password).

Layout under `postgres_dir` (default `<state_dir>/postgres`, which confined code cannot see):

- `data/`: PGDATA, made by `initdb` once and kept, so a later start takes a fraction of a second;
- `socket/`: its Unix socket directory (no socket in /var/run/postgresql, no clash with a system server);
- `superuser.password` (0600): the random password of its superuser `postgres`;
- `cluster.json`: the port, the postmaster's `ProcessRef`, why the cluster runs;
- `cluster.lock`: held shared while a database is made, copied or dropped, exclusively to start or stop,
  so the cluster never stops under a copy in progress.

Every login needs a password (`scram-sha-256` for local and host connections), it listens on 127.0.0.1
only, and PUBLIC may not connect to `postgres` or `template1`. fsync, synchronous_commit and
full_page_writes are off: this is a sandbox cluster holding copies of seeded test state that loopgate
remakes at will; a kill of the server loses nothing committed, an OS crash may corrupt it, and then
deleting the directory is the fix.

Lifecycle: started on demand by whoever first needs a database; stopped when it holds no loopgate
database (`lg_*`) any more, that is when the last baseline with Postgres state stops (`env down`, the end
of a `verify` that owned its baseline); `gc` stops one left orphaned by a killed owner. Run by root,
`initdb` and `postgres` run as Debian's `postgres` user (PostgreSQL refuses root) through the
confinement module, which sees only the data and socket directories of loopgate's state dir.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
from pydantic import BaseModel

from bot.config import InfrastructureError
from bot.runtimes.local.confine import Confinement
from bot.runtimes.local.ports import free_port
from bot.runtimes.local.processes import ProcessRef, cause_line, stop_group

SUPERUSER = "postgres"
READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 15.0
_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "dynamic_shared_memory_type": "mmap",  # files in PGDATA: no /dev/shm inside the sandbox needed
    "logging_collector": "off",
}


class ClusterState(BaseModel):
    port: int
    process: ProcessRef
    reason: str


class OwnCluster:
    def __init__(self, root: Path, *, state_dir: Path, os_user: str = SUPERUSER) -> None:
        """`os_user`: whom `initdb` and `postgres` run as when loopgate runs as root."""
        self.root = root
        self.state_dir = state_dir
        self.os_user = os_user

    # -- paths -------------------------------------------------------------------------------------

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def _password_file(self) -> Path:
        return self.root / "superuser.password"

    @property
    def _state_file(self) -> Path:
        return self.root / "cluster.json"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    # -- use -----------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def in_use(self, reason: str) -> Iterator[str]:
        """The admin URL, with the cluster running (started if need be) and kept so for the block."""
        for _ in range(5):
            with self._lock(fcntl.LOCK_SH):
                state = self.running()
                if state is not None:
                    yield self.admin_url(state.port)
                    return
            with self._lock(fcntl.LOCK_EX):
                if self.running() is None:
                    self._start(reason)
        raise InfrastructureError(f"loopgate's own PostgreSQL cluster in {self.root} keeps stopping")

    def running(self) -> ClusterState | None:
        """The recorded state while its postmaster lives."""
        try:
            state = ClusterState.model_validate_json(self._state_file.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        return state if state.process.alive() else None

    def admin_url(self, port: int) -> str:
        password = self._password_file.read_text(encoding="utf-8").strip()
        return f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{port}/postgres"

    # -- stop ----------------------------------------------------------------------------------------

    def stop_if_unused(self) -> bool:
        """Stop the cluster when it holds no loopgate database; True when it was stopped."""
        if not self._state_file.exists():
            return False
        with self._lock(fcntl.LOCK_EX):
            state = self.running()
            if state is not None and _loopgate_databases(self.admin_url(state.port)) > 0:
                return False
            self._stop(state)
            return state is not None

    def stop(self) -> None:
        """Stop it whatever it holds (tests' end, `--all`)."""
        with self._lock(fcntl.LOCK_EX):
            self._stop(self.running())

    def _stop(self, state: ClusterState | None) -> None:
        """A fast shutdown (SIGINT to the postmaster), then whatever is left of its group is killed."""
        if state is not None:
            postmaster = _postmaster(state.process.pid)
            if postmaster is not None:
                with contextlib.suppress(psutil.Error):
                    postmaster.send_signal(signal.SIGINT)
                    postmaster.wait(timeout=STOP_GRACE_S)
            stop_group(state.process, grace=2)
        self._state_file.unlink(missing_ok=True)

    # -- start ---------------------------------------------------------------------------------------

    def _start(self, reason: str) -> None:
        """initdb once, then the postmaster on a free port (the previous one when still free)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o711)  # the postgres user passes through to data/, lists nothing
        confinement = self._confinement()
        existing = self.data / "PG_VERSION"
        bindir = find_bindir(existing.read_text().strip() if existing.is_file() else None)
        if not existing.is_file():
            self._initdb(bindir, confinement)
        self.socket_dir.mkdir(exist_ok=True)
        confinement.give(self.data, self.socket_dir)
        port = self._port()
        argv = [str(bindir / "postgres"), "-D", str(self.data), "-p", str(port)]
        settings = {**_SETTINGS, "unix_socket_directories": str(self.socket_dir)}
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        command = confinement.command(
            argv, cwd=self.data, writable=[self.data, self.socket_dir], die_with_parent=False
        )
        with self.log.open("ab") as out:
            process = subprocess.Popen(
                command,
                cwd=self.data,
                env=_server_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of the run that started it does not reach it
            )
        state = ClusterState(port=port, process=ProcessRef.of(process.pid), reason=reason)
        _write_atomic(self._state_file, state.model_dump_json())
        why = self._wait_ready(process, port)
        if why is not None:
            self._stop(state)
            raise InfrastructureError(
                f"loopgate's own PostgreSQL cluster did not start: {why}: {cause_line(self.log)}"
            )
        self._lock_down(port)

    def _port(self) -> int:
        with contextlib.suppress(FileNotFoundError, ValueError):
            previous = ClusterState.model_validate_json(self._state_file.read_text(encoding="utf-8")).port
            if _port_free(previous):
                return previous  # baselines started before a crash keep their URLs
        return free_port()

    def _wait_ready(self, process: subprocess.Popen[bytes], port: int) -> str | None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        last = "no answer"
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return f"postgres exited with code {process.returncode}"
            try:
                with psycopg.connect(self.admin_url(port), connect_timeout=2):
                    return None
            except psycopg.Error as exc:
                last = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            time.sleep(0.05)
        return f"not ready after {READY_TIMEOUT_S:g}s ({last})"

    def _lock_down(self, port: int) -> None:
        """Only roles loopgate grants may connect anywhere: not `postgres`, not `template1`."""
        with psycopg.connect(self.admin_url(port), autocommit=True) as conn:
            conn.execute("REVOKE CONNECT, TEMPORARY ON DATABASE postgres, template1 FROM PUBLIC")

    def _initdb(self, bindir: Path, confinement: Confinement) -> None:
        """A fresh PGDATA with a random superuser password; made aside and renamed, so a crash midway
        leaves no half-made data directory behind."""
        password = secrets.token_urlsafe(24)
        _write_secret(self._password_file, password + "\n")
        fresh, handover = self.root / "data.new", self.root / "initdb"
        for path in (fresh, handover):
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(mode=0o700)
        _write_secret(handover / "password", password + "\n")
        confinement.give(fresh, handover)
        argv = [
            str(bindir / "initdb"),
            f"--pgdata={fresh}",
            f"--username={SUPERUSER}",
            f"--pwfile={handover / 'password'}",
            "--auth-local=scram-sha-256",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ]
        command = confinement.command(argv, cwd=fresh, writable=[fresh, handover])
        try:
            done = subprocess.run(
                command, cwd=fresh, env=_server_env(), capture_output=True, text=True, timeout=300
            )
        finally:
            shutil.rmtree(handover, ignore_errors=True)
        if done.returncode != 0:
            why = (done.stderr.strip() or done.stdout.strip() or f"exit {done.returncode}").splitlines()[-1]
            raise InfrastructureError(f"initdb for loopgate's own PostgreSQL cluster failed: {why}")
        fresh.rename(self.data)

    def _confinement(self) -> Confinement:
        """As root, the unprivileged `os_user`; as anyone else, that user as they are."""
        if os.geteuid() != 0:
            return Confinement(enabled=False)
        try:
            entry = pwd.getpwnam(self.os_user)
        except KeyError:
            raise InfrastructureError(
                f"loopgate's own PostgreSQL cluster cannot run: PostgreSQL refuses to run as root and"
                f" this machine has no `{self.os_user}` user to run it as (install Debian's postgresql"
                f" package or `adduser --system {self.os_user}`), or set LOOPGATE_POSTGRES_MODE=server"
                f" with a server that checks passwords"
            ) from None
        base = Confinement.create(enabled=True, state_dir=self.state_dir, hide=[self.root])
        confinement = dataclasses.replace(base, uid=entry.pw_uid, gid=entry.pw_gid)
        confinement.check()
        return confinement

    @contextlib.contextmanager
    def _lock(self, how: int) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / "cluster.lock").open("a") as handle:
            fcntl.flock(handle, how)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def find_bindir(version: str | None = None) -> Path:
    """Where `initdb` and `postgres` live: `pg_config --bindir`, else the newest (or the `version`
    that made an existing data directory) of Debian's /usr/lib/postgresql/<version>/bin."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            if done.returncode == 0 and done.stdout.strip():
                candidates.append(Path(done.stdout.strip()))
    debian = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(debian, key=lambda p: _version_key(p.parent.name), reverse=True)
    for bindir in candidates:
        if not ((bindir / "initdb").is_file() and (bindir / "postgres").is_file()):
            continue
        if version is None or server_version(bindir) == version:
            return bindir
    wanted = f"PostgreSQL {version} " if version else "PostgreSQL "
    raise InfrastructureError(
        f"loopgate's own PostgreSQL cluster cannot run: no {wanted}server binaries (initdb, postgres)"
        " found via pg_config or in /usr/lib/postgresql/*/bin; install the postgresql package"
    )


def server_version(bindir: Path) -> str | None:
    """The major version, as PGDATA's PG_VERSION file spells it (`15`)."""
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"(\d+)(?:\.\d+)*", out)
    return match.group(1) if match else None


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name)) or (0,)


def _postmaster(leader: int) -> psutil.Process | None:
    """The postmaster: the leader itself, or (under bubblewrap) the `postgres` whose parent is not one."""
    try:
        tree = [psutil.Process(leader), *psutil.Process(leader).children(recursive=True)]
    except psutil.Error:
        return None
    for process in tree:
        with contextlib.suppress(psutil.Error):
            parent = process.parent()
            if process.name() == "postgres" and (parent is None or parent.name() != "postgres"):
                return process
    return None


def _loopgate_databases(admin_url: str) -> int:
    try:
        with psycopg.connect(admin_url, connect_timeout=5) as conn:
            row = conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'lg\\_%'").fetchone()
    except psycopg.Error:
        return 0  # unreachable: nothing can be using it
    return int(str(row[0])) if row else 0


def _server_env() -> dict[str, str]:
    """initdb and postgres get nothing of loopgate's environment; UTC spares initdb a time-zone scan."""
    return {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)


def _write_atomic(path: Path, text: str) -> None:
    temp = path.with_suffix(f".{os.getpid()}.tmp")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)

