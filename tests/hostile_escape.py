"""What a hostile agent's code tries from inside a build, a fork and a suite (tests/test_confinement.py).

The agent knows the host's layout (`_targets.json` beside this file: loopgate's HOME and state dir)
and its own cwd, which lies inside the state dir. Every attempt prints one line,
`ATTEMPT <stage> <name>: blocked (<why>)` or `ATTEMPT <stage> <name>: ESCAPED <what it got>`, and
prints what it read, so a leaked secret shows up in the output itself. Run unconfined, the attempts
escape: that is how the test knows this probe can see what it looks for.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

OVERWRITE = "def test_nothing_to_see() -> None:\n    pass\n"
MARKER = "HOSTILE-WAS-HERE"


class Blocked(Exception):
    pass


def main(stage: str) -> None:
    targets = json.loads((Path(__file__).parent / "_targets.json").read_text())
    state, home = Path(targets["state_dir"]), Path(targets["home"])
    env_dirs = _env_dirs(state)
    tries: dict[str, Callable[[], str]] = {
        "environ": _environ,
        "home_canary": lambda: _read(home / ".loopgate-canary"),
        "state_canary": lambda: _read(state / "canary.txt"),
        "state_list": lambda: _listing(state),
        "registry": lambda: _first(env_dirs, lambda d: _read(d / "env.json")[:200]),
        "sqlite_copies": lambda: _first(env_dirs, lambda d: _databases(d)),
        "envoy_write": lambda: _first(env_dirs, _write_envoy),
        "envoy_admin_socket": lambda: _first(env_dirs, lambda d: _admin(d / "envoy" / "admin.sock")),
        "envoy_admin_tcp": _admin_tcp,
        "shadow": lambda: _read(Path("/etc/shadow")),
        "base_suite_worktree": lambda: _first(env_dirs, lambda d: _overwrite(d / "worktree")),
        "base_suite_pristine": lambda: _first(env_dirs, lambda d: _overwrite(d / "pristine")),
        "kill_baseline": lambda: _kill(state),
    }
    for name, attempt in tries.items():
        try:
            got = attempt()
            print(f"ATTEMPT {stage} {name}: ESCAPED {got!r}", flush=True)
        except (Blocked, OSError, ValueError) as exc:
            print(f"ATTEMPT {stage} {name}: blocked ({type(exc).__name__}: {exc})", flush=True)


def _env_dirs(state: Path) -> list[Path]:
    """The env dirs: from the cwd (`…/envs/<id>/sandboxes/<key>/worktree/…`) and from a listing."""
    found = []
    cwd = Path.cwd()
    if "envs" in cwd.parts:
        index = cwd.parts.index("envs")
        found.append(Path(*cwd.parts[: index + 2]))
    with contextlib.suppress(OSError):
        found += [p for p in (state / "envs").iterdir() if p.is_dir()]
    return list(dict.fromkeys(found))


def _first(dirs: list[Path], attempt: Callable[[Path], str]) -> str:
    errors = []
    for directory in dirs:
        try:
            return attempt(directory)
        except (Blocked, OSError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    raise Blocked("; ".join(errors) or "nothing to try")


def _read(path: Path) -> str:
    return path.read_text(errors="replace")


def _listing(state: Path) -> str:
    """Files of the state dir outside this sandbox's own (whose worktree, HOME and state it may see)."""
    cwd = Path.cwd()
    own = Path(*cwd.parts[: cwd.parts.index("sandboxes") + 2]) if "sandboxes" in cwd.parts else cwd
    found = [p for p in state.rglob("*") if p.is_file() and own not in p.parents]
    if not found:
        raise Blocked(f"no file of {state} outside {own} is visible")
    return ", ".join(str(p) for p in found[:20])


def _environ() -> str:
    me, seen, found = os.getpid(), 0, []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            data = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        seen += 1
        found += [v.decode(errors="replace") for v in data.split(b"\0") if b"canary-" in v]
    if not found:
        raise Blocked(f"no canary in the {seen} environments readable here")
    return "; ".join(found)


def _databases(env_dir: Path) -> str:
    dbs = [*env_dir.glob("state/*/*.db"), *env_dir.glob("sandboxes/*/state/*/*.db")]
    if not dbs:
        raise Blocked(f"no database under {env_dir}")
    return ", ".join(f"{db} ({len(db.read_bytes())} bytes)" for db in dbs)


def _write_envoy(env_dir: Path) -> str:
    envoy = env_dir / "envoy"
    files = [*envoy.glob("*.json"), *envoy.glob("eds/*.json"), envoy / "bootstrap.yaml"]
    written = []
    for path in files:
        with path.open("a") as handle:
            handle.write(MARKER)
        written.append(str(path))
    (envoy / "eds" / "evil.json").write_text(MARKER)
    return ", ".join(written)


def _admin(path: Path) -> str:
    directory = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)  # a short address for a deep path
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(1)
        try:
            sock.connect(f"/proc/self/fd/{directory}/{path.name}")
        finally:
            os.close(directory)
        sock.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return sock.recv(200).decode(errors="replace")


def _admin_tcp() -> str:
    """Every port listening on loopback (the net namespace is shared): does any answer as Envoy's admin?"""
    ports = sorted(_listening_ports())
    for port in ports:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.3) as sock:
                sock.settimeout(0.5)
                sock.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                answer = sock.recv(300).decode(errors="replace")
        except OSError:
            continue
        if answer.rstrip().endswith("LIVE"):
            return f"port {port}: {answer!r}"
    raise Blocked(f"none of {len(ports)} listening ports is an admin API")


def _listening_ports() -> set[int]:
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port = local.split(":")
        if state == "0A" and address in ("0100007F", "00000000"):
            ports.add(int(port, 16))
    return ports


def _overwrite(tree: Path) -> str:
    suite = tree / "e2e" / "test_checkout.py"
    suite.write_text(OVERWRITE)
    return f"rewrote {suite}"


def _kill(state: Path) -> str:
    """Signal every process of loopgate's (its command line or cwd names the state dir) but our own
    line of ancestors."""
    mine = _ancestors()
    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in mine:
            continue
        pid = int(entry)
        cmdline, cwd = _cmdline(pid), _cwd(pid)
        if str(state) in cmdline or cwd.startswith(str(state)):
            try:
                os.kill(pid, signal.SIGTERM)
                killed.append(f"{pid} {cmdline[:60]}")
            except OSError:
                continue
    if not killed:
        raise Blocked("no process of loopgate's is visible or signalable")
    return "; ".join(killed)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def _ancestors() -> set[int]:
    pids, pid = {1}, os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "direct")
