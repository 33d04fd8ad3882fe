"""Webhook events as typed data: parsing does no I/O, so it is tested with GitHub's own examples.

Each model holds only the fields loopgate acts on, validated strictly (pydantic, no coercion): a
signed delivery with a wrong type anywhere loopgate looks — `installation.id` null or a string, a PR
`number` that is a list, `check_run: null` — raises `MalformedEvent` (HTTP 400, stored as rejected),
so a handler never meets a half-parsed payload. Every string that may reach the database is bounded
to its column and holds no NUL or lone surrogate, which PostgreSQL and SQLite drivers refuse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)

BIGINT_MAX = 2**63 - 1
INT_MAX = 2**31 - 1
MAX_DEPTH = 64
"""JSON nesting loopgate accepts; GitHub's payloads nest about six levels."""


class MalformedEvent(ValueError):
    pass


def storable(value: str) -> str:
    """Refuse what a database text column cannot hold: NUL and lone surrogates."""
    if "\x00" in value:
        raise ValueError("contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate") from None
    return value


def printable(text: str, limit: int = 2000) -> str:
    """Any text made safe to store and log (surrogates and NUL escaped), cut to `limit`."""
    safe = text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return safe if len(safe) <= limit else safe[: limit - 1] + "…"


Storable = AfterValidator(storable)
Name = Annotated[str, StringConstraints(min_length=1, max_length=256), Storable]
Label = Annotated[str, StringConstraints(min_length=1, max_length=64), Storable]
Url = Annotated[str, StringConstraints(min_length=1, max_length=1024), Storable]
Ref = Annotated[str, StringConstraints(min_length=1, max_length=256 + len("refs/heads/")), Storable]
Sha = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{7,64}$")]
FullName = Annotated[str, StringConstraints(pattern=r"^[^/\s]{1,100}/[^/\s]{1,155}$"), Storable]
BigId = Annotated[int, Field(ge=1, le=BIGINT_MAX)]
Number = Annotated[int, Field(ge=1, le=INT_MAX)]


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True)


class Repo(_Model):
    full_name: FullName
    clone_url: Url

    @property
    def owner(self) -> str:
        return self.full_name.split("/", 1)[0]


class RepoName(_Model):
    full_name: FullName


class InstallationRef(_Model):
    id: BigId


class RepoEvent(_Model):
    """What every repository event carries: the repository and, for an App, its installation."""

    repository: Repo
    installation: InstallationRef | None = None

    @property
    def installation_id(self) -> int | None:
        return self.installation.id if self.installation else None


class Ignored(_Model):
    """An event loopgate answers without reading any field (ping, check_suite.requested)."""


class Push(RepoEvent):
    ref: Ref
    before: Sha
    after: Sha
    deleted: bool = False

    @property
    def branch(self) -> str | None:
        """None for a tag push."""
        return self.ref.removeprefix("refs/heads/") if self.ref.startswith("refs/heads/") else None


class Delete(RepoEvent):
    ref: Name
    ref_type: Label

    @property
    def branch(self) -> str | None:
        """None for a deleted tag: only branches are gated."""
        return self.ref if self.ref_type == "branch" else None


class _Suite(_Model):
    head_branch: Name | None = None


class _CheckRunBody(_Model):
    name: Name
    head_sha: Sha
    check_suite: _Suite | None = None


class _RequestedAction(_Model):
    identifier: Label


class CheckRunEvent(RepoEvent):
    check_run: _CheckRunBody
    requested_action: _RequestedAction | None = None

    @property
    def rerun(self) -> CheckRerun:
        suite = self.check_run.check_suite
        return CheckRerun(
            self.repository,
            self.installation_id,
            suite.head_branch if suite else None,
            self.check_run.head_sha,
            self.requested_action.identifier if self.requested_action else None,
        )


class _SuiteBody(_Model):
    head_branch: Name | None = None
    head_sha: Sha


class CheckSuiteEvent(RepoEvent):
    check_suite: _SuiteBody

    @property
    def rerun(self) -> CheckRerun:
        suite = self.check_suite
        return CheckRerun(self.repository, self.installation_id, suite.head_branch, suite.head_sha, None)


@dataclass(frozen=True)
class CheckRerun:
    """A re-request of loopgate's check on a commit; `branch` is None when GitHub does not say."""

    repo: Repo
    installation_id: int | None
    branch: str | None
    head_sha: str
    requested_action: str | None


class _Head(_Model):
    ref: Name
    sha: Sha
    repo: RepoName | None = None
    """The head's repository: another one for a PR from a fork, None when that fork was deleted."""


class _Base(_Model):
    ref: Name


class _Pull(_Model):
    head: _Head
    base: _Base


class _Changes(_Model):
    base: dict[str, Any] | None = None


class PullRequestEvent(RepoEvent):
    action: Label
    number: Number
    pull_request: _Pull
    changes: _Changes | None = None

    @property
    def head_branch(self) -> str:
        return self.pull_request.head.ref

    @property
    def head_sha(self) -> str:
        return self.pull_request.head.sha

    @property
    def from_fork(self) -> bool:
        head_repo = self.pull_request.head.repo
        return head_repo is None or head_repo.full_name != self.repository.full_name

    @property
    def base_changed(self) -> bool:
        """An `edited` event that retargeted the PR (`changes.base`)."""
        return self.changes is not None and self.changes.base is not None


class _Account(_Model):
    login: Name | None = None
    slug: Name | None = None
    """Enterprise accounts have a slug and no login."""


class _Installation(_Model):
    id: BigId
    account: _Account | None = None


class InstallationEvent(_Model):
    """`installation` and `installation_repositories`: which repositories an installation covers."""

    action: Label
    installation: _Installation
    repositories: list[RepoName] | None = None
    repositories_added: list[RepoName] | None = None
    repositories_removed: list[RepoName] | None = None

    @property
    def installation_id(self) -> int:
        return self.installation.id

    @property
    def account(self) -> str:
        account = self.installation.account
        return (account.login or account.slug or "?") if account else "?"

    @property
    def added(self) -> tuple[str, ...]:
        return tuple(r.full_name for r in (self.repositories_added or self.repositories or []))

    @property
    def removed(self) -> tuple[str, ...]:
        return tuple(r.full_name for r in self.repositories_removed or [])


class Envelope(_Model):
    """What a delivery row records of any event, read leniently: a field of the wrong type is None."""

    action: str | None = None
    repo: str | None = None
    installation_id: int | None = None


Event = TypeVar("Event", bound=BaseModel)


def parse(model: type[Event], payload: Any) -> Event:
    """`payload` as `model`, or `MalformedEvent` naming each wrong field (without its value)."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(part) for part in error['loc']) or 'payload'}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)
        ]
        raise MalformedEvent(printable("malformed event: " + "; ".join(problems[:10]))) from None


def envelope(payload: Any) -> Envelope:
    """The action, repository and installation of any payload, each None unless well-formed."""
    if not isinstance(payload, dict):
        return Envelope()
    return Envelope(
        action=_field(_LABEL, payload.get("action")),
        repo=_field(_FULL_NAME, _nested(payload, "repository", "full_name")),
        installation_id=_field(_BIG_ID, _nested(payload, "installation", "id")),
    )


def _nested(payload: dict[str, Any], outer: str, inner: str) -> Any:
    value = payload.get(outer)
    return value.get(inner) if isinstance(value, dict) else None


_STRICT = ConfigDict(strict=True)
_LABEL: TypeAdapter[str] = TypeAdapter(Label, config=_STRICT)
_FULL_NAME: TypeAdapter[str] = TypeAdapter(FullName, config=_STRICT)
_BIG_ID: TypeAdapter[int] = TypeAdapter(BigId, config=_STRICT)
Field_ = TypeVar("Field_")


def _field(kind: TypeAdapter[Field_], value: Any) -> Field_ | None:
    try:
        return kind.validate_python(value)
    except ValidationError:
        return None


def depth_within(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Is `value` nested at most `limit` levels? Iterative, so no depth can exhaust the stack."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > limit:
                    return False
                stack.append((child, depth + 1))
    return True


FORK_PREFIX = "fork:"
"""A PR from a fork runs under `fork:<ref>`: `:` is not allowed in a git ref name, so no branch of
the repository can be mistaken for it."""


def fork_branch(ref: str) -> str:
    return (FORK_PREFIX + ref)[:256]


def is_fork_branch(branch: str) -> bool:
    return branch.startswith(FORK_PREFIX)
