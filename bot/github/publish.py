"""Reporting and gating on GitHub: one code path for the App's worker and the Action.

Gating acts first (open a PR, draft or ready one), so whatever it did or was refused is in the
Evidence before the check run and the sticky comment render it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from github import GithubException

from bot.config.schema import Agents
from bot.evidence import CHECK_CONCLUSIONS, Evidence
from bot.github.client import RepoClient, describe
from bot.github.gate import Action, gate_actions
from bot.report import COMMENT_MARKER, render_check, render_comment, render_pr_body

MAX_ANNOTATIONS = 500
DRAFTED_NOTE = "converted to draft until verified"
READY_NOTE = "marked ready for review"
RERUN = {"label": "Re-run", "description": "Verify this commit again", "identifier": "rerun"}


@dataclass
class Target:
    """Where the run reports: the check run (created beforehand), the branch and its PR."""

    branch: str
    base_branch: str
    check_run_id: int
    comment_id: int | None = None
    drafted_by_us: bool = False


@dataclass
class Published:
    conclusion: str
    pr_number: int | None
    comment_id: int | None
    drafted: bool


def check_conclusion(evidence: Evidence) -> str:
    if evidence.cancelled:
        return "cancelled"
    return CHECK_CONCLUSIONS[evidence.verdict] if evidence.verdict is not None else "failure"


def failure_annotations(evidence: Evidence) -> list[dict[str, Any]]:
    """Failing tests with a file and line become annotations on the diff."""
    found: list[dict[str, Any]] = []
    for suite in evidence.suites:
        for failure in suite.failures:
            if failure.file and failure.line:
                found.append(
                    {
                        "path": failure.file,
                        "start_line": failure.line,
                        "end_line": failure.line,
                        "annotation_level": "failure",
                        "title": f"{suite.name}: {failure.test}"[:255],
                        "message": failure.message[:64_000] or "failed",
                    }
                )
    return found[:MAX_ANNOTATIONS]


def publish(client: RepoClient, evidence: Evidence, agents: Agents, target: Target) -> Published:
    pull = client.open_pull(target.branch)
    number, drafted = (pull.number if pull else None), target.drafted_by_us
    if not evidence.cancelled:
        for action in gate_actions(evidence.verdict, agents, pull, target.drafted_by_us):
            try:
                if action is Action.OPEN_PR:
                    title = (evidence.head.subject or f"loopgate: verified {target.branch}")[:256]
                    number = client.create_pull(
                        target.branch, target.base_branch, title, render_pr_body(evidence)
                    )
                    evidence.notes.append(f"opened pull request #{number}")
                elif action is Action.CONVERT_TO_DRAFT and number is not None:
                    client.convert_to_draft(number)
                    drafted = True
                    evidence.notes.append(f"pull request #{number} {DRAFTED_NOTE}")
                elif action is Action.MARK_READY and number is not None:
                    client.mark_ready(number)
                    drafted = False
                    evidence.notes.append(f"pull request #{number} {READY_NOTE}")
            except GithubException as exc:
                # GitHub may refuse a draft conversion for some tokens: say so; the verdict stands.
                evidence.notes.append(f"could not {action.value.replace('_', ' ')}: {describe(exc)}")
    conclusion = check_conclusion(evidence)
    output = render_check(evidence)
    client.update_check(
        target.check_run_id,
        status="completed",
        conclusion=conclusion,
        title=output.title,
        summary=output.summary,
        text=output.text,
        annotations=failure_annotations(evidence),
        actions=[RERUN] if conclusion == "failure" else [],
    )
    comment_id = target.comment_id
    if number is not None:
        comment_id = client.upsert_comment(
            number, render_comment(evidence), COMMENT_MARKER, target.comment_id
        )
    return Published(conclusion=conclusion, pr_number=number, comment_id=comment_id, drafted=drafted)
