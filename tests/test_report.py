"""Reports: content from the Evidence, size budgets, and the neutralising of untrusted text."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from markdown_it.token import Token

from bot.evidence import Counts, DiffResult, Evidence, Finding, ServiceResult, SuiteResult, decide
from bot.evidence import TestFailure as Failure  # a Test* name in the module would be collected
from bot.evidence.model import RequestEdge
from bot.report import (
    COMMENT_MARKER,
    budget,
    display,
    escape,
    render_check,
    render_comment,
    render_html,
    render_json,
    render_pr_body,
    render_step_summary,
)
from bot.report.environment import TEMPLATES_ENV
from bot.report.schema import evidence_schema
from tests import evidence_samples as samples

ROOT = Path(__file__).resolve().parents[1]
MD = MarkdownIt("commonmark").enable("table")
MENTION = re.compile(r"(?<![\w`])@[A-Za-z0-9-]+")
TRUNCATED = "… truncated:"


# --- Markdown inspection -------------------------------------------------------------------------


def walk(tokens: list[Token]) -> Iterator[Token]:
    for token in tokens:
        yield token
        yield from walk(token.children or [])


def visible_texts(tokens: list[Token]) -> list[str]:
    """The text a reader sees outside code, one string per run between other inline elements."""
    runs: list[str] = []
    for token in tokens:
        if token.type != "inline":
            continue
        run: list[str] = []
        for child in token.children or []:
            if child.type == "text":
                run.append(child.content)
            else:
                runs.append("".join(run))
                run = []
        runs.append("".join(run))
    return runs


def html_tokens(markdown: str) -> list[str]:
    return [t.content for t in walk(MD.parse(markdown)) if t.type in ("html_block", "html_inline")]


def mentions(markdown: str) -> list[str]:
    return [m for text in visible_texts(MD.parse(markdown)) for m in MENTION.findall(text)]


def fences(markdown: str) -> list[Token]:
    return [t for t in MD.parse(markdown) if t.type == "fence"]


def fences_closed(markdown: str) -> bool:
    """Every fence ends on its own closing line (an unclosed fence runs to the end of the document)."""
    lines = markdown.split("\n")
    for fence in fences(markdown):
        assert fence.map is not None
        start, end = fence.map
        closing = lines[end - 1].strip()
        if end - 1 <= start or not closing.startswith(fence.markup) or closing.strip("`"):
            return False
    return True


BUDGETS = {
    "comment": budget.COMMENT,
    "check summary": budget.CHECK_SUMMARY,
    "check text": budget.CHECK_TEXT,
    "pr body": budget.PR_BODY,
    "step summary": budget.STEP_SUMMARY,
}


# --- content -------------------------------------------------------------------------------------


def test_comment_starts_with_the_marker_and_says_the_verdict() -> None:
    comment = render_comment(samples.failing())
    assert comment.splitlines()[0] == COMMENT_MARKER == "<!-- loopgate:evidence -->"
    assert "## loopgate: FAIL" in comment
    assert html_tokens(comment) == [COMMENT_MARKER + "\n"]


@pytest.mark.parametrize("name", sorted(samples.ALL))
def test_every_sample_renders_valid_markdown_within_budget(name: str) -> None:
    evidence = samples.ALL[name]()
    for output, text in samples.markdown_outputs(evidence).items():
        assert BUDGETS[output].fits(text), output
        assert TRUNCATED not in text, output
        assert fences_closed(text), output
        assert text.endswith("\n") and not text.endswith("\n\n"), output


def test_failing_report_has_every_part_of_the_evidence() -> None:
    comment = render_comment(samples.failing())
    reasons = [
        "- suite e2e failed: 2 failing tests",
        r"- inventory: field\_removed at /available (GET /api/items/sku-tea-towel)",
        r"- gateway: status\_changed at /status (POST /api/checkout)",
    ]
    positions = [comment.index(reason) for reason in reasons]
    assert positions == sorted(positions), "reasons keep the Evidence's order, most important first"
    for expected in [
        "| base | `main` | `4b825dc` |",
        "| head | `agent/inventory-in-stock` | `9fceb02` |",
        "| merge | head into base | `e83c516` |",
        "| `inventory` | yes | ready | 1.6 s | 9 | changed: services/inventory/inventory\\_app.py |",
        "| `gateway` | no | baseline | — | 0 | unchanged |",
        "| `e2e` | the team's suite (base commit) | yes | FAILED | 6 tests: 4 passed, 2 failed | 3.2 s |",
        "#### Suite `e2e`, the team's suite (base commit): FAILED",
        "| `e2e/test_checkout.py::test_checkout_in_stock_then_read_order` |",
        "| `e2e/test_checkout.py:43` |",
        "| `e2e/test_checkout.py:62` |",
        "| `inventory` | field\\_removed | `/available` | baseline | `1000000` | — | yes |",
        "| verify | FAILED | 14.8 s |",
        "[HTML report](https://loopgate.example.com/runs/r-2d71c0be9a5f4e13?token=t0k3n)",
        "[JSON](https://loopgate.example.com/api/runs/r-2d71c0be9a5f4e13?token=t0k3n)",
        "took 27.4 s",
    ]:
        assert expected in comment, expected
    [log] = fences(comment)
    assert log.content == samples.FAILING_LOG
    tables = [t for t in MD.parse(comment) if t.type == "table_open"]
    assert len(tables) == 6, "refs, services, suites, failures, diff, stages"


def test_check_summary_is_short_and_text_holds_the_detail() -> None:
    check = render_check(samples.failing())
    assert check.title == "FAIL: suite e2e failed: 2 failing tests (+2 more)"
    assert "Suites: 0 of 1 passed; 6 tests: 4 passed, 2 failed." in check.summary
    assert "Forks: 1 of 4 services; response diff: 2 breaking findings." in check.summary
    assert "```" not in check.summary and "Log tail" not in check.summary
    assert len(check.summary) < 1000
    assert "2 failed, 4 passed in 3.21s" in check.text
    assert "### Stages" in check.text


def test_error_verdict_shows_its_kind() -> None:
    evidence = samples.config_error()
    comment = render_comment(evidence)
    assert "## loopgate: ERROR (config)" in comment
    assert "the setup must be fixed" in comment
    assert "- .loopgate.yml:12: services.shipping.local.run: must contain {port}" in comment
    assert "| merge |" not in comment, "a run stopped before the merge has no merge sha to show"
    assert render_check(evidence).title.startswith("ERROR (config): .loopgate.yml:12:")


def test_inconclusive_names_the_gap_and_the_dropped_hop() -> None:
    comment = render_comment(samples.inconclusive())
    assert "## loopgate: INCONCLUSIVE" in comment
    assert "- orders: the sandbox's requests never reached the fork" in comment
    assert "- `gateway` drops `baggage` on calls to `orders`" in comment


def test_passing_pr_body_says_what_was_verified() -> None:
    body = render_pr_body(samples.passing())
    assert body.startswith("loopgate verified this change")
    assert "## loopgate: PASS" in body
    assert "- `services/payments/payments_app.py`" in body
    assert "| `payments` | yes | ready | 1.5 s | 6 |" in body
    assert "### Stages" not in body


def test_pending_evidence_renders() -> None:
    evidence = samples.passing()
    evidence.verdict, evidence.reasons, evidence.finished_at = None, [], None
    assert "## loopgate: PENDING" in render_comment(evidence)
    assert render_check(evidence).title == "PENDING"


def test_check_title_is_clipped() -> None:
    evidence = samples.failing()
    evidence.reasons = ["x" * 5000]
    title = render_check(evidence).title
    assert len(title) == budget.CHECK_TITLE_CHARS and title.endswith("…")


def test_json_is_the_evidence_and_matches_the_published_schema() -> None:
    evidence = samples.failing()
    document = json.loads(render_json(evidence))
    assert document["links"]["json"] == evidence.links.json_
    jsonschema.validate(document, json.loads((ROOT / "docs" / "evidence.schema.json").read_text()))
    assert Evidence.model_validate_json(render_json(evidence)) == evidence


def test_published_schema_is_generated_from_the_model() -> None:
    assert (ROOT / "docs" / "evidence.schema.json").read_text() == evidence_schema(), (
        "regenerate it: python -m bot.report.schema > docs/evidence.schema.json"
    )


def test_templates_dir_can_be_overridden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "comment.md.j2").write_text("custom {{ evidence.verdict | verdict_word }}\n")
    monkeypatch.setenv(TEMPLATES_ENV, str(tmp_path))
    assert render_comment(samples.failing()) == "custom FAIL\n"


@pytest.mark.parametrize(
    ("ms", "shown"),
    [
        (None, "—"),
        (0, "0 ms"),
        (999, "999 ms"),
        (4_200, "4.2 s"),
        (185_000, "3 min 05 s"),
        (3_720_000, "1 h 02 min"),
    ],
)
def test_durations_read_as_people_say_them(ms: int | None, shown: str) -> None:
    assert display.duration(ms) == shown


# --- labels a reader understands ----------------------------------------------------------------


def whole_body_failing() -> Evidence:
    """The failing run with a breaking finding on the whole body (the empty pointer) and the agent's own
    suite failing beside the team's."""
    evidence = samples.failing()
    evidence.diff[0].findings.insert(
        0, Finding(kind="body_type_changed", pointer="", baseline="object", sandbox="array", breaking=True)
    )
    evidence.suites.append(
        SuiteResult(name="agent-e2e", source="head", status="failed", counts=Counts(tests=1, failed=1))
    )
    evidence.verdict, evidence.reasons = decide(evidence)
    return evidence


def test_a_whole_body_finding_says_so_in_every_report() -> None:
    evidence = whole_body_failing()
    reason = "inventory: body_type_changed on the whole body (GET /api/items/sku-tea-towel)"
    assert reason in evidence.reasons
    outputs = samples.markdown_outputs(evidence)
    for output in ("comment", "check text", "pr body", "step summary"):
        assert (
            "| `inventory` | body\\_type\\_changed | the whole body | baseline | `object` | `array` | yes |"
            in (outputs[output])
        ), output
        assert " at  (" not in outputs[output] and "``" not in outputs[output].replace("```", ""), output
    page = render_html(evidence)
    assert "<td>the whole body</td>" in page and "<code></code>" not in page


def test_every_report_says_whose_suite_it_was() -> None:
    evidence = whole_body_failing()
    team, agent = "the team's suite (base commit)", "the agent's suite (its branch)"
    outputs = samples.markdown_outputs(evidence)
    for output in ("comment", "check text", "pr body", "step summary"):
        text = outputs[output]
        assert f"| `e2e` | {team} | yes | FAILED |" in text, output
        assert f"| `agent-e2e` | {agent} | failure only | FAILED |" in text, output
        assert "| base |" not in text.replace("| base | `main`", ""), output
    assert "#### Suite `agent-e2e`, the agent's suite (its branch): FAILED" in outputs["comment"]
    assert "Suites: 0 of 2 passed (1 of them the agent's own, from its branch);" in outputs["check summary"]
    page = render_html(evidence)
    assert f"<td>{team.replace(chr(39), '&#39;')}</td>" in page
    assert f"<td>{agent.replace(chr(39), '&#39;')}</td>" in page
    assert "<td>failure only</td>" in page


def test_findings_against_the_control_say_so() -> None:
    evidence = samples.failing()
    if "against" not in DiffResult.model_fields:
        return  # the control forks' field is not in this model yet
    evidence.diff[0] = evidence.diff[0].model_copy(update={"against": "control"})
    comment = render_comment(evidence)
    assert "| `/available` | control (base code, same data) | `1000000` |" in comment
    assert "<td>control (base code, same data)</td>" in render_html(evidence)


# --- size budgets --------------------------------------------------------------------------------


def huge_evidence() -> Evidence:
    """Everything at once: megabyte logs with fences in them, thousands of failures, findings, reasons."""
    evidence = samples.failing()
    log = "".join(f"line {i}: ``` <b>@octocat</b> ~~~\n" for i in range(60_000)) + "THE LAST LINE\n"
    evidence.suites = [
        SuiteResult(
            name=f"e2e-{k}",
            source="base",
            status="failed",
            counts=Counts(tests=2000, passed=1000, failed=1000),
            failures=[
                Failure(
                    test=f"e2e/test_{k}.py::test_{i}",
                    message="boom " * 100 + "\n```\n@someone",
                    file=f"e2e/test_{k}.py",
                    line=i,
                )
                for i in range(1000)
            ],
            log_tail=log,
        )
        for k in range(3)
    ]
    evidence.diff = [
        DiffResult(
            request=f"GET /api/items/{i}",
            service="inventory",
            findings=[Finding(kind="field_removed", pointer=f"/items/{i}", baseline="1", breaking=True)],
        )
        for i in range(3000)
    ]
    evidence.reasons = [f"suite e2e-{k} failed" for k in range(3)] + [f"finding {i}" for i in range(3000)]
    return evidence


@pytest.fixture(scope="module")
def huge_outputs() -> dict[str, str]:
    return samples.markdown_outputs(huge_evidence())


@pytest.mark.parametrize("output", sorted(BUDGETS))
def test_huge_evidence_fits_every_budget(huge_outputs: dict[str, str], output: str) -> None:
    text = huge_outputs[output]
    assert BUDGETS[output].fits(text)
    if output == "check summary":
        assert len(text) < 2_000 and "- _… and 2,993 more reasons_" in text, "short by design"
    else:
        assert TRUNCATED in text
        assert "full evidence: [HTML report](https://loopgate.example.com/runs/" in text
        assert [t for t in MD.parse(text) if t.type == "table_open"], "tables survive in some form"
    assert fences_closed(text)
    assert not mentions(text)
    assert html_tokens(text) in ([], [COMMENT_MARKER + "\n"])


def test_step_summary_budget_is_bytes() -> None:
    evidence = samples.failing()
    evidence.suites[0].log_tail = "é€😀\n" * 400_000
    summary = render_step_summary(evidence)
    assert len(summary.encode()) <= budget.STEP_SUMMARY.limit < len(summary) * 4
    assert TRUNCATED in summary and fences_closed(summary)


def test_log_tails_are_cut_first_keeping_their_end() -> None:
    evidence = samples.failing()
    evidence.suites[0].log_tail = "".join(f"log line {i}\n" for i in range(50_000)) + "THE LAST LINE\n"
    comment = render_comment(evidence)
    assert budget.COMMENT.fits(comment) and TRUNCATED in comment
    [log] = fences(comment)
    assert log.content.endswith("THE LAST LINE\n") and log.content.startswith("log line ")
    assert "log line 0\n" not in log.content
    assert re.search(r"Log tail, its first [\d,]+ characters omitted:", comment)
    assert "test_checkout_out_of_stock_is_409" in comment, "failures are kept while logs can give way"
    assert "more failures not shown" not in comment


def test_failure_lists_are_cut_before_tables() -> None:
    evidence = samples.failing()
    suite = evidence.suites[0]
    suite.failures = [
        Failure(
            test=f"e2e/test_many.py::test_{i}", message="assert False " * 20, file="e2e/test_many.py", line=i
        )
        for i in range(2000)
    ]
    comment = render_comment(evidence)
    assert budget.COMMENT.fits(comment) and TRUNCATED in comment
    assert "e2e/test_many.py::test_0`" in comment
    assert re.search(r"_… [\d,]+ more failures not shown_", comment)
    assert "| `payments` | no | baseline |" in comment, "tables are whole while failures can give way"
    assert not fences(comment), "the log tail gave way before the failures"
    assert re.search(r"_Log tail omitted: [\d,]+ characters\._", comment)


def test_shrinking_is_deterministic() -> None:
    assert render_comment(huge_evidence()) == render_comment(huge_evidence())


def test_last_resort_cut_keeps_whole_lines_and_closes_its_fence() -> None:
    markdown = "# title\n\n````text\n" + "```\nlong line of log\n" * 10_000 + "````\n"
    small = budget.Budget(2_000, "characters")
    cut = budget.cut(markdown, small)
    assert small.fits(cut) and fences_closed(cut)
    assert "truncated" in cut


# --- escaping, for arbitrary text ----------------------------------------------------------------

HOSTILE_FRAGMENTS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<!-- x -->",
    "<details>",
    "</td>",
    "@octocat",
    "@org/team",
    "a@b.com",
    "@",
    "-@x",
    "```",
    "````",
    "~~~",
    "`",
    "|",
    "\\|",
    "\\",
    "\n",
    "\r",
    "\r\n",
    "\t",
    "    ",
    "# ",
    "- ",
    "+ ",
    "1. ",
    "2) ",
    "> ",
    "---",
    "***",
    "===",
    "*",
    "_",
    "[",
    "]",
    "(",
    ")",
    "![x](https://evil.example/x.png)",
    "[click](https://evil.example)",
    "<https://evil.example>",
    "[ref]: https://evil.example",
    "&lt;",
    "&#60;",
    "&amp;",
    "$x$",
    "~~s~~",
    "\u202e",
    "\x00",
    "\x1b[31m",
    "\u2028",
    "\x85",
    "\xa0",
    "é",
    "😀",
    "javascript:alert(1)",
]
hostile_text = st.lists(st.one_of(st.sampled_from(HOSTILE_FRAGMENTS), st.text(max_size=4)), max_size=12).map(
    "".join
)
PROPERTY = settings(max_examples=300, deadline=None, database=None)


@PROPERTY
@given(hostile_text)
def test_inline_text_is_literal_text_in_a_list_item(text: str) -> None:
    markdown = "- " + escape.inline(text) + "\n"
    tokens = MD.parse(markdown)
    assert not html_tokens(markdown)
    assert not mentions(markdown)
    shown = escape.one_line(text)
    if shown:
        assert [t.type for t in tokens] == [
            "bullet_list_open",
            "list_item_open",
            "paragraph_open",
            "inline",
            "paragraph_close",
            "list_item_close",
            "bullet_list_close",
        ]
        assert visible_texts(tokens) == [escape.neutralise_links(shown)]


@PROPERTY
@given(hostile_text)
def test_cell_stays_in_its_cell(text: str) -> None:
    for value in (escape.cell(text), escape.cell(escape.code(text))):
        markdown = f"| a | b |\n|---|---|\n| x | {value} |\n"
        tokens = MD.parse(markdown)
        assert not html_tokens(markdown)
        assert not mentions(markdown)
        assert [t.type for t in tokens].count("tr_open") == 2
        assert [t.type for t in tokens].count("td_open") == 2
    plain = MD.parse(f"| a | b |\n|---|---|\n| x | {escape.cell(text)} |\n")
    assert visible_texts(plain)[-1] == escape.neutralise_links(escape.one_line(text))


@PROPERTY
@given(hostile_text)
def test_code_span_shows_the_text_exactly(text: str) -> None:
    markdown = f"before {escape.code(text)} after\n"
    codes = [t for t in walk(MD.parse(markdown)) if t.type == "code_inline"]
    assert not html_tokens(markdown)
    shown = escape.one_line(text)
    assert [c.content for c in codes] == ([shown] if shown else [])


@PROPERTY
@given(hostile_text)
def test_code_block_closes_where_intended(text: str) -> None:
    markdown = "before\n\n" + escape.code_block(text) + "\n\nafter\n"
    tokens = MD.parse(markdown)
    [fence] = [t for t in tokens if t.type == "fence"]
    body = escape.clean_log(text)
    assert fence.content == (body if not body or body.endswith("\n") else body + "\n")
    assert [t.content for t in tokens if t.type == "inline"] == ["before", "after"]
    assert not html_tokens(markdown)


def test_fence_is_longer_than_any_backtick_run() -> None:
    assert escape.fence_for("no ticks") == "```"
    assert escape.fence_for("a ``` b") == "````"
    assert escape.fence_for("`````") == "``````"


def test_links_only_to_http_or_paths() -> None:
    assert escape.link("https://x.example/a b(c)", "JSON") == "[JSON](https://x.example/a%20b%28c%29)"
    assert escape.link("javascript:alert(1)", "JSON") == "`javascript:alert(1)`"


def hostile_evidence(text: str) -> Evidence:
    """The failing run with `text` in every field that comes from the agent's branch or its output."""
    evidence = samples.failing()
    evidence.head.ref = text
    evidence.reasons = [text, *evidence.reasons]
    evidence.notes = [text]
    evidence.changed_files = [text]
    evidence.services.append(
        ServiceResult(name=text, forked=True, reason=text, status="start_failed", log_tail=text)
    )
    suite = evidence.suites[0]
    suite.name = text
    suite.failures = [Failure(test=text, message=text, file=text, line=1), *suite.failures]
    suite.log_tail = text + "\n" + suite.log_tail + text
    evidence.diff.append(
        DiffResult(
            request=text,
            service=text,
            findings=[Finding(kind=text, pointer=text, baseline=text, sandbox=text, breaking=True)],
        )
    )
    evidence.stages[0].detail = text
    evidence.request_map = [
        RequestEdge(source=None, target=text, tagged=1),
        RequestEdge(source=text, target="orders", untagged=1, lost_tag=True),
    ]
    return evidence


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_text)
def test_reports_neutralise_untrusted_text(text: str) -> None:
    evidence = hostile_evidence(text)
    allowed_links = {evidence.links.html, evidence.links.json_}
    for output, markdown in samples.markdown_outputs(evidence).items():
        tokens = list(walk(MD.parse(markdown)))
        assert html_tokens(markdown) in ([], [COMMENT_MARKER + "\n"]), output
        assert not mentions(markdown), output
        assert fences_closed(markdown), output
        assert not [t for t in tokens if t.type == "image"], output
        assert {t.attrs["href"] for t in tokens if t.type == "link_open"} <= allowed_links, output
    comment = render_comment(evidence)
    logs = 2 if escape.clean_log(text) else 1
    kinds = [fence.info for fence in fences(comment)]
    assert kinds.count("text") == logs, "the failed fork's log and the suite's log"
    assert kinds.count("mermaid") == 1 and len(kinds) == logs + 1, "and the request map, nothing else"


def test_mentions_are_broken_but_still_read_the_same() -> None:
    assert escape.inline("ping @octocat and @org/team") == "ping @\u200boctocat and @\u200borg/team"
    assert escape.code("@octocat") == "`@octocat`"


# --- confinement ----------------------------------------------------------------------------------


UNCONFINED = "Unconfined: agent code ran without isolation (LOOPGATE_CONFINE=off)"


@pytest.mark.parametrize("name", sorted(samples.ALL))
def test_unconfined_runs_say_so_first_in_every_report(name: str) -> None:
    evidence = samples.ALL[name]().model_copy(update={"confined": False})
    check = render_check(evidence)
    firsts = {
        "comment": render_comment(evidence).splitlines()[1],  # after the marker line
        "check title": check.title,
        "check summary": check.summary.splitlines()[0],
        "check text": check.text.splitlines()[0],
        "pr body": render_pr_body(evidence).splitlines()[0],
        "step summary": render_step_summary(evidence).splitlines()[0],
    }
    assert firsts["check title"].startswith("⚠ unconfined · ")
    for output, line in firsts.items():
        if output != "check title":
            assert UNCONFINED in line and "docs/security.md" in line, output
    page = render_html(evidence)
    assert page.index(UNCONFINED) < page.index('id="verdict"')


@pytest.mark.parametrize("name", sorted(samples.ALL))
def test_confined_runs_carry_no_warning(name: str) -> None:
    evidence = samples.ALL[name]()
    assert evidence.confined
    outputs = samples.markdown_outputs(evidence)
    texts = [*outputs.values(), render_check(evidence).title, render_html(evidence)]
    assert not [text for text in texts if UNCONFINED in text or "⚠ unconfined" in text]


def test_unconfined_warning_survives_the_tightest_budget() -> None:
    evidence = samples.failing().model_copy(update={"confined": False})
    evidence.suites[0].log_tail = "x\n" * 400_000
    comment = render_comment(evidence)
    assert budget.COMMENT.fits(comment) and UNCONFINED in comment.splitlines()[1]
