"""Reporting and gating on GitHub: one code path for the App's worker and the Action.

Gating acts first (open a PR, draft or ready one), so whatever it did or was refused is in the
Evidence before the check run and the sticky comment render it. It asks GitHub for the branch head and
the PR's head right before acting: a verdict on any other commit only completes its own check run,
with a note saying why, and leaves the PR and its sticky comment (which speak for the head) alone. A
push landing between that read and the action is caught by the push's own run, which gates again.

Whether loopgate drafted a PR comes from the caller (`Drafts`): the App's store, written the moment
GitHub accepted the change, or GitHub's own record of who drafted it (`bot.github.drafts`) — never
read back from notes. It is asked only of a PR that is a draft.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from github import GithubException

from bot.config.schema import Agents
from bot.evidence import CHECK_CONCLUSIONS, Evidence
from bot.github.client import RepoClient, describe
from bot.github.gate import Action, OpenPull, gate_actions, not_gating
from bot.report import COMMENT_MARKER, render_check, render_comment, render_pr_body

MAX_ANNOTATIONS = 500
DRAFTED_NOTE = "converted to draft until verified"
READY_NOTE = "marked ready for review"
RERUN = {"label": "Re-run", "description": "Verify this commit again", "identifier": "rerun"}


class Drafts(Protocol):
    """Which PRs loopgate made drafts (the App's store, or GitHub's record); a draft the author chose
    is not one."""

    def drafted_by_us(self, repo: str, number: int) -> bool: ...

    def mark_drafted(self, repo: str, number: int, run_id: str | None) -> None: ...

    def clear_drafted(self, repo: str, number: int) -> bool: ...


@dataclass
class Target:
    """Where the run reports: the check run (created beforehand), the branch and its PR; `head_sha`
    is the commit the run verified, the only one its verdict may gate."""

    branch: str
    head_sha: str
    base_branch: str
    check_run_id: int
    comment_id: int | None = None
    run_id: str | None = None


@dataclass
class Published:
    conclusion: str
    pr_number: int | None
    comment_id: int | None
    gated: bool
    """False when the run's commit was no longer the head: only its check run was completed."""


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


def publish(
    client: RepoClient, evidence: Evidence, agents: Agents, target: Target, drafts: Drafts
) -> Published:
    pull = client.open_pull(target.branch)
    number, gated = (pull.number if pull else None), True
    if not evidence.cancelled:
        number, gated = _gate(client, evidence, agents, target, pull, drafts)
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
    if number is not None and gated:
        comment_id = client.upsert_comment(
            number, render_comment(evidence), COMMENT_MARKER, target.comment_id
        )
    return Published(conclusion=conclusion, pr_number=number, comment_id=comment_id, gated=gated)


def _gate(
    client: RepoClient,
    evidence: Evidence,
    agents: Agents,
    target: Target,
    pull: OpenPull | None,
    drafts: Drafts,
) -> tuple[int | None, bool]:
    """Open, draft or ready the PR as the verdict says, only while the run's commit is the head.
    Returns the PR number and whether the verdict could gate."""
    number = pull.number if pull else None
    branch_head = client.branch_head(target.branch)
    held = not_gating(target.head_sha, branch_head, pull)
    if held is not None:
        evidence.notes.append(held)
        return number, False
    repo = client.full_name
    ours = pull is not None and pull.draft and drafts.drafted_by_us(repo, pull.number)
    actions = gate_actions(
        evidence.verdict, agents, pull, ours, head_sha=target.head_sha, branch_head=branch_head
    )
    for action in actions:
        try:
            if action is Action.OPEN_PR:
                title = (evidence.head.subject or f"loopgate: verified {target.branch}")[:256]
                body = render_pr_body(evidence)
                number = client.create_pull(target.branch, target.base_branch, title, body)
                evidence.notes.append(f"opened pull request #{number}")
            elif action is Action.CONVERT_TO_DRAFT and number is not None:
                client.convert_to_draft(number)
                drafts.mark_drafted(repo, number, target.run_id)
                evidence.notes.append(f"pull request #{number} {DRAFTED_NOTE}")
            elif action is Action.MARK_READY and number is not None:
                client.mark_ready(number)
                drafts.clear_drafted(repo, number)
                evidence.notes.append(f"pull request #{number} {READY_NOTE}")
        except GithubException as exc:
            # GitHub may refuse a draft conversion for some tokens: say so; the verdict stands.
            evidence.notes.append(f"could not {action.value.replace('_', ' ')}: {describe(exc)}")
    return number, True
