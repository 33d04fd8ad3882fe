"""The evidence page in a real browser: it renders, it shows the failure, and injected markup stays text."""

from __future__ import annotations

import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bot.evidence import Evidence
from bot.evidence import TestFailure as Failure  # a Test* name in the module would be collected
from bot.report import render_html
from tests import evidence_samples as samples

CHROMIUM = Path("/usr/bin/chromium")
INJECTED = '<script>document.title="pwned"</script><img src=x onerror=alert(1)>'
FAILING_TEST = "e2e/test_checkout.py::test_checkout_in_stock_then_read_order"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
        f"--user-data-dir={profile}",
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


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
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("page")
    path = directory / "run.html"
    path.write_text(render_html(hostile_failing()), encoding="utf-8")
    return path


def test_dom_shows_the_verdict_the_failure_and_injected_markup_as_text(page: Path, tmp_path: Path) -> None:
    dom = chromium("--dump-dom", page.as_uri(), profile=tmp_path / "profile").stdout
    assert '<p class="word" id="verdict">FAIL</p>' in dom
    assert FAILING_TEST in dom
    assert "e2e/test_checkout.py:43" in dom
    assert "2 failed, 4 passed in 3.21s" in dom
    assert '&lt;script&gt;document.title="pwned"&lt;/script&gt;' in dom
    assert "<script" not in dom.lower(), "an injected script became an element"
    assert "<img" not in dom.lower() and "<b>" not in dom
    assert "<title>loopgate FAIL · acme/shop · agent/&lt;b&gt;bold&lt;/b&gt;</title>" in dom


def test_screenshot_is_a_picture(page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "run.png"
    chromium(f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri(), profile=tmp_path / "profile")
    data = shot.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000


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
