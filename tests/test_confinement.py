"""Confinement, tried the way a hostile agent would: real bubblewrap, real processes, real Envoy.

A head change of the example shop breaks a contract the base e2e suite checks and, from its build
step, its fork (at import) and its head suite, tries every way past the gate it can think of
(tests/hostile_escape.py): other processes' environments, loopgate's HOME and state dir, other copies
of the data, Envoy's files and admin API, root-only files, the base suite it is judged by, and the
baseline's processes. None may work, and the verdict must still be `fail`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from bot.config import RuntimeSettings
from bot.runtimes.local import LocalRuntime, pristine
from bot.runtimes.local.registry import env_id_for
from bot.runtimes.local.xds import admin_socket_path
from tests.conftest import TINY_CONFIG, make_shop, processes_under, run_cli
from tests.gitrepo import GitRepo

ESCAPE = Path(__file__).with_name("hostile_escape.py")
ATTEMPTS = {
    "environ",
    "home_canary",
    "state_canary",
    "state_list",
    "registry",
    "sqlite_copies",
    "envoy_write",
    "envoy_admin_socket",
    "envoy_admin_tcp",
    "shadow",
    "base_suite_worktree",
    "base_suite_pristine",
    "kill_baseline",
}
SUITE = "e2e/test_checkout.py"


@dataclass(frozen=True)
class Host:
    """What loopgate's own side holds: its HOME, its state dir, secrets and canaries in both."""

    home: Path
    state_dir: Path
    canaries: tuple[str, ...]

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "HOME": str(self.home),
            "LOOPGATE_STATE_DIR": str(self.state_dir),
            "LOOPGATE_WEBHOOK_SECRET": self.canaries[0],
            "GITHUB_TOKEN": self.canaries[1],
            **extra,
        }


def make_host(root: Path) -> Host:
    canaries = tuple(f"canary-{what}-{secrets.token_hex(8)}" for what in ("env", "token", "home", "state"))
    home, state_dir = root / "home", root / "state"
    home.mkdir(parents=True)
    state_dir.mkdir()
    (home / ".loopgate-canary").write_text(canaries[2])
    (state_dir / "canary.txt").write_text(canaries[3])
    return Host(home, state_dir, canaries)


def hostile_branch(repo: GitRepo, host: Host) -> None:
    """The shop's `main` gets a harmless build step for inventory; `agent/hostile` turns it, the
    inventory service and a new e2e test into escape attempts, and renames `available` (as
    contract-break.patch does)."""
    config = (repo.path / ".loopgate.yml").read_text()
    marker = "      cwd: services/inventory\n"
    repo.write(".loopgate.yml", config.replace(marker, marker + '      build: "python build.py"\n'))
    repo.write("services/inventory/build.py", 'print("built")\n')
    repo.commit("inventory: a build step")
    app = (repo.path / "services/inventory/inventory_app.py").read_text()
    broken = app.replace('"available": item.stock', '"in_stock": item.stock')
    future = "from __future__ import annotations\n"
    assert broken != app and future in broken, "the contract break no longer applies to the shop"
    hostile_app = broken.replace(future, future + 'import _escape\n_escape.main("fork")\n', 1)
    escape_test = (
        "import sys\nfrom pathlib import Path\n\n"
        'sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "services" / "inventory"))\n'
        "import _escape  # noqa: E402\n\n\n"
        "def test_escape() -> None:\n"
        '    _escape.main("suite")\n'
        '    raise AssertionError("the attempts above are the point")\n'
    )
    repo.branch(
        "agent/hostile",
        {
            "services/inventory/_escape.py": ESCAPE.read_text(),
            "services/inventory/_targets.json": json.dumps(
                {"state_dir": str(host.state_dir), "home": str(host.home)}
            ),
            "services/inventory/build.py": 'import _escape\n\n_escape.main("build")\n',
            "services/inventory/inventory_app.py": hostile_app,
            "e2e/test_zz_escape.py": escape_test,
        },
    )


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Host, GitRepo]]:
    root = tmp_path_factory.mktemp("hostile")
    host = make_host(root)
    repo = make_shop(root / "shop", ["refactor-orders"])
    hostile_branch(repo, host)
    yield host, repo
    runtime = LocalRuntime(RuntimeSettings(state_dir=host.state_dir))
    for env_id in runtime.registry.env_ids():
        runtime.down(env_id)


def verify(host: Host, repo: GitRepo, head: str, out: Path, *extra: str) -> tuple[int, dict, str]:  # type: ignore[type-arg]
    done = run_cli(
        "verify", "--repo", str(repo.path), "--head", head, "--json", str(out), *extra, env=host.env()
    )
    evidence = json.loads(out.read_text()) if out.exists() else {}
    return done.returncode, evidence, done.stdout + done.stderr


def attempts(text: str, stage: str) -> dict[str, str]:
    """Attempt name -> what it printed, for one stage's lines."""
    found = {}
    for line in text.splitlines():
        prefix = f"ATTEMPT {stage} "
        if prefix in line:
            name, _, outcome = line.split(prefix, 1)[1].partition(": ")
            found[name] = outcome
    return found


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_probe_sees_what_it_looks_for_when_nothing_confines_it(tmp_path: Path) -> None:
    """Unconfined (as root), the same code reads the canaries and root-only files: a `blocked` from it
    below means confinement stopped it, not that it looked in the wrong place."""
    host = make_host(tmp_path)
    shutil.copy(ESCAPE, tmp_path / "_escape.py")
    targets = {"state_dir": str(host.state_dir), "home": str(host.home)}
    (tmp_path / "_targets.json").write_text(json.dumps(targets))
    done = subprocess.run(
        [sys.executable, "_escape.py", "direct"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    seen = attempts(done.stdout, "direct")
    assert seen.keys() == ATTEMPTS, done.stdout + done.stderr
    assert host.canaries[2] in seen["home_canary"] and host.canaries[3] in seen["state_canary"]
    if os.geteuid() == 0:
        assert seen["shadow"].startswith("ESCAPED")


def test_hostile_change_escapes_nothing_and_still_fails(
    hostile: tuple[Host, GitRepo], tmp_path: Path
) -> None:
    host, repo = hostile
    code, evidence, output = verify(host, repo, "agent/hostile", tmp_path / "e.json", "--keep")
    key = evidence.get("routing_key")
    runtime = LocalRuntime(RuntimeSettings(state_dir=host.state_dir))
    env_id = env_id_for(repo.path, repo.git("rev-parse", "main"))
    env_dir = runtime.registry.env_dir(env_id)
    try:
        assert code == 1, output
        assert evidence["verdict"] == "fail" and evidence["confined"] is True
        suites = {(s["name"], s["source"]): s for s in evidence["suites"]}
        assert suites["e2e", "base"]["status"] == "failed"
        failed = {f["test"].rsplit("::", 1)[-1] for f in suites["e2e", "base"]["failures"]}
        assert "test_checkout_in_stock_then_read_order" in failed
        assert any("suite e2e failed" in r for r in evidence["reasons"])

        logs = runtime.registry.sandbox_dir(env_id, key) / "logs"
        by_stage = {
            "build": (logs / "inventory.build.log").read_text(),
            "fork": (logs / "inventory.log").read_text(),
            "suite": (logs / "suite-e2e-head.log").read_text(),
        }
        for stage, text in by_stage.items():
            seen = attempts(text, stage)
            assert seen.keys() == ATTEMPTS, f"{stage} did not try everything:\n{text[-3000:]}"
            escaped = {name: got for name, got in seen.items() if not got.startswith("blocked")}
            assert escaped == {}, f"{stage} escaped"

        logged = [p.read_text(errors="replace") for p in logs.iterdir()]
        everything = "\n".join([output, json.dumps(evidence), *logged])
        for canary in host.canaries:
            assert canary not in everything

        # The suites that judged the change, Envoy's configuration and the baseline are untouched.
        base = (repo.path / SUITE).read_text()  # the checkout is on main
        assert (env_dir / "pristine" / SUITE).read_text() == base
        assert (env_dir / "worktree" / SUITE).read_text() == base
        envoy = env_dir / "envoy"
        assert not (envoy / "rds" / "evil.json").exists()
        assert [p for p in envoy.rglob("*") if p.is_file() and b"HOSTILE" in p.read_bytes()] == []
        record = runtime.registry.load_env(env_id)
        assert record is not None
        assert all(service.process.alive() for service in record.services.values())
        assert admin_socket_path(envoy).is_socket()
    finally:
        if key:
            assert run_cli("sandbox", "delete", key, env=host.env()).returncode == 0


def test_good_change_still_passes_confined(hostile: tuple[Host, GitRepo], tmp_path: Path) -> None:
    host, repo = hostile
    code, evidence, output = verify(host, repo, "agent/refactor-orders", tmp_path / "e.json")
    assert code == 0, output
    assert evidence["verdict"] == "pass" and evidence["confined"] is True
    assert "Unconfined" not in output


def test_agent_code_sees_neither_environments_nor_files_of_loopgate(tmp_path: Path) -> None:
    """A suite dumps its own environment and hunts through /proc and HOME: it sees only what the
    allow-list gives it, in a PID namespace of its own."""
    host = make_host(tmp_path / "host")
    hunt = (
        "env; echo PROCS $(ls /proc | grep -c '^[0-9]'); grep -aho 'canary-[a-z0-9-]*' /proc/*/environ;"
        f" cat {host.home}/.loopgate-canary {host.state_dir}/canary.txt; cat $HOME/.gitconfig; exit 1"
    )
    config = TINY_CONFIG.replace('run: "true"', f"run: {json.dumps(hunt)}")
    repo = GitRepo.init(tmp_path / "tiny", {".loopgate.yml": config, "web/index.html": "v1\n"})
    repo.branch("agent/x", {"web/index.html": "v2\n"})
    _, evidence, output = verify(host, repo, "agent/x", tmp_path / "e.json")
    seen = evidence["suites"][0]["log_tail"]
    assert evidence["suites"][0]["status"] != "passed", output
    for canary in host.canaries:
        assert canary not in seen and canary not in output
    assert "LOOPGATE_WEBHOOK_SECRET" not in seen and "GITHUB_TOKEN" not in seen
    assert "LOOPGATE_ROUTING_KEY=" in seen and "LOOPGATE_WEB_URL=http://127.0.0.1:" in seen
    procs = int(next(line for line in seen.splitlines() if line.startswith("PROCS ")).split()[1])
    assert procs < 10  # its own few, not the host's
    assert seen.count("No such file or directory") >= 3  # the canaries and a user git config are hidden
    assert processes_under(host.state_dir) == []


def path_without_bwrap(root: Path) -> str:
    """A PATH with everything of the usual one but bubblewrap, as on a machine without it."""
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not Path(directory).is_dir():
            continue
        for tool in Path(directory).iterdir():
            target = bin_dir / tool.name
            if tool.name != "bwrap" and not target.exists():
                target.symlink_to(tool)
    return str(bin_dir)


def test_without_bubblewrap_verify_stops_naming_the_cause_unless_confinement_is_off(tmp_path: Path) -> None:
    host = make_host(tmp_path / "host")
    repo = GitRepo.init(tmp_path / "tiny", {".loopgate.yml": TINY_CONFIG, "web/index.html": "v1\n"})
    repo.branch("agent/x", {"web/index.html": "v2\n"})
    path = path_without_bwrap(tmp_path)

    out = tmp_path / "missing.json"
    done = run_cli(
        "verify", "--repo", str(repo.path), "--head", "agent/x", "--json", str(out), env=host.env(PATH=path)
    )
    evidence = json.loads(out.read_text())
    assert done.returncode == 3, done.stdout + done.stderr
    assert evidence["error_kind"] == "infrastructure"
    assert evidence["reasons"][0].startswith("confinement unavailable: bwrap not found")
    assert "LOOPGATE_CONFINE=off" in evidence["reasons"][0]
    assert processes_under(host.state_dir) == []

    out, comment = tmp_path / "off.json", tmp_path / "comment.md"
    done = run_cli(
        "verify",
        "--repo",
        str(repo.path),
        "--head",
        "agent/x",
        "--json",
        str(out),
        "--markdown",
        str(comment),
        env=host.env(PATH=path, LOOPGATE_CONFINE="off"),
    )
    evidence = json.loads(out.read_text())
    # It ran (the smoke suite reaches no fork, hence inconclusive), and says how.
    assert evidence["suites"][0]["status"] == "passed", done.stdout + done.stderr
    assert evidence["verdict"] == "inconclusive" and evidence["confined"] is False
    first = comment.read_text().splitlines()[:3]
    assert first[0] == "<!-- loopgate:evidence -->"
    assert "Unconfined: agent code ran without isolation (LOOPGATE_CONFINE=off)" in first[1]
    assert done.stdout.splitlines()[0].startswith("⚠ Unconfined")
    assert processes_under(host.state_dir) == []


def test_confined_processes_are_unprivileged_in_their_own_pid_namespace(tmp_path: Path) -> None:
    """What the runtime starts for a fork: a bwrap leader whose child runs as the confined uid."""
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (make test installs it)")
    host = make_host(tmp_path / "host")
    repo = GitRepo.init(tmp_path / "tiny", {".loopgate.yml": TINY_CONFIG, "web/index.html": "v1\n"})
    repo.branch("agent/x", {"web/index.html": "v2\n"})
    code, evidence, output = verify(host, repo, "agent/x", tmp_path / "e.json", "--keep")
    runtime = LocalRuntime(RuntimeSettings(state_dir=host.state_dir))
    try:
        assert code == 4 and evidence["services"][0]["status"] == "ready", output  # no suite calls it
        sandbox = runtime.registry.find_sandbox(evidence["routing_key"])
        assert sandbox is not None
        leader = psutil.Process(sandbox.forks["web"].process.pid)
        assert Path(leader.exe()).name == "bwrap"
        server = next(p for p in leader.children(recursive=True) if p.name().startswith("python"))
        if os.geteuid() == 0:
            assert server.uids().real == RuntimeSettings().confine_uid
        assert os.readlink(f"/proc/{server.pid}/ns/pid") != os.readlink("/proc/self/ns/pid")
    finally:
        for env_id in runtime.registry.env_ids():
            runtime.down(env_id)


def test_pristine_checkout_is_the_base_commit_readable_by_all_and_writable_by_none(tmp_path: Path) -> None:
    repo = GitRepo.init(tmp_path / "repo", {"e2e/test_a.py": "def test_a() -> None:\n    pass\n"})
    target = tmp_path / "pristine"
    pristine.materialise(repo.path, repo.git("rev-parse", "HEAD"), target)
    assert (target / "e2e" / "test_a.py").read_text() == (repo.path / "e2e" / "test_a.py").read_text()
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [target, *target.rglob("*")]}
    assert all(mode & 0o222 == 0 and mode & 0o444 == 0o444 for mode in modes.values()), modes
    assert repo.git("worktree", "list").count("\n") == 0  # nothing registered in the repository
    pristine.remove(target)
    assert not target.exists()


def test_the_apps_secret_files_outside_the_state_dir_are_hidden_too(tmp_path: Path) -> None:
    """The App's key, its git mirrors and its SQLite database may live anywhere an operator puts them;
    wherever that is, confined code finds nothing there."""
    from bot.config import AppSettings
    from bot.runtimes.local.confine import Confinement

    outside = Path("/var/tmp") / f"loopgate-secrets-{secrets.token_hex(4)}"
    try:
        key, mirrors, database = outside / "app.pem", outside / "mirrors", outside / "db" / "app.db"
        wal = database.with_name("app.db-wal")
        for path in (key, mirrors / "repo.git" / "config", database, wal):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("canary-app-secret\n")
        settings = AppSettings(
            github_app_id=1,
            webhook_secret="s",
            state_dir=tmp_path / "state",
            github_private_key_path=key,
            git_cache_dir=mirrors,
            database_url=f"sqlite:///{database}",
        )
        assert {key, mirrors, database} <= set(settings.secret_paths())
        (tmp_path / "state").mkdir()
        confinement = Confinement.create(
            enabled=True, state_dir=settings.state_dir, hide=settings.secret_paths()
        )
        work = tmp_path / "work"
        work.mkdir()
        argv = confinement.command(
            ["sh", "-c", f"cat {key} {mirrors}/repo.git/config {database} {wal}"],
            cwd=work,
            writable=[work],
        )
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert "canary-app-secret" not in done.stdout + done.stderr
        unconfined = subprocess.run(argv[argv.index("--", argv.index("--chdir")) + 1 :], capture_output=True)
        assert unconfined.stdout.count(b"canary-app-secret") >= 4  # the probe does look in the right places
    finally:
        shutil.rmtree(outside, ignore_errors=True)
