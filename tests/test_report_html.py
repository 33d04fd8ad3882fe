"""The evidence page in a real browser: what it shows, that injected markup stays text, and that the
browser logs nothing against it (a blocked resource or script would show up as a console message)."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from bot.evidence import Evidence, ServiceResult
from bot.evidence import TestFailure as Failure  # a Test* name in the module would be collected
from bot.evidence.model import RequestEdge
from bot.report import display, render_html
from tests import evidence_samples as samples

CHROMIUM = Path("/usr/bin/chromium")
INJECTED = '<script>document.title="pwned"</script><img src=x onerror=alert(1)>'
FAILING_TEST = "e2e/test_checkout.py::test_checkout_in_stock_then_read_order"
# With --enable-logging=stderr, Chromium writes every console message as `...:INFO:CONSOLE:<line>] "..."`.
CONSOLE = re.compile(r":CONSOLE(?:\(\d+\)|:\d+)\]")


@dataclass(frozen=True)
class Shown:
    """A page as the browser left it: its DOM, the text a reader sees, and the console's messages."""

    dom: str
    text: str
    console: list[str]


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with nothing that reaches the network or needs a sandbox-capable kernel."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install -y chromium)")
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
        f"--user-data-dir={profile}",
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


class VisibleText(HTMLParser):
    """The text of a body as a reader sees it: no head, style or script, whitespace collapsed."""

    HIDDEN = frozenset({"head", "style", "script", "template"})

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.hidden += tag in self.HIDDEN

    def handle_endtag(self, tag: str) -> None:
        self.hidden -= tag in self.HIDDEN

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)

    def text(self) -> str:
        return " ".join(" ".join(self.parts).split())


def show(html: str, directory: Path) -> Shown:
    page = directory / "run.html"
    page.write_text(html, encoding="utf-8")
    result = chromium("--dump-dom", page.as_uri(), profile=directory / "profile")
    parser = VisibleText()
    parser.feed(result.stdout)
    console = [line for line in result.stderr.splitlines() if CONSOLE.search(line)]
    return Shown(dom=result.stdout, text=parser.text(), console=console)


def words(text: str) -> str:
    return " ".join(text.split())


def hostile_failing() -> Evidence:
    evidence = samples.failing()
    suite = evidence.suites[0]
    suite.failures.append(
        Failure(test="e2e/test_xss.py::test_injected", message=INJECTED, file="e2e/test_xss.py", line=7)
    )
    suite.log_tail += INJECTED + "\n"
    evidence.head.ref = "agent/<b>bold</b>"
    return evidence


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Shown:
    return show(render_html(hostile_failing()), tmp_path_factory.mktemp("hostile"))


@pytest.mark.parametrize("name", sorted(samples.ALL))
def test_page_shows_the_evidence_and_the_console_stays_silent(name: str, tmp_path: Path) -> None:
    evidence = samples.ALL[name]()
    shown = show(render_html(evidence), tmp_path)
    assert shown.console == []
    expected = [
        display.verdict_label(evidence),
        evidence.repo,
        *evidence.reasons,
        *(service.name for service in evidence.services),
        *(suite.name for suite in evidence.suites),
        *(failure.test for suite in evidence.suites for failure in suite.failures),
        *evidence.changed_files,
        *evidence.notes,
    ]
    missing = [text for text in expected if words(text) not in shown.text]
    assert missing == []


def test_failing_page_shows_where_it_failed(hostile: Shown) -> None:
    assert '<p class="word" id="verdict">FAIL</p>' in hostile.dom
    for text in (FAILING_TEST, "e2e/test_checkout.py:43", "2 failed, 4 passed in 3.21s", "assert 502 == 201"):
        assert text in hostile.text, text


def test_injected_markup_is_shown_as_text(hostile: Shown) -> None:
    assert INJECTED in hostile.text, "the message and the log show the markup as the test wrote it"
    assert "agent/<b>bold</b>" in hostile.text
    elements = Resources()
    elements.feed(hostile.dom)
    assert elements.found == [], "an injected script or image became an element"
    assert "<b>" not in hostile.dom
    assert "<title>loopgate FAIL · acme/shop · agent/&lt;b&gt;bold&lt;/b&gt;</title>" in hostile.dom
    assert hostile.console == []


def test_console_messages_are_noticed(tmp_path: Path) -> None:
    """The silence above means something: a page the CSP must block does log to the console."""
    page = render_html(samples.failing()).replace("<body>", "<body><script>console.log(1)</script>", 1)
    assert show(page, tmp_path).console


class Resources(HTMLParser):
    """Collects everything that would make the page fetch something or run code."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "link", "img", "iframe", "object", "embed"):
            self.found.append(tag)
        self.found += [f"{tag}[{name}]" for name, _ in attrs if name == "src" or name.startswith("on")]


@pytest.mark.parametrize("name", sorted(samples.ALL))
def test_page_is_self_contained(name: str) -> None:
    html = render_html(samples.ALL[name]())
    parser = Resources()
    parser.feed(html)
    assert parser.found == []
    assert "url(" not in html and "@import" not in html
    assert "default-src 'none'" in html, "a content security policy backs the escaping up"


# --- the request map --------------------------------------------------------------------------------

PROBE = """<!DOCTYPE html><html><body><iframe id="page" src="run.html" width="1200" height="900"></iframe>
<pre id="found"></pre>
<script>
window.addEventListener("load", () => {
  const page = document.getElementById("page").contentDocument;
  const map = page.querySelector("#request-map svg");
  const box = (element) => { const r = element.getBoundingClientRect(); return [r.width, r.height]; };
  const found = {
    svg: box(map),
    nodes: [...map.querySelectorAll("g.node")].map((g) => ({
      name: g.dataset.name, role: g.getAttribute("class"), box: box(g.querySelector("rect")),
      text: g.querySelector("text").textContent,
    })),
    edges: [...map.querySelectorAll("g.edge")].map((g) => ({
      source: g.dataset.source, target: g.dataset.target, tagged: g.dataset.tagged,
      untagged: g.dataset.untagged, lost: g.classList.contains("lost"),
      stroke: getComputedStyle(g.querySelector("path")).stroke,
    })),
    elements: [...map.querySelectorAll("*")].map((e) => e.localName)
      .filter((n) => !["g", "title", "path", "polygon", "text", "rect"].includes(n)),
  };
  document.getElementById("found").textContent = JSON.stringify(found);
});
</script></body></html>
"""
RED = "rgb(207, 34, 46)"  # --fail
NAME = "<img src=x onerror=alert(1)>"  # short enough to be shown whole


def mapped() -> Evidence:
    """The inconclusive run's map: gateway drops the tag on its calls to the orders fork; a service with
    markup for a name passes the traffic on (names are validated, but the page must not rely on it)."""
    evidence = samples.inconclusive()
    evidence.services.append(ServiceResult(name=NAME, forked=False, reason="unchanged"))
    evidence.request_map = [
        RequestEdge(source=None, target="gateway", tagged=6),
        RequestEdge(source="gateway", target="orders", untagged=5, lost_tag=True),
        RequestEdge(source="orders", target="inventory", untagged=4),
        RequestEdge(source="orders", target=NAME, untagged=2),
    ]
    return evidence


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Shown, dict[str, Any]]:
    """The page on its own (its console), and as a probe page in the same folder reads its DOM."""
    directory = tmp_path_factory.mktemp("map")
    shown = show(render_html(mapped()), directory)
    (directory / "probe.html").write_text(PROBE, encoding="utf-8")
    probed = chromium(
        "--allow-file-access-from-files",
        "--dump-dom",
        (directory / "probe.html").as_uri(),
        profile=directory / "probe-profile",
    )
    found = re.search(r'<pre id="found">(.*?)</pre>', probed.stdout, re.S)
    assert found is not None and found[1], probed.stdout[-2000:]
    return shown, json.loads(unescape(found[1]))


def test_the_request_map_is_drawn_with_its_nodes_and_the_lost_hop_in_red(
    drawn: tuple[Shown, dict[str, Any]],
) -> None:
    shown, found = drawn
    assert shown.console == [], "the inline SVG needs nothing the page's CSP blocks"
    assert found["svg"][0] > 0 and found["svg"][1] > 0
    nodes = {n["name"]: n for n in found["nodes"]}
    assert set(nodes) == {"client", "gateway", "orders", "inventory", NAME}
    assert nodes["orders"]["role"] == "node fork" and nodes["gateway"]["role"] == "node baseline"
    assert nodes["client"]["role"] == "node client"
    assert nodes[NAME]["text"] == NAME, "a name with markup is shown as text"
    assert all(n["box"][0] > 0 and n["box"][1] > 0 for n in found["nodes"])
    edges = {(e["source"], e["target"]): e for e in found["edges"]}
    lost = edges["gateway", "orders"]
    assert (lost["lost"], lost["tagged"], lost["untagged"], lost["stroke"]) == (True, "0", "5", RED)
    assert [e for e in found["edges"] if e["stroke"] == RED] == [lost]
    assert edges["client", "gateway"]["tagged"] == "6"
    assert found["elements"] == [], "only shapes and text: no script, image or foreign object"
    assert "tag lost here" in shown.text and "6 tagged, 0 untagged" in shown.text
