"""A service's and a suite's own environment (`env:`, `pass_env:`), health forms and start order:
checked when the file is read (file:line), and applied by the local runtime as documented."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Collection
from pathlib import Path

import pytest

from bot.config import ConfigError, parse_config
from bot.config.environ import expand, may_match, passed, refused_by, template_names
from bot.config.schema import HealthCheck, LocalService, Suite
from bot.runtimes.local.allowlist import child_env, suite_section, with_port
from bot.runtimes.local.helpers import _in_order
from bot.runtimes.local.ports import free_port
from bot.runtimes.local.processes import wait_healthy

BASE = """\
version: 1
services:
  api:
    paths: ["api/**"]
    local:
      run: "python api.py --port {port}"
%s
  names:
    paths: ["names/**"]
    local: {run: "node server.js", env: {PORT: "{port}"}, health: {tcp: true}}
verify:
  suites:
    - name: e2e
      run: "python -m pytest e2e"
%s
"""


def config(service: str = "", suite: str = "") -> str:
    return BASE % (service, suite)


def refused(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return str(caught.value)


def test_a_config_with_every_new_key_loads() -> None:
    loaded = parse_config(
        config(
            "      env: {NAMES_URL: '${LOOPGATE_NAMES_URL}', LISTEN: '127.0.0.1:{port}', PRICE: '5$$'}\n"
            "      pass_env: ['OTEL_*', HONEYCOMB_API_KEY]\n"
            "      health: {path: /ready, status: [200, 204]}\n"
            "      after: [names]",
            "      env: {ENTRY: '${LOOPGATE_API_URL}', PYTEST_ADDOPTS: '--junitxml=${LOOPGATE_JUNIT_XML}'}\n"
            "      pass_env: [CI]",
        )
    )
    api = loaded.services["api"].local_spec
    assert api.after == ["names"] and api.pass_env == ["OTEL_*", "HONEYCOMB_API_KEY"]
    assert api.health_check.statuses == (200, 204)
    assert loaded.services["names"].local_spec.health_check.tcp is True
    assert LocalService(run="x {port}").health_check == HealthCheck(path="/healthz")
    assert loaded.verify.suites[0].env["ENTRY"] == "${LOOPGATE_API_URL}"


@pytest.mark.parametrize(
    ("service", "suite", "message"),
    [
        (
            "      env: {NAMES_URL: '${LOOPGATE_NAME_URL}'}",
            "",
            ".loopgate.yml:7 services.api.local.env.NAMES_URL: loopgate gives no ${LOOPGATE_NAME_URL} here",
        ),
        (
            "      env: {KEY: '${HONEYCOMB_API_KEY}'}",
            "",
            ".loopgate.yml:7 services.api.local.env.KEY: ${HONEYCOMB_API_KEY} is neither given by loopgate"
            " nor passed by `pass_env`",
        ),
        (
            "      env: {KEY: '${LOOPGATE_ROUTING_KEY}'}",  # a suite's, not a service's
            "",
            ".loopgate.yml:7 services.api.local.env.KEY: loopgate gives no ${LOOPGATE_ROUTING_KEY} here",
        ),
        (
            "      env: {A: '$HOME/x'}",
            "",
            ".loopgate.yml:7 services.api.local.env: A: '$HOME/x': write ${NAME}",
        ),
        (
            "      env: {A: '${}'}",
            "",
            ".loopgate.yml:7 services.api.local.env: A: '${}': ${} is not a variable",
        ),
        (
            "      env: {LOOPGATE_STATE: x}",
            "",
            ".loopgate.yml:7 services.api.local.env: LOOPGATE_STATE: loopgate",
        ),
        (
            "      env: {HOME: /root}",
            "",
            ".loopgate.yml:7 services.api.local.env: HOME: loopgate gives every job",
        ),
        ("      env: {1X: a}", "", ".loopgate.yml:7 services.api.local.env: '1X' is not a variable name"),
        (
            "",
            "      env: {A: '${LOOPGATE_NAMES_UR}'}",
            ".loopgate.yml:15 verify.suites[0].env.A: loopgate gives no",
        ),
        (
            "",
            "      env: {A: 'x{port}'}",
            ".loopgate.yml:15 verify.suites[0].env: A: a suite listens on no port",
        ),
        ("      after: [nobody]", "", ".loopgate.yml:7 services.api.local.after[0]: no service 'nobody'"),
        (
            "      after: [api]",
            "",
            ".loopgate.yml:7 services.api.local.after[0]: a service cannot start after",
        ),
        (
            "      health: {tcp: false}",
            "",
            ".loopgate.yml:7 services.api.local.health: `tcp: false` checks nothing",
        ),
        (
            "      health: {path: /x, status: 42}",
            "",
            ".loopgate.yml:7 services.api.local.health: status 42 is not",
        ),
        (
            "      health: {tcp: true, path: /x}",
            "",
            ".loopgate.yml:7 services.api.local.health: set exactly one",
        ),
        (
            "      health: {tcp: true, status: 200}",
            "",
            ".loopgate.yml:7 services.api.local.health: `status` needs",
        ),
        ("      health: healthz", "", ".loopgate.yml:7 services.api.local.health: must be an HTTP path"),
        ("      health: {port: 1}", "", ".loopgate.yml:7 services.api.local.health.port: unknown key"),
    ],
)
def test_mistakes_name_file_line_and_field(service: str, suite: str, message: str) -> None:
    assert refused(config(service, suite)).startswith(message)


def test_run_without_port_is_refused_unless_an_env_value_takes_it() -> None:
    text = "version: 1\nservices:\n  a:\n    paths: [a]\n    local:\n      run: serve\n"
    assert refused(text).startswith(".loopgate.yml:6 services.a.local.run: must contain {port}")
    parse_config(text + "      env: {PORT: '{port}'}\n")


def test_a_cycle_in_the_start_order_names_it_with_its_line() -> None:
    text = config("      after: [names]").replace(
        "health: {tcp: true}}", "health: {tcp: true}, after: [api]}"
    )
    message = refused(text)
    assert message.startswith(".loopgate.yml:")
    assert "start order has a cycle: api -> names -> api" in message


@pytest.mark.parametrize(
    "pattern",
    ["LOOPGATE_*", "LOOPGATE_WEBHOOK_SECRET", "LOOP*", "L*", "*", "?OOPGATE_X", "*_SECRET", "GITHUB_TOKEN",
     "GITHUB_*", "ACTIONS_RUNTIME_TOKEN", "INPUT_*", "KUBECONFIG", "KUBE*"],
)  # fmt: skip
def test_pass_env_that_could_reach_loopgates_settings_or_secrets_is_refused(pattern: str) -> None:
    message = refused(config(f"      pass_env: ['{pattern}']"))
    assert message.startswith(".loopgate.yml:7 services.api.local.pass_env: ")
    assert repr(pattern) in message and "never passed" in message
    suite = refused(config("", f"      pass_env: ['{pattern}']"))
    assert suite.startswith(".loopgate.yml:15 verify.suites[0].pass_env: ")


@pytest.mark.parametrize(
    "pattern", ["OTEL_*", "HONEYCOMB_API_KEY", "LOOPGATE", "LOOPGATEX", "NODE_?NV", "CI"]
)
def test_pass_env_of_the_teams_own_variables_loads(pattern: str) -> None:
    loaded = parse_config(config(f"      pass_env: ['{pattern}']"))
    assert loaded.services["api"].local_spec.pass_env == [pattern]


def test_glob_reach_is_exact() -> None:
    assert may_match("LOOPGATE_", "LOOPGATE_") and not may_match("LOOPGATE", "LOOPGATE_")
    assert may_match("LOOPGATE_X?", "LOOPGATE_") and not may_match("LOOPGATF_*", "LOOPGATE_")
    assert refused_by("OTEL_*") is None and refused_by("*TOKEN") == "LOOPGATE_*"


def test_templates() -> None:
    assert template_names("${A}-$${B}-{port}") == ["A"]
    assert expand("${A}:$$:${MISSING}:{port}", {"A": "a"}) == "a:$::{port}"
    with pytest.raises(ValueError, match="write"):
        template_names("a$")


def test_the_child_gets_pass_env_then_env_then_loopgates_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", "/opt/team/bin:/usr/bin:/bin")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "api")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-team=1")
    monkeypatch.setenv("HONEYCOMB_API_KEY", "hc-key")
    monkeypatch.setenv("UNLISTED", "no")
    monkeypatch.setenv("LOOPGATE_WEBHOOK_SECRET", "canary-secret")
    monkeypatch.setenv("GITHUB_TOKEN", "canary-token")
    section = LocalService.model_construct(  # as if the loader had been bypassed: still filtered
        run="x {port}",
        env={
            "NAMES_URL": "${LOOPGATE_NAMES_URL}/v1",
            "AUTH": "key=${HONEYCOMB_API_KEY}",
            "OTEL_SERVICE_NAME": "overridden",
            "LISTEN": "127.0.0.1:{port}",
            "COST": "$$5",
            "TOOLS": "${PATH}",
        },
        pass_env=["OTEL_*", "HONEYCOMB_API_KEY", "LOOPGATE_*", "GITHUB_*", "HOME"],
    )
    given = {"LOOPGATE_NAMES_URL": "http://127.0.0.1:9", "LOOPGATE_SERVICE": "api"}
    env = child_env(tmp_path / "home", given, section)
    assert env["PATH"] == "/opt/team/bin:/usr/bin:/bin"  # the user's, nothing of loopgate's put first
    assert str(Path(sys.executable).parent) not in env["PATH"].split(":")
    assert env["OTEL_EXPORTER_OTLP_HEADERS"] == "x-team=1" and env["HONEYCOMB_API_KEY"] == "hc-key"
    assert env["OTEL_SERVICE_NAME"] == "overridden"  # env: wins over pass_env
    assert env["NAMES_URL"] == "http://127.0.0.1:9/v1" and env["AUTH"] == "key=hc-key"
    assert env["COST"] == "$5" and env["TOOLS"] == env["PATH"] and env["LISTEN"] == "127.0.0.1:{port}"
    assert env["HOME"] == env["TMPDIR"] == str(tmp_path / "home")  # loopgate's own win
    assert env["LOOPGATE_SERVICE"] == "api"
    assert "UNLISTED" not in env and "GITHUB_TOKEN" not in env and "LOOPGATE_WEBHOOK_SECRET" not in env
    assert "canary" not in repr(env)
    assert with_port(env, ["LISTEN"], 8123)["LISTEN"] == "127.0.0.1:8123"
    assert child_env(tmp_path / "bare", {})["PATH"] == "/opt/team/bin:/usr/bin:/bin"


def test_passed_never_hands_over_protected_names() -> None:
    environ = {"LOOPGATE_X": "1", "GITHUB_TOKEN": "2", "INPUT_GITHUB-TOKEN": "3", "HOME": "/root", "A": "4"}
    assert passed(["*"], environ) == {"A": "4"}


def test_a_suites_env_comes_from_the_base_config_only() -> None:
    loaded = parse_config(config("", "      env: {A: b}\n      pass_env: [CI]"))
    section = suite_section(loaded, "e2e")
    assert isinstance(section, Suite) and section.env == {"A": "b"} and section.pass_env == ["CI"]
    assert suite_section(loaded, "only-in-head") is None


def test_start_order_waits_for_prerequisites_and_keeps_the_rest_parallel() -> None:
    """Rendezvous, not timings: `db` ends only once `lone` has started, and `lone` only once the whole
    chain db → api → web has ended, so each wait is met only if those jobs really run side by side."""
    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    seen = {name: threading.Event() for name in ("start lone", "end web")}

    def job(name: str, waits_for: str | None = None, result: str | None = None) -> object:
        def run() -> str | None:
            with lock:
                events.append(("start", name))
            seen.get(f"start {name}", threading.Event()).set()
            if waits_for is not None and not seen[waits_for].wait(timeout=30):
                return f"{name} waited for {waits_for!r} in vain"
            with lock:
                events.append(("end", name))
            seen.get(f"end {name}", threading.Event()).set()
            return result

        return run

    results = _in_order(
        {
            "db": job("db", waits_for="start lone"),  # type: ignore[dict-item]
            "api": job("api"),  # type: ignore[dict-item]
            "web": job("web"),  # type: ignore[dict-item]
            "lone": job("lone", waits_for="end web"),  # type: ignore[dict-item]
            "broken": job("broken", result="exited with code 1"),  # type: ignore[dict-item]
            "needs-broken": job("needs-broken"),  # type: ignore[dict-item]
        },
        {"api": ["db"], "web": ["api", "db"], "needs-broken": ["broken"]},
    )
    assert (results["db"], results["lone"]) == (None, None)  # both rendezvous were met
    assert events.index(("end", "db")) < events.index(("start", "api"))
    assert events.index(("end", "api")) < events.index(("start", "web"))
    assert results["broken"] == "exited with code 1"
    assert results["needs-broken"] == "not started: broken, which it starts after, did not start"
    assert ("start", "needs-broken") not in events
    assert results["web"] is None


def _listener(code: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code, *args])


SERVE_TCP = (
    "import socket,sys,time\ns=socket.socket()\n"
    "s.bind(('127.0.0.1',int(sys.argv[1])));s.listen();time.sleep(30)"
)
SLEEP = "import time; time.sleep(30)"


def test_tcp_health_passes_once_the_service_itself_listens() -> None:
    port = free_port()
    process = _listener("import time; time.sleep(0.3)\n" + SERVE_TCP, str(port))
    try:
        assert wait_healthy(process, port, HealthCheck(tcp=True), 10) is None
    finally:
        process.kill()
        process.wait()


def test_tcp_health_refuses_a_stranger_on_the_port() -> None:
    stranger = socket.socket()
    stranger.bind(("127.0.0.1", 0))
    stranger.listen()
    port = stranger.getsockname()[1]
    process = _listener(SLEEP)
    try:
        why = wait_healthy(process, port, HealthCheck(tcp=True), 0.5)
        assert why is not None and "another process listens" in why
    finally:
        stranger.close()
        process.kill()
        process.wait()


def test_http_health_with_exact_statuses(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_healthy(process, port, HealthCheck(path="/missing", status=[404]), 10) is None
        why = wait_healthy(process, port, HealthCheck(path="/missing"), 0.5)
        assert why is not None and "answered 404" in why
        assert wait_healthy(process, port, HealthCheck(path="/", status=200), 5) is None
    finally:
        process.kill()
        process.wait()


ORDERED = """\
version: 1
services:
  slow:
    paths: ["slow/**"]
    local: {run: "python slow.py", cwd: slow, env: {PORT: "{port}"}, health: {tcp: true}}
  needy:
    paths: ["needy/**"]
    local:
      run: "python needy.py"
      cwd: needy
      env: {PORT: "{port}", SLOW_URL: "${LOOPGATE_SLOW_URL}"}
      health: {tcp: true}
      after: [slow]
  broken:
    paths: ["broken/**"]
    local: {run: "python -c 'raise SystemExit(3)' {port}", cwd: broken, health: {tcp: true}}
  held:
    paths: ["held/**"]
    local: {run: "python needy.py", cwd: needy, env: {PORT: "{port}"}, health: {tcp: true}, after: [broken]}
"""
SLOW = """\
import os, time
from http.server import HTTPServer, SimpleHTTPRequestHandler
time.sleep(0.6)
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), SimpleHTTPRequestHandler).serve_forever()
"""
NEEDY = """\
import os, socket, urllib.request
urllib.request.urlopen(os.environ["SLOW_URL"] + "/", timeout=2)  # fails unless slow already answers
s = socket.socket(); s.bind(("127.0.0.1", int(os.environ["PORT"]))); s.listen()
while True: s.accept()[0].close()
"""


def test_the_baseline_starts_a_service_after_those_it_names(tmp_path: Path) -> None:
    from bot.config import RuntimeSettings
    from bot.runtimes.local import LocalRuntime
    from bot.runtimes.protocol import BaselineError, Source
    from tests.gitrepo import GitRepo

    files = {"slow/slow.py": SLOW, "needy/needy.py": NEEDY, "broken/x": "", "held/x": ""}
    good = ORDERED.split("  broken:")[0]
    repo = GitRepo.init(tmp_path / "repo", {".loopgate.yml": good, **files})
    runtime = LocalRuntime(RuntimeSettings(state_dir=tmp_path / "state"))
    sha = repo.git("rev-parse", "HEAD").strip()
    baseline = runtime.up_baseline(Source(repo.path, sha), parse_config(good))
    try:
        assert runtime.baseline_health(baseline) is None  # needy read slow's answer at its start
    finally:
        runtime.down(baseline.env_id)

    with pytest.raises(BaselineError) as caught:
        runtime.up_baseline(Source(repo.path, sha), parse_config(ORDERED))
    # The cause is named, not the service it held back; `held` never started.
    assert str(caught.value).startswith("baseline broken exited with code 3 before becoming healthy")
    assert runtime.baselines() == []


def test_a_service_moved_off_a_taken_port_is_routed_there_before_its_dependents_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The port chosen for `slow` is taken between choosing and binding it, by a listener that accepts
    and never answers; `slow` moves to a fresh port, and Envoy must route there before `needy`, which
    calls `slow` through Envoy as it starts, is started."""
    from bot.config import RuntimeSettings
    from bot.runtimes.local import LocalRuntime
    from bot.runtimes.local import runtime as runtime_module
    from bot.runtimes.protocol import Source
    from tests.gitrepo import GitRepo

    good = ORDERED.split("  broken:")[0]
    files = {".loopgate.yml": good, "slow/slow.py": SLOW, "needy/needy.py": NEEDY}
    repo = GitRepo.init(tmp_path / "repo", files)
    base = Source(repo.path, repo.git("rev-parse", "HEAD").strip())
    with socket.socket() as thief:
        thief.bind(("127.0.0.1", 0))
        thief.listen()
        real = runtime_module.free_ports
        calls: list[int] = []

        def stolen(count: int, avoid: Collection[int] = ()) -> list[int]:
            """The listeners' ports as chosen; of the services' (in name order: needy, slow), slow's
            is the thief's."""
            calls.append(count)
            ports = real(count, avoid)
            return ports if len(calls) == 1 else [ports[0], thief.getsockname()[1]]

        monkeypatch.setattr(runtime_module, "free_ports", stolen)
        runtime = LocalRuntime(RuntimeSettings(state_dir=tmp_path / "state"))
        baseline = runtime.up_baseline(base, parse_config(good))
        try:
            assert runtime.baseline_health(baseline) is None  # needy read slow's answer at its start
            record = runtime.registry.load_env(baseline.env_id)
            assert record is not None and record.services["slow"].port != thief.getsockname()[1]
        finally:
            runtime.down(baseline.env_id)


def test_a_start_failure_is_named_by_its_cause_not_the_frameworks_last_words(tmp_path: Path) -> None:
    from bot.runtimes.local.processes import cause_line

    log = tmp_path / "front.log"
    log.write_text(
        "INFO:     Waiting for application startup.\n"
        "Traceback (most recent call last):\n"
        '  File "/srv/front_app.py", line 30, in lifespan\n'
        "    known = get(f\"{NAMES_URL}/names\", None)\n"
        "TimeoutError: timed out\n"
        "\n"
        "ERROR:    Application startup failed. Exiting.\n"
    )
    assert cause_line(log) == "TimeoutError: timed out"
    log.write_text("node:events\nError: listen EADDRINUSE: address already in use 127.0.0.1:4000\n  at x\n")
    assert cause_line(log).startswith("Error: listen EADDRINUSE")
    log.write_text("serving on 4000\nbye\n")
    assert cause_line(log) == "bye"
    assert cause_line(tmp_path / "missing.log") == "(no output)"
