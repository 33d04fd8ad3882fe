"""Confinement of the code loopgate runs for a change: builds, forks, suites (bubblewrap).

Agent code must not reach past the gate: not loopgate's environment or files, not other sandboxes'
data, not Envoy's admin API, not the base suites it is judged by. Every confined process gets:

- its own PID, IPC and UTS namespaces and a fresh `/proc`: no other process's `/proc/<pid>/environ`;
- the host's root read-only, a private `/tmp`, and tmpfs over loopgate's state dir, loopgate's HOME
  and any secrets path; only the paths a job needs (its worktree, state copy, HOME) are bound back,
  at the same paths, so nothing above this module translates paths;
- an unprivileged uid: run as root, loopgate drops to `confine_uid` with `setpriv` (no capabilities,
  no new privileges), so root-owned files stay unreadable whatever their mode; run as a normal user,
  bubblewrap's own user namespace keeps that user's uid, and the hidden paths keep its secrets away;
- `--die-with-parent` for everything that must not outlive the run.

Loopback stays shared: services reach Envoy's listeners and the database through it. Envoy's admin API
listens on a Unix socket under the hidden state dir, so confined code cannot reach it.

Hand-written rather than a library: no maintained Python binding for bubblewrap exists; this module
only assembles its argument vector.
"""

from __future__ import annotations

import functools
import os
import shutil
import site
import stat
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bot.config import InfrastructureError

_TMP = Path("/tmp")


@dataclass(frozen=True)
class Confinement:
    """How confined processes are started; `enabled=False` runs them as they are (LOOPGATE_CONFINE=off)."""

    enabled: bool
    hidden: tuple[Path, ...] = ()
    """Directories and files confined code must not see (state dir, HOME, secrets)."""
    readonly: tuple[Path, ...] = ()
    """Paths under a hidden one that confined code still needs read-only (the Python install)."""
    uid: int = 65534
    gid: int = 65534
    _bwrap: str = field(default="bwrap", compare=False)
    _setpriv: str = field(default="setpriv", compare=False)

    @classmethod
    def create(
        cls,
        *,
        enabled: bool,
        state_dir: Path,
        hide: Iterable[Path] = (),
        expose: Iterable[Path] = (),
        uid: int = 65534,
        gid: int = 65534,
    ) -> Confinement:
        readonly = _existing([*interpreter_paths(), *expose])
        # A directory the confined uid cannot pass (root's 0700 HOME holding pyenv, even when HOME is
        # set elsewhere) is hidden too, so that what it must read can be bound back inside it.
        hidden = _existing([state_dir, Path.home(), *hide, *_closed_ancestors(readonly)])
        return cls(
            enabled=enabled,
            hidden=tuple(hidden),
            readonly=tuple(readonly),
            uid=uid,
            gid=gid,
            _bwrap=shutil.which("bwrap") or "bwrap",
            _setpriv=shutil.which("setpriv") or "setpriv",
        )

    @property
    def drops_privileges(self) -> bool:
        """Root drops to `uid`; anyone else already is unprivileged."""
        return self.enabled and os.geteuid() == 0

    def check(self) -> None:
        """Raise InfrastructureError naming why confinement cannot be set up here."""
        if self.enabled:
            _probe(self._bwrap, self._setpriv, self.drops_privileges, self.uid, self.gid)

    def give(self, *paths: Path) -> None:
        """Make `paths` (recursively) the confined uid's, so the job can write there and nowhere else."""
        if not self.drops_privileges:
            return
        for path in paths:
            if not path.exists():
                continue
            os.chown(path, self.uid, self.gid, follow_symlinks=False)
            for root, dirs, files in os.walk(path):
                for name in (*dirs, *files):
                    os.chown(os.path.join(root, name), self.uid, self.gid, follow_symlinks=False)

    def command(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        writable: Sequence[Path] = (),
        readonly: Sequence[Path] = (),
        die_with_parent: bool = True,
    ) -> list[str]:
        """`argv` wrapped so it runs confined with `cwd`, seeing only `writable` and `readonly` of
        what is hidden. Unchanged when confinement is off."""
        if not self.enabled:
            return list(argv)
        args = [
            self._bwrap,
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--ro-bind", "/", "/",
            "--dev", "/dev",
            "--proc", "/proc",
            "--perms", "1777", "--tmpfs", str(_TMP),
        ]  # fmt: skip
        if die_with_parent:
            args.insert(1, "--die-with-parent")
        roots = _top_most([*self.hidden, _TMP])
        for hidden in roots:
            if hidden == _TMP:
                continue
            if hidden.is_dir():
                args += ["--perms", "0755", "--tmpfs", str(hidden)]
            else:
                args += ["--ro-bind", "/dev/null", str(hidden)]
        made: set[Path] = set(roots)
        exposures = [(p, "--ro-bind") for p in (*self.readonly, *readonly)]
        exposures += [(p, "--bind") for p in writable]
        for path, how in exposures:
            path = _absolute(path)
            root = _under(path, roots)
            if root is None and how == "--ro-bind":
                continue  # the host's root is already read-only
            if root is not None:
                for ancestor in reversed(path.parents):
                    if ancestor != root and root in ancestor.parents and ancestor not in made:
                        args += ["--perms", "0755", "--dir", str(ancestor)]
                        made.add(ancestor)
            args += [how, str(path), str(path)]
            made.add(path)
        args += ["--chdir", str(_absolute(cwd)), "--"]
        if self.drops_privileges:
            args += _drop(self._setpriv, self.uid, self.gid)
        return args + list(argv)


def interpreter_paths() -> list[Path]:
    """What `python` needs to run: the venv, the base install, the user site (any may live in HOME)."""
    paths = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix)}
    paths.add(Path(sys.executable).resolve().parent.parent)
    user_site = site.getusersitepackages()
    if user_site:
        paths.add(Path(user_site))
    return sorted(paths)


def _closed_ancestors(paths: Iterable[Path]) -> list[Path]:
    """Ancestors of `paths` that others may not traverse (no `o+x`)."""
    closed = set()
    for path in paths:
        for ancestor in path.parents:
            try:
                if ancestor != Path("/") and not ancestor.stat().st_mode & stat.S_IXOTH:
                    closed.add(ancestor)
            except OSError:
                continue
    return sorted(closed)


def _drop(setpriv: str, uid: int, gid: int) -> list[str]:
    return [
        setpriv,
        f"--reuid={uid}",
        f"--regid={gid}",
        "--clear-groups",
        "--no-new-privs",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
    ]


@functools.cache
def _probe(bwrap: str, setpriv: str, drop: bool, uid: int, gid: int) -> None:
    """One real confined `true`, once per process: the only reliable test of namespaces here."""
    off = "set LOOPGATE_CONFINE=off to run agent code unconfined (every report then says so)"
    if shutil.which(bwrap) is None:
        raise InfrastructureError(f"confinement unavailable: bwrap not found (install bubblewrap, or {off})")
    if drop and shutil.which(setpriv) is None:
        raise InfrastructureError(
            f"confinement unavailable: setpriv not found (install util-linux, or {off})"
        )
    argv = [bwrap, "--die-with-parent", "--unshare-pid", "--ro-bind", "/", "/", "--proc", "/proc", "--"]
    if drop:
        argv += _drop(setpriv, uid, gid)
    try:
        done = subprocess.run([*argv, "true"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InfrastructureError(f"confinement unavailable: bwrap failed to run: {exc} ({off})") from None
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        raise InfrastructureError(f"confinement unavailable: {why} ({off})")


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))


def _existing(paths: Iterable[Path]) -> list[Path]:
    return sorted({_absolute(p) for p in paths if p.exists() and _absolute(p) != Path("/")})


def _top_most(paths: Iterable[Path]) -> list[Path]:
    """Drop paths inside another: a tmpfs over the outer one already hides them."""
    unique = sorted({_absolute(p) for p in paths}, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in unique:
        if not any(path == k or k in path.parents for k in kept):
            kept.append(path)
    return kept


def _under(path: Path, roots: Sequence[Path]) -> Path | None:
    for root in roots:
        if path == root or root in path.parents:
            return root
    return None
