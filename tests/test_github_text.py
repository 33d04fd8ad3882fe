"""Text loopgate writes to GitHub stays inert: checked with GitHub's own autolink rules.

Agent-controlled text (branch names, commit subjects, test names and messages, log tails, paths,
diff pointers and values) is put into every field of an Evidence; no rendered output may then carry
anything GitHub would turn into a link, a notification, a cross-reference or an issue closed on merge
(tests/github_autolinks.py), nor any HTML, heading, table row or fence the agent wrote.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from bot.evidence import Evidence, Links, Propagation, ServiceResult
from bot.report import escape, render_check, render_comment
from tests import evidence_samples as samples
from tests.github_autolinks import MD, github_links, links_in_markdown, plain_texts

# Each payload with the kind of link GitHub makes of it in plain text.
PAYLOADS = {
    "https://evil.example/x?y=1": "url",
    "HTTP://EVIL.EXAMPLE": "url",
    "ftp://files.evil.example": "url",
    "www.x.com": "www",
    "WWW.evil.example/path": "www",
    "@octocat": "mention",
    "@org/team": "mention",
    "#123": "issue",
    "GH-123": "gh issue",
    "gh-7": "gh issue",
    "org/repo#1": "cross-repo issue",
    "jlord@a5c3785": "user@sha",
    "jlord/sheetsee.js@a5c3785ed8d6a35868bc169f07e40e889087fd2e": "repo@sha",
    "a5c3785ed8d6a35868bc169f07e40e889087fd2e": "sha",
    "deadbee": "sha",
    "1234567": "sha",
    "fixes #12": "closing keyword",
    "Closes: owner/repo#3": "closing keyword",
    "RESOLVED GH-4": "closing keyword",
    "resolves https://github.com/owner/repo/issues/5": "closing keyword",
    "mail a@b.example": "email",
    "mailto:a@b.example": "protocol",
    "xmpp:bot@chat.example": "protocol",
}
# Markdown and HTML an agent might use to restructure a report.
STRUCTURE = [
    "<details><summary>ok</summary>",
    "</details>",
    "<!-- hidden -->",
    "<img src=x onerror=alert(1)>",
    "| injected | row |",
    "# heading",
    "## loopgate: PASS",
    "```",
    "~~~",
    "`` ` ``",
    "> quote",
    "- [x] done",
    "[click](https://evil.example)",
    "![img](https://evil.example/x.png)",
    ":shipit: :+1:",
]
EVERYTHING = "\n".join([*PAYLOADS, *STRUCTURE])


# --- the checker itself ---------------------------------------------------------------------------


@pytest.mark.parametrize(("payload", "kind"), PAYLOADS.items())
def test_checker_finds_what_github_links(payload: str, kind: str) -> None:
    assert kind in {found for found, _ in github_links(payload)}
    assert links_in_markdown(f"text {payload} text\n"), "plain text in Markdown is checked"


@pytest.mark.parametrize(
    "markdown",
    [
        "see `#12` and `` @octocat `` in code\n",
        "```text\nfixes #12 https://evil.example @octocat\n```\n",
        "[JSON](https://loopgate.example/api/runs/1)\n",
        "| `a5c3785ed8d6` | ``www.x.com`` |\n|---|---|\n| `@x` | `GH-1` |\n",
        "plain words, 123456 and #x and sha256 and mail at example\n",
    ],
)
def test_checker_ignores_code_and_links(markdown: str) -> None:
    assert links_in_markdown(markdown) == []


# --- the escaping ---------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", PAYLOADS)
def test_neutralised_text_links_nothing_and_reads_the_same(payload: str) -> None:
    broken = escape.neutralise_links(payload)
    assert github_links(broken) == []
    assert broken.replace(escape.ZERO_WIDTH_SPACE, "") == payload


@pytest.mark.parametrize("payload", PAYLOADS)
def test_inline_text_links_nothing_and_shows_the_text(payload: str) -> None:
    markdown = f"- {escape.inline(payload)}\n"
    assert links_in_markdown(markdown) == []
    assert [t.replace(escape.ZERO_WIDTH_SPACE, "") for t in plain_texts(markdown)] == [payload]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_code_spans_hold_the_text_unchanged(payload: str) -> None:
    """Inside code GitHub links nothing, so identifiers keep their exact characters there."""
    markdown = f"| {escape.cell(escape.code(payload))} |\n|---|\n"
    codes = [
        c.content for t in MD.parse(markdown) if t.children for c in t.children if c.type == "code_inline"
    ]
    assert codes == [payload]


def test_hex_runs_too_short_or_inside_words_are_left_alone() -> None:
    for text in ("123456", "0x7ffee3b2c8a0", "test_deadbeef12", "abcdefg1234567"):
        assert escape.neutralise_links(text) == text


# --- every report ---------------------------------------------------------------------------------


def fill(model: BaseModel, text: str) -> None:
    """Put `text` into every string field of `model` and of the records in it, loopgate's own links
    excepted: a field added to the Evidence later is covered without touching this test."""
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, Links):
            continue
        if isinstance(value, BaseModel):
            fill(value, text)
        elif isinstance(value, list):
            _fill_list(model, name, value, text, strings=field.annotation == list[str])
        elif field.annotation in (str, str | None):
            setattr(model, name, text)


def _fill_list(model: BaseModel, name: str, items: list[Any], text: str, *, strings: bool) -> None:
    if strings:
        setattr(model, name, [text, *items])
    for item in items:
        if isinstance(item, BaseModel):
            fill(item, text)


def hostile(text: str) -> Evidence:
    """The failing run, with a fork that failed to start and a dropped hop, `text` in every field."""
    evidence = samples.failing()
    evidence.services.append(
        ServiceResult(name="x", forked=True, reason="x", status="start_failed", log_tail="x")
    )
    evidence.propagation.append(Propagation(service="x", drops_baggage_to=["x"]))
    fill(evidence, text)
    return evidence


outputs = samples.markdown_outputs


def blocks(markdown: str) -> list[str]:
    """The block structure of a document: its block tokens, with the level of each heading."""
    return [f"{t.type}:{t.tag}" for t in MD.parse(markdown) if t.type != "inline"]


def test_fill_reaches_every_untrusted_field() -> None:
    evidence = hostile("PAYLOAD")
    dumped = evidence.model_dump_json()
    assert evidence.head.subject == evidence.suites[0].failures[0].message == "PAYLOAD"
    assert (
        evidence.diff[0].findings[0].pointer == evidence.reasons[0] == evidence.stages[0].detail == "PAYLOAD"
    )
    assert dumped.count("PAYLOAD") > 30
    assert "PAYLOAD" not in (evidence.links.html or "")


def test_every_report_links_nothing_an_agent_wrote() -> None:
    evidence = hostile(EVERYTHING)
    check = render_check(evidence)
    assert github_links(check.title) == []
    for output, markdown in outputs(evidence).items():
        assert links_in_markdown(markdown) == [], output
        assert "… truncated" not in markdown, f"{output}: the payload must be checked, not cut"


def test_every_report_keeps_its_own_structure() -> None:
    """An agent's HTML, headings, rows and fences change no block of any report."""
    hostile_outputs, benign_outputs = outputs(hostile(EVERYTHING)), outputs(hostile("x"))
    for output, markdown in hostile_outputs.items():
        assert blocks(markdown) == blocks(benign_outputs[output]), output
        assert html(markdown) == html(benign_outputs[output]), output


def html(markdown: str) -> list[str]:
    return [t.content for t in MD.parse(markdown) if t.type == "html_block"] + [
        c.content for t in MD.parse(markdown) for c in t.children or [] if c.type == "html_inline"
    ]


def test_reports_still_show_the_agents_text() -> None:
    """Neutralised, not deleted: a reason reads as the agent's text did, zero-width spaces aside."""
    comment = render_comment(hostile("fixes #12 for @octocat, see https://evil.example"))
    shown = [text.replace(escape.ZERO_WIDTH_SPACE, "") for text in plain_texts(comment)]
    assert "fixes #12 for @octocat, see https://evil.example" in shown


fragments = st.sampled_from([*PAYLOADS, *STRUCTURE, " ", "\n", "_", "*", "\\", "(", "`"])
hostile_text = st.lists(st.one_of(fragments, st.text(max_size=4)), max_size=8).map("".join)


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_text)
def test_no_combination_of_payloads_links_anything(text: str) -> None:
    evidence = hostile(text)
    assert github_links(render_check(evidence).title) == []
    for output, markdown in outputs(evidence).items():
        assert links_in_markdown(markdown) == [], output
