"""Contract probing against real services (bot/pipeline/contract.py): a tiny FastAPI app in two versions,
each a uvicorn process on 127.0.0.1, reached through a Runtime whose `probe` sends real HTTP — untagged to
the base version, tagged to the head version, as the data plane routes them."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import httpx
import pytest

from bot.config import Config, parse_config
from bot.pipeline.contract import ContractCheck, check_contracts
from bot.runtimes.protocol import (
    Baseline,
    ObservedRequest,
    ProbeAnswer,
    ProbeError,
    ProbeRequest,
    Runtime,
    Sandbox,
    Source,
)
from tests.conftest import stop_process

BASE_APP = '''
from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel

app = FastAPI()
STOCK = {"sku-red-mug": 10, "sku-teapot": 0}


class Item(BaseModel):
    sku: str
    available: int


@app.get("/healthz")
def healthz() -> dict[str, bool]:
    return {"ok": True}


@app.get("/items/{sku}")
def get_item(sku: str) -> Item:
    if sku not in STOCK:
        raise HTTPException(404, "no such item")
    return Item(sku=sku, available=STOCK[sku])


@app.get("/items/{sku}/history")
def history(sku: str) -> list[Item]:
    if sku not in STOCK:
        raise HTTPException(404, "no such item")
    return [Item(sku=sku, available=STOCK[sku])]


@app.get("/search")
def search(q: str = Query(examples=["mug"])) -> list[Item]:
    """No caller in the repository uses this, and no suite does."""
    return [Item(sku=s, available=n) for s, n in STOCK.items() if q in s]
'''

RENAMED = (
    BASE_APP.replace(
        '"sku-teapot": 0}',
        '"sku-teapot": 0, "sku-made-in-sandbox": 1}',  # a record a suite made in the fork
    )
    .replace(
        'def search(q: str = Query(examples=["mug"]))', 'def search(query: str = Query(examples=["mug"]))'
    )
    .replace("if q in s]", "if query in s]")
)

NEW_FIELD = BASE_APP.replace(
    "    available: int\n", '    available: int\n    currency: str = "EUR"\n'
).replace("Item(sku=sku, available=STOCK[sku])", "Item(sku=sku, available=STOCK[sku], currency='EUR')")

CONFIG = """\
version: 1
services:
  inventory:
    paths: ["inventory/**"]
    local: {run: "python -m uvicorn app:app --port {port}"}
    openapi: OPENAPI
verify:
  diff: {max_requests: MAX}
"""


class Served:
    def __init__(self, directory: Path, source: str) -> None:
        directory.mkdir()
        (directory / "app.py").write_text(textwrap.dedent(source))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port", "0"],
            cwd=directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.url = ""
        self._started = threading.Event()
        threading.Thread(target=self._read_log, daemon=True).start()

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            found = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
            if found:
                self.url = found.group(1)
                self._started.set()

    def wait(self) -> str:
        assert self._started.wait(20), "uvicorn did not start"
        return self.url


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("contract")
    served = {
        name: Served(root / name, source)
        for name, source in (("base", BASE_APP), ("renamed", RENAMED), ("new_field", NEW_FIELD))
    }
    try:
        yield {name: s.wait() for name, s in served.items()}
    finally:
        for s in served.values():
            stop_process(s.process)


class TwoVersions:
    """The part of a Runtime contract probing uses: untagged to the base, tagged to the head."""

    kind = "local"

    def __init__(self, base: str, head: str) -> None:
        self.urls = {False: base, True: head}
        self.sent: list[tuple[bool, str]] = []

    def probe(self, sandbox: Sandbox, request: ProbeRequest, *, tagged: bool) -> ProbeAnswer:
        self.sent.append((tagged, request.path))
        try:
            answer = httpx.request(
                request.method, self.urls[tagged] + request.path, headers=dict(request.headers), timeout=5
            )
        except httpx.HTTPError as exc:
            raise ProbeError(f"{type(exc).__name__}: {exc}") from None
        return ProbeAnswer(
            answer.status_code, {k.lower(): v for k, v in answer.headers.items()}, answer.content
        )


def config(openapi: str = "{path: /openapi.json}", max_requests: int = 50) -> Config:
    return parse_config(CONFIG.replace("OPENAPI", openapi).replace("MAX", str(max_requests)))


def sandbox(cfg: Config) -> Sandbox:
    baseline = Baseline("env", Source(Path("."), "0" * 40), {"inventory": "http://unused"}, reused=True)
    return Sandbox("abc123", baseline, cfg)


def seen(path: str, *, tagged: bool = True, status: int = 200) -> ObservedRequest:
    return ObservedRequest(
        "inventory",
        "abc123" if tagged else None,
        "abc123" if tagged else None,
        "GET",
        path,
        status,
        None,
        "",
        1,
    )


SUITE_TRAFFIC = [seen("/items/sku-red-mug"), seen("/items/sku-nope", status=404)]


def check(runtime: TwoVersions, cfg: Config, observed: list[ObservedRequest] | None = None) -> ContractCheck:
    return check_contracts(
        cast(Runtime, runtime),
        sandbox(cfg),
        cfg,
        ["inventory"],
        SUITE_TRAFFIC if observed is None else observed,
    )


def test_a_renamed_query_parameter_no_suite_calls_is_found(versions: dict[str, str]) -> None:
    started = time.monotonic()
    runtime = TwoVersions(versions["base"], versions["renamed"])
    result = check(runtime, config())

    breaking = {(r.request, f.kind, f.pointer) for r in result.diff for f in r.findings if f.breaking}
    # From the documents: the parameter's old and new name.
    assert ("OpenAPI GET /search", "parameter_renamed", "/parameters/query/q") in breaking
    renamed = next(f for r in result.diff for f in r.findings if f.kind == "parameter_renamed")
    assert (renamed.baseline, renamed.sandbox) == ("q", "query (required)")
    # From the probe: the base answers the described example, the head refuses the request.
    assert ("GET /search?q=mug (probed from OpenAPI)", "status_changed", "") in breaking
    status = next(f for r in result.diff if r.request.startswith("GET /search") for f in r.findings)
    assert (status.baseline, status.sandbox) == ("200", "422")
    # The suites' id reached an operation they never called; the one they did call is left to the diff.
    probed = [r.request for r in result.diff if "probed" in r.request]
    assert probed == [
        "GET /healthz (probed from OpenAPI)",
        "GET /items/sku-red-mug/history (probed from OpenAPI)",
        "GET /search?q=mug (probed from OpenAPI)",
    ]
    assert (False, "/openapi.json") in runtime.sent and (True, "/openapi.json") in runtime.sent
    assert result.notes == []
    assert time.monotonic() - started < 10


def test_a_new_optional_field_breaks_nothing(versions: dict[str, str]) -> None:
    result = check(TwoVersions(versions["base"], versions["new_field"]), config())
    assert [f for r in result.diff for f in r.findings if f.breaking] == []
    added = {(r.request, f.pointer) for r in result.diff for f in r.findings if f.kind == "field_added"}
    assert ("OpenAPI GET /items/{sku}", "/responses/200/currency") in added
    assert ("GET /items/sku-red-mug/history (probed from OpenAPI)", "/*/currency") in added


def test_no_description_is_a_note(versions: dict[str, str]) -> None:
    runtime = TwoVersions(versions["base"], versions["renamed"])
    result = check(runtime, config("/no-such-description.json"))
    assert result.diff == []
    assert result.notes == [
        "inventory: no OpenAPI description from the baseline at /no-such-description.json (status 404)"
    ]
    result = check(runtime, config("/healthz"))
    assert result.diff == []
    assert result.notes == [
        "inventory: no OpenAPI description from the baseline at /healthz (the answer is JSON but not an"
        " OpenAPI description (no `openapi` version))"
    ]


def test_switched_off_sends_nothing(versions: dict[str, str]) -> None:
    runtime = TwoVersions(versions["base"], versions["renamed"])
    result = check(runtime, config("false"))
    assert (result.diff, result.notes, runtime.sent) == ([], [], [])


def test_probes_are_bounded_by_max_requests(versions: dict[str, str]) -> None:
    result = check(TwoVersions(versions["base"], versions["renamed"]), config(max_requests=2))
    assert [r.request for r in result.diff if "probed" in r.request] == [
        "GET /healthz (probed from OpenAPI)",
        "GET /items/sku-red-mug/history (probed from OpenAPI)",
    ]
    assert result.notes == [
        "inventory: 1 more safe operations not probed: verify.diff.max_requests (2) reached"
    ]


def test_an_unreachable_fork_is_not_sent(versions: dict[str, str]) -> None:
    runtime = TwoVersions(versions["base"], "http://127.0.0.1:9")  # nothing listens on the discard port
    result = check(runtime, config())
    assert result.notes[0].startswith(
        "inventory: the fork's OpenAPI description at /openapi.json was not compared"
    )
    assert all("(not sent: ConnectError)" in r.request for r in result.diff)
    assert len(result.diff) == 3


def test_an_id_only_one_side_has_is_not_a_finding(versions: dict[str, str]) -> None:
    """A record the suites made in the sandbox's data is absent from the baseline's: not the change's."""
    traffic = [seen("/items/sku-made-in-sandbox")]
    result = check(TwoVersions(versions["base"], versions["renamed"]), config(), traffic)
    assert not any("history" in r.request for r in result.diff)
    assert any(r.request.startswith("GET /search") for r in result.diff)


def test_another_pair_of_sides_through_send(versions: dict[str, str]) -> None:
    """A control and the candidate, say: `send` reaches them; the runtime's own probe is not used."""

    class Unused(TwoVersions):
        def probe(self, sandbox: Sandbox, request: ProbeRequest, *, tagged: bool) -> ProbeAnswer:
            raise AssertionError("send was given")

    sides = TwoVersions(versions["base"], versions["renamed"])
    cfg = config()
    result = check_contracts(
        cast(Runtime, Unused("", "")),
        sandbox(cfg),
        cfg,
        ["inventory"],
        SUITE_TRAFFIC,
        send=lambda request, candidate: sides.probe(sandbox(cfg), request, tagged=candidate),
    )
    assert any(f.kind == "parameter_renamed" for r in result.diff for f in r.findings)
    assert (True, "/search?q=mug") in sides.sent and (False, "/search?q=mug") in sides.sent
