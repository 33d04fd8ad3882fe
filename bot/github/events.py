"""Webhook events as plain data: parsing does no I/O, so it is tested with GitHub's own examples.

Each parser reads only the fields loopgate acts on and raises `MalformedEvent` (HTTP 400) when one is
missing, so a handler never meets a half-parsed payload.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class MalformedEvent(ValueError):
    pass


@dataclass(frozen=True)
class Repo:
    full_name: str
    clone_url: str
    default_branch: str

    @property
    def owner(self) -> str:
        return self.full_name.split("/", 1)[0]


@dataclass(frozen=True)
class Push:
    repo: Repo
    installation_id: int | None
    branch: str | None
    """None for a tag push."""
    before: str
    after: str
    deleted: bool
    head_message: str


@dataclass(frozen=True)
class BranchDeleted:
    repo: Repo
    installation_id: int | None
    branch: str


@dataclass(frozen=True)
class CheckRerun:
    repo: Repo
    installation_id: int | None
    branch: str | None
    head_sha: str
    external_id: str | None
    """The run id loopgate put on the check run; None for a suite re-request."""
    requested_action: str | None = None


@dataclass(frozen=True)
class PullRequestChanged:
    repo: Repo
    installation_id: int | None
    action: str
    number: int
    head_branch: str
    head_sha: str
    base_branch: str
    author: str
    base_changed: bool = False
    """An `edited` event that retargeted the PR (`changes.base`)."""


@dataclass(frozen=True)
class InstallationChanged:
    installation_id: int
    account: str
    action: str
    added: tuple[str, ...]
    removed: tuple[str, ...]


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            raise MalformedEvent(f"payload has no {'.'.join(path)}")
        data = data[key]
    return data


def _repo(payload: dict[str, Any]) -> Repo:
    repository = _get(payload, "repository")
    return Repo(
        full_name=str(_get(repository, "full_name")),
        clone_url=str(_get(repository, "clone_url")),
        default_branch=str(repository.get("default_branch") or repository.get("master_branch") or "main"),
    )


def _installation(payload: dict[str, Any]) -> int | None:
    installation = payload.get("installation")
    return int(installation["id"]) if isinstance(installation, dict) and "id" in installation else None


def _branch(ref: str) -> str | None:
    return ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else None


def parse_push(payload: dict[str, Any]) -> Push:
    head = payload.get("head_commit") or {}
    return Push(
        repo=_repo(payload),
        installation_id=_installation(payload),
        branch=_branch(str(_get(payload, "ref"))),
        before=str(_get(payload, "before")),
        after=str(_get(payload, "after")),
        deleted=bool(payload.get("deleted", False)),
        head_message=str(head.get("message") or ""),
    )


def parse_delete(payload: dict[str, Any]) -> BranchDeleted | None:
    """None for a deleted tag: only branches are gated."""
    if _get(payload, "ref_type") != "branch":
        return None
    return BranchDeleted(_repo(payload), _installation(payload), str(_get(payload, "ref")))


def parse_check_run(payload: dict[str, Any]) -> CheckRerun:
    run = _get(payload, "check_run")
    suite = run.get("check_suite") or {}
    action = payload.get("requested_action") or {}
    return CheckRerun(
        repo=_repo(payload),
        installation_id=_installation(payload),
        branch=suite.get("head_branch"),
        head_sha=str(_get(run, "head_sha")),
        external_id=run.get("external_id") or None,
        requested_action=action.get("identifier") if isinstance(action, dict) else None,
    )


def parse_check_suite(payload: dict[str, Any]) -> CheckRerun:
    suite = _get(payload, "check_suite")
    return CheckRerun(
        repo=_repo(payload),
        installation_id=_installation(payload),
        branch=suite.get("head_branch"),
        head_sha=str(_get(suite, "head_sha")),
        external_id=None,
    )


def parse_pull_request(payload: dict[str, Any]) -> PullRequestChanged:
    pull = _get(payload, "pull_request")
    return PullRequestChanged(
        repo=_repo(payload),
        installation_id=_installation(payload),
        action=str(_get(payload, "action")),
        number=int(_get(payload, "number")),
        head_branch=str(_get(pull, "head", "ref")),
        head_sha=str(_get(pull, "head", "sha")),
        base_branch=str(_get(pull, "base", "ref")),
        author=str(_get(pull, "user", "login")),
        base_changed=isinstance(payload.get("changes"), dict) and "base" in payload["changes"],
    )


def parse_installation(payload: dict[str, Any]) -> InstallationChanged:
    installation = _get(payload, "installation")
    added = payload.get("repositories_added") or payload.get("repositories") or []
    removed = payload.get("repositories_removed") or []
    return InstallationChanged(
        installation_id=int(_get(installation, "id")),
        account=str(_get(installation, "account", "login")),
        action=str(_get(payload, "action")),
        added=tuple(str(r["full_name"]) for r in added if isinstance(r, dict) and "full_name" in r),
        removed=tuple(str(r["full_name"]) for r in removed if isinstance(r, dict) and "full_name" in r),
    )
