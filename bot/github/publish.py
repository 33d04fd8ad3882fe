"""Reporting and gating on GitHub: one code path for the App's worker and the Action.

Gating acts first (open a PR, draft or ready one), so whatever it did or was refused is in the
Evidence before the check run and the sticky comment render it. It asks GitHub for the branch head and
the PR's head right before acting: a verdict on any other commit only completes its own check run,
with a note saying why, and leaves the PR and its sticky comment (which speak for the head) alone. A
push landing between that read and the action is caught by the push's own run, which gates again.

Gating is synchronous (it depends on GitHub's state right now); the reports — the check conclusion and
the sticky comment — are rendered as data (`gate_and_render`), so the App can put them in its durable
outbox and deliver them until GitHub accepts them, while the Action, which has no database, sends them
at once (`publish`).

Whether loopgate drafted a PR comes from the caller (`Drafts`): the App's store, written the moment
GitHub accepted the change, or GitHub's own record of who drafted it (`bot.github.drafts`) — never
read back from notes. It is asked only of a PR that is a draft.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from github import GithubException

from bot.config.schema import Agents
from bot.evidence import CHECK_CONCLUSIONS, Evidence
from bot.github.client import CommentLock, RepoClient, describe
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
class CheckReport:
    """A check run's conclusion, as `RepoClient.update_check` takes it: a PATCH of a known id, so
    sending it twice is harmless."""

    check_run_id: int
    fields: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def completed(cls, check_run_id: int, conclusion: str, title: str, summary: str) -> CheckReport:
        fields = {"status": "completed", "conclusion": conclusion, "title": title, "summary": summary}
        return cls(check_run_id, fields)


@dataclass
class CommentReport:
    """The sticky comment of PR #number; an upsert by id or marker, so sending it twice is harmless."""

    number: int
    body: str
    known_id: int | None = None


@dataclass
class Published:
    conclusion: str
    pr_number: int | None
    comment_id: int | None
    gated: bool
    """False when the run's commit was no longer the head: only its check run was completed."""
    check: CheckReport | None = None
    comment: CommentReport | None = None


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
    """Gate, then send the reports at once: the Action's path, which has no outbox."""
    published = gate_and_render(client, evidence, agents, target, drafts)
    if published.check is not None:
        send_check(client, published.check)
    if published.comment is not None:
        published.comment_id = send_comment(client, published.comment)
    return published


def send_check(client: RepoClient, report: CheckReport) -> None:
    client.update_check(report.check_run_id, **report.fields)


def send_comment(client: RepoClient, report: CommentReport, lock: CommentLock | None = None) -> int:
    return client.upsert_comment(report.number, report.body, COMMENT_MARKER, report.known_id, lock)


def gate_and_render(
    client: RepoClient, evidence: Evidence, agents: Agents, target: Target, drafts: Drafts
) -> Published:
    """Act on the PR as the verdict says, then render the check conclusion and the sticky comment
    (only while the run's commit is the head) without sending them."""
    pull = client.open_pull(target.branch)
    number, gated = (pull.number if pull else None), True
    if not evidence.cancelled:
        number, gated = _gate(client, evidence, agents, target, pull, drafts)
    conclusion = check_conclusion(evidence)
    comment = None
    if number is not None and gated:
        comment = CommentReport(number, render_comment(evidence), target.comment_id)
    return Published(
        conclusion=conclusion,
        pr_number=number,
        comment_id=target.comment_id,
        gated=gated,
        check=render_check_report(evidence, target.check_run_id, conclusion),
        comment=comment,
    )


def render_check_report(evidence: Evidence, check_run_id: int, conclusion: str) -> CheckReport:
    output = render_check(evidence)
    fields: dict[str, Any] = {
        "status": "completed",
        "conclusion": conclusion,
        "title": output.title,
        "summary": output.summary,
        "text": output.text,
        "annotations": failure_annotations(evidence),
        "actions": [RERUN] if conclusion == "failure" else [],
    }
    return CheckReport(check_run_id, fields)


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
