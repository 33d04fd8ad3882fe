"""The App under test: the real `loopgate serve` process over HTTP, talking to the GitHub contract fake."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.store import Store
from tests.conftest import LOOPGATE, processes_under
from tests.github_fake import GitHubFake, webhooks
from tests.gitrepo import GitRepo

SECRET = "test-webhook-secret"
API_TOKEN = "test-api-token"
REPO = "acme/shop"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class AppServer:
    url: str
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    log: Path
    _store: Store | None = None

    @property
    def store(self) -> Store:
        """The server's own database, read beside it (SQLite in WAL mode, or PostgreSQL)."""
        if self._store is None:
            state = Path(self.env["LOOPGATE_STATE_DIR"])
            self._store = Store.open(self.env.get("LOOPGATE_DATABASE_URL"), state_dir=state)
        return self._store

    def deliver(self, event: str, payload: dict[str, Any], delivery_id: str | None = None) -> httpx.Response:
        return webhooks.deliver(f"{self.url}/webhooks/github", event, payload, SECRET, delivery_id)

    def api(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=10)

    def runs(self, **query: str) -> list[dict[str, Any]]:
        response = httpx.get(
            f"{self.url}/api/runs", params=query, headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=10
        )
        response.raise_for_status()
        runs: list[dict[str, Any]] = response.json()
        return runs

    def wait_for_run(
        self, sha: str, timeout: float = 120, status: tuple[str, ...] = ("completed",)
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [r for r in self.runs(sha=sha) if r["status"] in status]
            if found and self.reported(found[0]["id"]):
                return found[0]
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)
        raise AssertionError(f"no run for {sha[:12]} reached {status} in {timeout}s: {self.runs(sha=sha)}")

    def reported(self, run_id: str) -> bool:
        """Has the outbox delivered every report of the run (its check conclusion, its comment)?
        A run concludes before its reports reach GitHub; tests read GitHub after both."""
        return not any(r.run_id == run_id for r in self.store.reports(pending=True))

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_until_serving(url: str, process: subprocess.Popen[bytes], log: Path, *, timeout: float) -> None:
    """Until `loopgate serve` answers /healthz; its log tail if it exits or never does."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the server did not start: {log.read_text()[-3000:]}")
        time.sleep(0.1)


@contextmanager
def app_server(
    fake: GitHubFake,
    state_dir: Path,
    *,
    workers: int = 1,
    database_url: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> Iterator[AppServer]:
    port = free_port()
    env = {
        **os.environ,
        "LOOPGATE_GITHUB_APP_ID": str(fake.app_id),
        "LOOPGATE_GITHUB_PRIVATE_KEY": fake.private_key_pem,
        "LOOPGATE_WEBHOOK_SECRET": SECRET,
        "LOOPGATE_GITHUB_API_URL": fake.url,
        "LOOPGATE_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "LOOPGATE_API_TOKEN": API_TOKEN,
        "LOOPGATE_WORKERS": str(workers),
        "LOOPGATE_STATE_DIR": str(state_dir),
        "LOOPGATE_GITHUB_THROTTLE": "false",
        **({"LOOPGATE_DATABASE_URL": database_url} if database_url else {}),
        **(extra_env or {}),
    }
    state_dir.mkdir(parents=True, exist_ok=True)
    log = state_dir / f"server-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(LOOPGATE), "serve", "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    server = AppServer(f"http://127.0.0.1:{port}", process, env, log)
    try:
        wait_until_serving(server.url, process, log, timeout=30)
        yield server
    finally:
        server.stop()
    left = processes_under(state_dir)
    assert left == [], f"the server left processes behind: {left}"


def push_payload(
    repo: GitRepo, branch: str, sha: str, before: str | None = None, *, installation_id: int | None = None
) -> dict[str, Any]:
    return webhooks.adapt(
        webhooks.load_payload("push", "with-installation"),
        repo_full_name=REPO,
        clone_url=f"file://{repo.path}",
        default_branch="main",
        ref=f"refs/heads/{branch}",
        before=before or "0" * 40,
        after=sha,
        installation_id=installation_id,
    )


def adapted(fake: GitHubFake, event: str, name: str, **changes: Any) -> dict[str, Any]:
    return webhooks.adapt(
        webhooks.load_payload(event, name),
        repo_full_name=REPO,
        clone_url=f"file://{fake.state.require_repo(REPO).path}",
        default_branch="main",
        installation_id=fake.installation_id(REPO),
        **changes,
    )


def new_delivery() -> str:
    return str(uuid.uuid4())


@pytest.fixture(scope="module")
def fake(shop: GitRepo) -> Iterator[GitHubFake]:
    """The GitHub contract fake holding the module's `shop` repository."""
    with GitHubFake.running(repos={REPO: shop.path}) as running:
        yield running


@pytest.fixture(scope="module")
def server(fake: GitHubFake, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """One `loopgate serve` per test module, talking to `fake`."""
    with app_server(fake, tmp_path_factory.mktemp("app-state")) as running:
        yield running
