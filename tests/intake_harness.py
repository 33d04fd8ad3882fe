"""The App's HTTP side in-process (FastAPI's TestClient) over a real SQLite store: for webhook intake
tests that need no worker and no GitHub, only the route, the store and the start-up replay."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
from fastapi.testclient import TestClient

from bot.config import AppSettings
from bot.github.client import GitHubApp
from bot.server import create_app
from bot.store import Store
from tests.github_fake import webhooks

SECRET = "intake-secret"
API_TOKEN = "intake-api-token"
REPO = "acme/shop"
INSTALLATION = 4242


class NoGitHub:
    """The request path never talks to GitHub; anything that tries fails the test loudly."""

    def repo(self, *_args: Any) -> Any:
        raise AssertionError("the webhook route talked to GitHub")


@dataclass
class Intake:
    client: TestClient
    store: Store
    ids: Iterator[int]

    def post(
        self,
        body: bytes,
        event: str = "push",
        *,
        secret: str | None = SECRET,
        delivery: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> httpx.Response:
        sent = webhooks.headers_for(event, body, secret, delivery or str(uuid.uuid4()))
        sent.update(headers or {})
        return self.client.post("/webhooks/github", content=body, headers=sent)

    def deliver(self, event: str, payload: Any, delivery: str | None = None) -> httpx.Response:
        return self.post(json.dumps(payload).encode(), event, delivery=delivery)

    def new_run_id(self) -> str:
        return f"run{next(self.ids):06d}"


@contextmanager
def intake_app(state: Path) -> Iterator[Intake]:
    settings = AppSettings(
        github_app_id=1, webhook_secret=SECRET, api_token=API_TOKEN, state_dir=state, workers=0
    )
    with Store.open(state_dir=state) as store:
        intake = Intake(cast(TestClient, None), store, itertools.count(1))
        app = create_app(settings, store, cast(GitHubApp, NoGitHub()), new_run_id=intake.new_run_id)
        with TestClient(app, raise_server_exceptions=False) as client:
            intake.client = client
            yield intake


def push(branch: str = "agent/fix", after: str = "a" * 40, before: str = "b" * 40) -> dict[str, Any]:
    """A push of `branch` from GitHub's own example, made to look like `acme/shop`'s."""
    payload = webhooks.adapt(
        webhooks.load_payload("push", "payload"),
        repo_full_name=REPO,
        installation_id=INSTALLATION,
        ref=f"refs/heads/{branch}",
        before=before,
        after=after,
    )
    return payload


def example(event: str, name: str, **changes: Any) -> dict[str, Any]:
    return webhooks.adapt(
        webhooks.load_payload(event, name), repo_full_name=REPO, installation_id=INSTALLATION, **changes
    )
