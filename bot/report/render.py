"""Every output of a run, rendered from its Evidence alone and fitted to its budget."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from jinja2 import Template

from bot.evidence import Evidence
from bot.report import budget
from bot.report.budget import FULL, Budget, Shrink, fit, markdown_text
from bot.report.display import clip
from bot.report.environment import html_environment, markdown_environment

COMMENT_MARKER = "<!-- loopgate:evidence -->"
"""The first line of the sticky comment: how loopgate finds its own comment to edit in place."""

UNCONFINED_NOTICE = (
    "⚠ Unconfined: agent code ran without isolation (LOOPGATE_CONFINE=off); this verdict proves less"
    " — see docs/security.md."
)
"""What every report of an unconfined run says first (templates/partials/unconfined.j2 for the rendered
ones; the terminal prints this)."""

SUMMARY_REASONS = 10
"""The check summary is the short form: the first reasons and the counts; the text has the rest."""


@dataclass(frozen=True)
class CheckOutput:
    """The `output` of a check run, each field within GitHub's limit."""

    title: str
    summary: str
    text: str


def render_comment(evidence: Evidence) -> str:
    return _fitted("comment.md.j2", evidence, budget.COMMENT)


def render_check(evidence: Evidence) -> CheckOutput:
    template = markdown_environment().get_template("check.md.j2")
    title = markdown_text(_block(template, "title", evidence, FULL)).strip()
    return CheckOutput(
        title=clip(title, budget.CHECK_TITLE_CHARS),
        summary=fit(
            lambda shrink: _block(template, "summary", evidence, shrink),
            budget.CHECK_SUMMARY,
            start=Shrink(rows=SUMMARY_REASONS),
        ),
        text=fit(lambda shrink: _block(template, "text", evidence, shrink), budget.CHECK_TEXT),
    )


def render_html(evidence: Evidence) -> str:
    """The evidence page: no budget, since the server serves it whole."""
    template = html_environment().get_template("run.html.j2")
    return template.render(evidence=evidence, shrink=FULL)


def render_pr_body(evidence: Evidence) -> str:
    return _fitted("pr_body.md.j2", evidence, budget.PR_BODY)


def render_step_summary(evidence: Evidence) -> str:
    return _fitted("step_summary.md.j2", evidence, budget.STEP_SUMMARY)


def render_json(evidence: Evidence) -> str:
    """The Evidence itself, for agents; the schema is docs/evidence.schema.json."""
    return evidence.model_dump_json(indent=2)


def _fitted(name: str, evidence: Evidence, limit: Budget) -> str:
    template = markdown_environment().get_template(name)
    return fit(lambda shrink: template.generate(evidence=evidence, shrink=shrink), limit)


def _block(template: Template, name: str, evidence: Evidence, shrink: Shrink) -> Iterator[str]:
    """One block of a template, as its chunks."""
    return template.blocks[name](template.new_context({"evidence": evidence, "shrink": shrink}))
