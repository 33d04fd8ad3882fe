"""The one place loopgate talks to GitHub: a thin adapter over PyGithub.

Installation tokens are cached until shortly before they expire; retries with backoff cover 5xx and
secondary rate limits for GET, PATCH, PUT and DELETE, and rate limits only for POST — a POST that
reached GitHub and failed with a 5xx may have created the check run or PR already, and a blind retry
would make a second one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, Protocol

from github import Auth, Github, GithubException, GithubIntegration, GithubRetry, UnknownObjectException
from github.Repository import Repository

from bot.config import InfrastructureError
from bot.github.gate import OpenPull

TOKEN_MARGIN = timedelta(minutes=5)
ANNOTATIONS_PER_REQUEST = 50
DRAFT_EVENTS = frozenset({"convert_to_draft", "ready_for_review"})
"""The issue events that change whether a PR is a draft (GitHub records them with their actor)."""


def _retry(total: int = 5) -> GithubRetry:
    return GithubRetry(
        total=total,
        backoff_factor=0.5,
        status_forcelist=[500, 502, 503, 504],
        allowed_methods=frozenset({"GET", "HEAD", "PATCH", "PUT", "DELETE"}),
        secondary_rate_wait=30,
    )


@dataclass
class _Token:
    value: str
    expires_at: datetime


class _KeyedLocks:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, int], threading.Lock] = {}

    def hold(self, key: tuple[str, int]) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())


_comment_locks = _KeyedLocks()


class CommentRecord(Protocol):
    """Where the caller keeps a PR's sticky comment id; set `comment_id` once it is known."""

    comment_id: int | None


CommentLock = Callable[[str, int], AbstractContextManager[CommentRecord]]
"""Holds (repo, PR) across processes while its sticky comment is found or created (the App's
store); the adapter knows no store, so the caller passes it in."""


@dataclass
class _Unrecorded:
    comment_id: int | None = None


@contextmanager
def _unrecorded(_repo: str, _number: int) -> Iterator[CommentRecord]:
    """No lock beyond this process's and no record: one process (the Action) posts alone."""
    yield _Unrecorded()


class Identity(Protocol):
    """Who `RepoClient` acts as: the login its comments and events appear under, and a token for git."""

    def bot_login(self) -> str: ...

    def token(self, installation_id: int) -> str: ...


class TokenIdentity:
    """An `Identity` for a plain token, which cannot ask GitHub who it is: its login is known instead."""

    def __init__(self, token: str, login: str) -> None:
        self._token = token
        self._login = login

    def bot_login(self) -> str:
        return self._login

    def token(self, installation_id: int) -> str:
        return self._token


class DraftChange(NamedTuple):
    """The latest `convert_to_draft` or `ready_for_review` event of a PR, and who caused it."""

    event: str
    actor: str | None
    """None when GitHub shows no actor (a deleted account)."""


class GitHubApp:
    """App-level calls (JWT) and a cache of installation clients."""

    def __init__(
        self, app_id: int, private_key: str, api_url: str, *, throttle: bool = True, retries: int = 5
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self._retries = retries
        self._auth = Auth.AppAuth(app_id, private_key)
        pace: dict[str, Any] = (
            {} if throttle else {"seconds_between_requests": 0, "seconds_between_writes": 0}
        )
        self._pace = pace
        self._integration = GithubIntegration(auth=self._auth, base_url=self.api_url, retry=_retry(), **pace)
        self._tokens: dict[int, _Token] = {}
        self._lock = threading.Lock()
        self._login: str | None = None

    def bot_login(self) -> str:
        """`<slug>[bot]`: how GitHub names the App's own comments."""
        if self._login is None:
            self._login = f"{self._integration.get_app().slug}[bot]"
        return self._login

    def installation_id(self, repo: str) -> int:
        owner, name = repo.split("/", 1)
        return int(self._integration.get_repo_installation(owner, name).id)

    def token(self, installation_id: int) -> str:
        with self._lock:
            cached = self._tokens.get(installation_id)
            if cached is None or cached.expires_at - TOKEN_MARGIN <= datetime.now(UTC):
                granted = self._integration.get_access_token(installation_id)
                expires = granted.expires_at or datetime.now(UTC) + timedelta(hours=1)
                cached = _Token(granted.token, expires if expires.tzinfo else expires.replace(tzinfo=UTC))
                self._tokens[installation_id] = cached
            return cached.value

    def repo(self, full_name: str, installation_id: int | None = None) -> RepoClient:
        installation = installation_id if installation_id is not None else self.installation_id(full_name)
        client = Github(
            auth=Auth.Token(self.token(installation)),
            base_url=self.api_url,
            retry=_retry(self._retries),
            lazy=True,
            **self._pace,
        )
        return RepoClient(client.get_repo(full_name), full_name, self)


class RepoClient:
    """Everything loopgate does in one repository."""

    def __init__(self, repo: Repository, full_name: str, app: Identity) -> None:
        self._repo = repo
        self.full_name = full_name
        self.app = app

    @classmethod
    def for_token(cls, api_url: str, token: str, repository: str, login: str) -> RepoClient:
        """A client on a token that is not an App's (a workflow's `GITHUB_TOKEN`); `login` is the
        account GitHub shows for what the token does."""
        github = Github(auth=Auth.Token(token), base_url=api_url.rstrip("/"), retry=_retry(), lazy=True)
        return cls(github.get_repo(repository), repository, TokenIdentity(token, login))

    def read_file(self, ref: str, path: str) -> str | None:
        try:
            content = self._repo.get_contents(path, ref=ref)
        except UnknownObjectException:
            return None
        if isinstance(content, list):
            return None
        return content.decoded_content.decode("utf-8")

    def default_branch(self) -> str:
        return str(self._repo.default_branch)

    def branch_head(self, branch: str) -> str | None:
        """The branch's head SHA as GitHub has it now; None when the branch is gone."""
        try:
            return str(self._repo.get_branch(branch).commit.sha)
        except UnknownObjectException:
            return None

    def open_pull(self, branch: str) -> OpenPull | None:
        owner = self.full_name.split("/", 1)[0]
        for pull in self._repo.get_pulls(state="open", head=f"{owner}:{branch}"):
            return OpenPull(
                number=pull.number,
                node_id=pull.node_id,
                draft=bool(pull.draft),
                head_sha=str(pull.head.sha),
                base=str(pull.base.ref),
            )
        return None

    def create_check(self, name: str, head_sha: str, external_id: str, details_url: str) -> int:
        run = self._repo.create_check_run(
            name=name, head_sha=head_sha, external_id=external_id, details_url=details_url, status="queued"
        )
        return int(run.id)

    def update_check(
        self,
        check_run_id: int,
        *,
        status: str,
        conclusion: str | None = None,
        title: str | None = None,
        summary: str | None = None,
        text: str | None = None,
        annotations: Sequence[dict[str, Any]] = (),
        actions: Sequence[dict[str, str]] = (),
    ) -> None:
        """Annotations go out 50 per request, as the API allows; the first request carries the rest."""
        run = self._repo.get_check_run(check_run_id)
        batches = [list(annotations[i : i + ANNOTATIONS_PER_REQUEST]) for i in range(0, len(annotations), 50)]
        fields: dict[str, Any] = {"status": status}
        if conclusion is not None:
            fields["conclusion"] = conclusion
            fields["completed_at"] = datetime.now(UTC)
        if status == "in_progress":
            fields["started_at"] = datetime.now(UTC)
        if title is not None and summary is not None:
            output: dict[str, Any] = {"title": title, "summary": summary}
            if text:
                output["text"] = text
            if batches:
                output["annotations"] = batches[0]
            fields["output"] = output
        if actions:
            fields["actions"] = list(actions)
        run.edit(**fields)
        for batch in batches[1:]:
            assert title is not None and summary is not None
            run.edit(output={"title": title, "summary": summary, "annotations": batch})

    def upsert_comment(
        self, number: int, body: str, marker: str, known_id: int | None, lock: CommentLock | None = None
    ) -> int:
        """One sticky comment per PR: edit ours in place (found by id or marker and the App's login);
        post a new one when it was deleted. Upserts of one PR take turns in this process, and under
        `lock` across processes, or two events arriving together would each find no comment and post
        one; the id `lock` records is preferred to `known_id`, and the id used is recorded."""
        with (
            _comment_locks.hold((self.full_name, number)),
            (lock or _unrecorded)(self.full_name, number) as record,
        ):
            comment_id = self._upsert_comment(number, body, marker, record.comment_id or known_id)
            record.comment_id = comment_id
            return comment_id

    def _upsert_comment(self, number: int, body: str, marker: str, known_id: int | None) -> int:
        issue = self._repo.get_issue(number)
        login = self.app.bot_login()
        for comment in issue.get_comments():
            if (known_id is not None and comment.id == known_id) or (
                comment.user.login == login and comment.body.startswith(marker)
            ):
                comment.edit(body)
                return int(comment.id)
        return int(issue.create_comment(body).id)

    def create_pull(self, head: str, base: str, title: str, body: str) -> int:
        return int(self._repo.create_pull(base=base, head=head, title=title, body=body).number)

    def convert_to_draft(self, number: int) -> None:
        self._repo.get_pull(number).convert_to_draft()

    def mark_ready(self, number: int) -> None:
        self._repo.get_pull(number).mark_ready_for_review()

    def last_draft_change(self, number: int) -> DraftChange | None:
        """Who last made PR #number a draft or ready, from GitHub's issue events (oldest first); None
        when nobody did (a PR opened as a draft has no such event)."""
        last: DraftChange | None = None
        for event in self._repo.get_issue(number).get_events():
            if event.event in DRAFT_EVENTS:
                last = DraftChange(str(event.event), event.actor.login if event.actor else None)
        return last

    def token(self, installation_id: int) -> str:
        return self.app.token(installation_id)


def describe(error: Exception) -> str:
    """A one-line cause from a PyGithub error, for the Evidence."""
    if isinstance(error, GithubException):
        data = error.data if isinstance(error.data, dict) else {}
        message = data.get("message") or str(error.data)
        return f"GitHub answered {error.status}: {message}"
    return f"{type(error).__name__}: {error}"


def unavailable(error: Exception) -> InfrastructureError:
    return InfrastructureError(describe(error))
