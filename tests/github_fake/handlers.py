"""The REST operations of the fake, one method per operation id of `subset.json`.

Each handler gets a validated request (`Ctx`: coerced params, parsed body, the repository) and returns a
`Reply` or raises `HttpError` with GitHub's error body; the server validates whatever comes back.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.github_fake import resources
from tests.github_fake.contract import Operation
from tests.github_fake.state import (
    CheckRun,
    CommitComment,
    FakeState,
    IssueComment,
    Pull,
    Repo,
    Status,
    Token,
    User,
    iso,
    next_id,
    now,
)

DOCS = "https://docs.github.com/rest"
PERMISSIONS: dict[str, tuple[str, str]] = {
    "repos/get": ("metadata", "read"),
    "repos/get-branch": ("contents", "read"),
    "repos/get-commit": ("contents", "read"),
    "repos/compare-commits": ("contents", "read"),
    "repos/get-content": ("contents", "read"),
    "repos/create-commit-comment": ("contents", "write"),
    "repos/create-commit-status": ("statuses", "write"),
    "checks/create": ("checks", "write"),
    "checks/update": ("checks", "write"),
    "checks/list-for-ref": ("checks", "read"),
    "issues/list-comments": ("issues|pull_requests", "read"),
    "issues/create-comment": ("issues|pull_requests", "write"),
    "issues/update-comment": ("issues|pull_requests", "write"),
    "issues/list-events": ("issues|pull_requests", "read"),
    "pulls/list": ("pull_requests", "read"),
    "pulls/get": ("pull_requests", "read"),
    "pulls/create": ("pull_requests", "write"),
    "pulls/update": ("pull_requests", "write"),
}
_SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


class HttpError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("message"))
        self.status = status
        self.body = body


def not_found(message: str = "Not Found") -> HttpError:
    return HttpError(404, resources.basic_error(message, 404, DOCS))


def unprocessable(message: str, errors: list[dict[str, Any]] | None = None) -> HttpError:
    return HttpError(422, resources.validation_error(message, errors))


@dataclass
class Auth:
    kind: str  # jwt | token
    token: Token | None = None


@dataclass
class Ctx:
    op: Operation
    params: dict[str, Any]
    body: Any
    auth: Auth | None
    path: str  # the request path as received (for Link headers)
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    repo: Repo | None = None

    @property
    def actor_is_app(self) -> bool:
        return self.auth is not None and self.auth.kind == "token"


class RestHandlers:
    """Mixin of `GitHubFake`: the REST endpoints over `self.state`."""

    state: FakeState
    warnings: list[str]

    @property
    def urls(self) -> resources.Urls:
        raise NotImplementedError

    def rest_handlers(self) -> dict[str, Callable[[Ctx], Reply]]:
        return {
            "apps/get-authenticated": self._get_app,
            "apps/create-installation-access-token": self._create_token,
            "apps/get-repo-installation": self._get_repo_installation,
            "repos/get": self._get_repo,
            "repos/get-branch": self._get_branch,
            "repos/get-commit": self._get_commit,
            "repos/compare-commits": self._compare,
            "repos/get-content": self._get_content,
            "repos/create-commit-comment": self._create_commit_comment,
            "repos/create-commit-status": self._create_status,
            "checks/create": self._create_check_run,
            "checks/update": self._update_check_run,
            "checks/list-for-ref": self._list_check_runs,
            "issues/list-comments": self._list_comments,
            "issues/create-comment": self._create_comment,
            "issues/update-comment": self._update_comment,
            "issues/list-events": self._list_issue_events,
            "pulls/list": self._list_pulls,
            "pulls/get": self._get_pull,
            "pulls/create": self._create_pull,
            "pulls/update": self._update_pull,
        }

    # -- helpers --------------------------------------------------------------------------------------

    def _paginate(self, ctx: Ctx, items: list[Any]) -> tuple[list[Any], dict[str, str]]:
        per_page = max(1, min(int(ctx.params.get("per_page", 30)), 100))
        page = max(1, int(ctx.params.get("page", 1)))
        last = max(1, math.ceil(len(items) / per_page))
        chosen = items[(page - 1) * per_page : page * per_page]
        links = []

        def link(n: int, rel: str) -> str:
            params = {k: v[0] for k, v in ctx.query.items()}
            params["page"] = str(n)
            origin = self.urls.web
            return f'<{origin}{ctx.path}?{urllib.parse.urlencode(sorted(params.items()))}>; rel="{rel}"'

        if page > 1:
            links += [link(page - 1, "prev"), link(1, "first")]
        if page < last:
            links += [link(page + 1, "next"), link(last, "last")]
        return chosen, ({"Link": ", ".join(links)} if links else {})

    def _resolve_commit(self, repo: Repo, ref: str) -> str:
        sha = repo.git.resolve(ref)
        if sha is None:
            raise unprocessable(f"No commit found for SHA: {ref}")
        return sha

    def _new_pull(
        self, repo: Repo, head: str, base: str, title: str, body: str | None, draft: bool, user: User
    ) -> Pull:
        head_owner, _, head_ref = head.rpartition(":")
        head_owner = head_owner or repo.owner_login
        if repo.git.branch_sha(head_ref) is None:
            raise unprocessable(
                "Validation Failed", [{"resource": "PullRequest", "field": "head", "code": "invalid"}]
            )
        if repo.git.branch_sha(base) is None:
            raise unprocessable(
                "Validation Failed", [{"resource": "PullRequest", "field": "base", "code": "invalid"}]
            )
        for other in repo.pulls.values():
            if (
                other.state == "open"
                and other.head_ref == head_ref
                and other.base_ref == base
                and other.head_owner.lower() == head_owner.lower()
            ):
                message = f"A pull request already exists for {head_owner}:{head_ref}."
                raise unprocessable(
                    "Validation Failed", [{"resource": "PullRequest", "code": "custom", "message": message}]
                )
        if repo.git.count(f"refs/heads/{base}..refs/heads/{head_ref}") == 0:
            message = f"No commits between {base} and {head_ref}"
            raise unprocessable(
                "Validation Failed", [{"resource": "PullRequest", "code": "custom", "message": message}]
            )
        stamp = iso(now()) or ""
        pull = Pull(
            number=repo.next_number,
            id=next_id(),
            repo=repo.full_name,
            head_ref=head_ref,
            head_owner=head_owner,
            base_ref=base,
            title=title,
            body=body,
            draft=draft,
            user=user,
            created_at=stamp,
            updated_at=stamp,
        )
        repo.next_number += 1
        repo.pulls[pull.number] = pull
        repo.pull_head_sha(pull)
        repo.pull_base_sha(pull)
        return pull

    def _new_comment(self, repo: Repo, number: int, body: str, user: User, *, via_app: bool) -> IssueComment:
        if number not in repo.pulls:
            raise not_found()
        stamp = iso(now()) or ""
        comment = IssueComment(
            id=next_id(),
            repo=repo.full_name,
            issue_number=number,
            body=body,
            user=user,
            created_at=stamp,
            updated_at=stamp,
            via_app=via_app,
        )
        repo.comments[comment.id] = comment
        return comment

    def _actor(self, ctx: Ctx) -> User:
        return self.state.bot if ctx.actor_is_app else self.state.user("octocat")

    def _repo(self, ctx: Ctx) -> Repo:
        assert ctx.repo is not None
        return ctx.repo

    # -- App endpoints --------------------------------------------------------------------------------

    def _get_app(self, ctx: Ctx) -> Reply:
        return Reply(200, resources.integration(self.state.app, self.urls))

    def _get_repo_installation(self, ctx: Ctx) -> Reply:
        repo = self._repo(ctx)
        try:
            inst = self.state.installation_for(repo.full_name)
        except KeyError:
            raise not_found() from None
        return Reply(200, resources.installation(inst, self.state.app, self.urls))

    def _create_token(self, ctx: Ctx) -> Reply:
        inst = self.state.installations.get(int(ctx.params["installation_id"]))
        if inst is None:
            raise not_found()
        body = ctx.body or {}
        permissions = body.get("permissions") or None
        rank = {"read": 1, "write": 2, "admin": 3}
        if permissions:
            for name, level in permissions.items():
                if rank.get(inst.permissions.get(name, ""), 0) < rank.get(level, 9):
                    raise unprocessable("The permissions requested are not granted to this installation.")
        repos: list[str] | None = None
        if body.get("repositories") or body.get("repository_ids"):
            repos = []
            for name in body.get("repositories", []):
                full = f"{inst.account.login}/{name}".lower()
                if full not in inst.repos:
                    raise unprocessable(
                        "There is at least one repository that does not exist or is not accessible to the "
                        "parent installation."
                    )
                repos.append(full)
            for repo_id in body.get("repository_ids", []):
                found = [k for k in inst.repos if self.state.repos[k].id == repo_id]
                if not found:
                    raise unprocessable(
                        "There is at least one repository that does not exist or is not "
                        "accessible to the parent installation."
                    )
                repos.extend(found)
        token = self.state.issue_token(inst, permissions, repos)
        listed = [self.state.repos[k] for k in token.repos] if repos is not None else None
        data = resources.installation_token(
            token.token, iso(token.expires_at) or "", token.permissions, listed, self.urls
        )
        return Reply(201, data)

    # -- repository endpoints -------------------------------------------------------------------------

    def _get_repo(self, ctx: Ctx) -> Reply:
        return Reply(200, resources.repository(self._repo(ctx), self.urls, full=True))

    def _get_branch(self, ctx: Ctx) -> Reply:
        repo = self._repo(ctx)
        name = str(ctx.params["branch"])
        sha = repo.git.branch_sha(name)
        if sha is None:
            raise not_found("Branch not found")
        return Reply(200, resources.branch(repo, name, repo.git.commit(sha), self.urls))

    def _get_commit(self, ctx: Ctx) -> Reply:
        repo = self._repo(ctx)
        sha = self._resolve_commit(repo, str(ctx.params["ref"]))
        info = repo.git.commit(sha)
        files = repo.git.changes(info.parents[0] if info.parents else None, sha)
        return Reply(200, resources.commit(repo, info, self.urls, files=files))

    def _compare(self, ctx: Ctx) -> Reply:
        repo = self._repo(ctx)
        basehead = str(ctx.params["basehead"])
        base, sep, head = basehead.partition("...")
        if not sep:
            base, sep, head = basehead.partition("..")
        if not sep or not base or not head:
            raise not_found()
        base_sha = repo.git.resolve(base.rpartition(":")[2])
        head_sha = repo.git.resolve(head.rpartition(":")[2])
        if base_sha is None or head_sha is None:
            raise not_found()
        merge_base = repo.git.merge_base(base_sha, head_sha)
        if merge_base is None:
            raise not_found(f"No common ancestor between {base} and {head}.")
        ahead = repo.git.count(f"{base_sha}..{head_sha}")
        behind = repo.git.count(f"{head_sha}..{base_sha}")
        status = (
            "identical"
            if ahead == behind == 0
            else "ahead"
            if behind == 0
            else "behind"
            if ahead == 0
            else "diverged"
        )
        commits = [
            resources.commit(repo, repo.git.commit(s), self.urls)
            for s in repo.git.rev_list(f"{base_sha}..{head_sha}", limit=250)
        ]
        files = repo.git.changes(merge_base, head_sha)
        web = f"{self.urls.web}/{repo.full_name}"
        owner = repo.owner_login
        data = {
            "url": f"{self.urls.repo(repo.full_name)}/compare/{basehead}",
            "html_url": f"{web}/compare/{basehead}",
            "permalink_url": f"{web}/compare/{owner}:{base_sha[:7]}...{owner}:{head_sha[:7]}",
            "diff_url": f"{web}/compare/{basehead}.diff",
            "patch_url": f"{web}/compare/{basehead}.patch",
            "base_commit": resources.commit(repo, repo.git.commit(base_sha), self.urls),
            "merge_base_commit": resources.commit(repo, repo.git.commit(merge_base), self.urls),
            "status": status,
            "ahead_by": ahead,
            "behind_by": behind,
            "total_commits": ahead,
            "commits": commits,
            "files": [resources.diff_entry(repo, head_sha, f, self.urls) for f in files],
        }
        return Reply(200, data)

    def _get_content(self, ctx: Ctx) -> Reply:
        repo = self._repo(ctx)
        ref = str(ctx.params.get("ref") or repo.effective_default_branch())
        sha = repo.git.resolve(ref)
        if sha is None:
            raise not_found(f"No commit found for the ref {ref}")
        path = str(ctx.params["path"]).strip("/")
        entry = repo.git.entry(sha, path)
        if entry is None:
            raise not_found()
        if entry.kind == "tree":
            items = [resources.content_entry(repo, e, ref, self.urls) for e in repo.git.list_dir(sha, path)]
            return Reply(200, items)
        data = repo.git.blob(entry.sha) if entry.kind == "blob" else None
        return Reply(200, resources.content(repo, entry, ref, self.urls, data))

    def _create_commit_comment(self, ctx: Ctx) -> Reply:
        repo = self._repo(ctx)
        sha = self._resolve_commit(repo, str(ctx.params["commit_sha"]))
        body = ctx.body
        comment = CommitComment(
            id=next_id(),
            repo=repo.full_name,
            commit_id=sha,
            body=body["body"],
            path=body.get("path"),
            position=body.get("position"),
            line=body.get("line"),
            user=self._actor(ctx),
            created_at=iso(now()) or "",
        )
        repo.commit_comments.append(comment)
        return Reply(201, resources.commit_comment(comment, repo, self.urls))

    def _create_status(self, ctx: Ctx) -> Reply:
        repo = self._repo(ctx)
        sha = self._resolve_commit(repo, str(ctx.params["sha"]))
        body = ctx.body
        entry = Status(
            id=next_id(),
            repo=repo.full_name,
            sha=sha,
            state=body["state"],
            context=body.get("context") or "default",
            description=body.get("description"),
            target_url=body.get("target_url"),
            created_at=iso(now()) or "",
            creator=self._actor(ctx),
        )
        repo.statuses.append(entry)
        return Reply(201, resources.status(entry, repo, self.urls))

    # -- check runs -----------------------------------------------------------------------------------

    def _apply_check_fields(self, run: CheckRun, body: dict[str, Any]) -> None:
        if body.get("conclusion") == "stale":
            raise unprocessable('Invalid request.\n\nconclusion "stale" can only be set by GitHub.')
        for key in ("name", "details_url", "external_id", "started_at", "completed_at"):
            if key in body:
                setattr(run, key, body[key])
        if "status" in body:
            run.status = body["status"]
        if body.get("conclusion"):
            run.conclusion = body["conclusion"]
            run.status = "completed"
        if run.status == "completed" and run.completed_at is None:
            run.completed_at = iso(now())
        if run.status != "completed":
            run.conclusion = None
        if "output" in body:
            output = body["output"] or {}
            run.output = {k: output.get(k, run.output.get(k)) for k in ("title", "summary", "text")}
            run.annotations.extend(output.get("annotations") or [])
        if "actions" in body:
            run.actions = list(body["actions"] or [])

    def _create_check_run(self, ctx: Ctx) -> Reply:
        repo = self._repo(ctx)
        body = ctx.body
        head_sha = str(body["head_sha"])
        if not _SHA.match(head_sha) or repo.git.resolve(head_sha) != head_sha:
            raise unprocessable(f"No commit found for SHA: {head_sha}")
        run = CheckRun(
            id=next_id(),
            repo=repo.full_name,
            name=body["name"],
            head_sha=head_sha,
            status="queued",
            conclusion=None,
            started_at=iso(now()),
            completed_at=None,
            details_url=None,
            external_id=None,
            output={},
            actions=[],
            app_id=self.state.app.id,
            check_suite_id=self.state.check_suite_id(repo, head_sha),
        )
        self._apply_check_fields(run, body)
        run.history.append({"action": "created", "body": body})
        repo.check_runs[run.id] = run
        data = resources.check_run(run, repo, self.state, self.urls)
        return Reply(201, data, {"Location": data["url"]})

    def _update_check_run(self, ctx: Ctx) -> Reply:
        repo = self._repo(ctx)
        run = repo.check_runs.get(int(ctx.params["check_run_id"]))
        if run is None:
            raise not_found()
        self._apply_check_fields(run, ctx.body)
        run.history.append({"action": "updated", "body": ctx.body})
        return Reply(200, resources.check_run(run, repo, self.state, self.urls))

    def _list_check_runs(self, ctx: Ctx) -> Reply:
        repo = self._repo(ctx)
        sha = self._resolve_commit(repo, str(ctx.params["ref"]))
        runs = sorted((r for r in repo.check_runs.values() if r.head_sha == sha), key=lambda r: -r.id)
        if "check_name" in ctx.params:
            runs = [r for r in runs if r.name == ctx.params["check_name"]]
        if "status" in ctx.params:
            runs = [r for r in runs if r.status == ctx.params["status"]]
        if "app_id" in ctx.params:
            runs = [r for r in runs if r.app_id == ctx.params["app_id"]]
        if ctx.params.get("filter", "latest") == "latest":
            seen: set[str] = set()
            latest = []
            for r in runs:
                if r.name not in seen:
                    seen.add(r.name)
                    latest.append(r)
            runs = latest
        page, headers = self._paginate(ctx, runs)
        data = {
            "total_count": len(runs),
            "check_runs": [resources.check_run(r, repo, self.state, self.urls) for r in page],
        }
        return Reply(200, data, headers)

    # -- comments -------------------------------------------------------------------------------------

    def _list_comments(self, ctx: Ctx) -> Reply:
        repo = self._repo(ctx)
        number = int(ctx.params["issue_number"])
        if number not in repo.pulls:
            raise not_found()
        found = sorted((c for c in repo.comments.values() if c.issue_number == number), key=lambda c: c.id)
        if "since" in ctx.params:
            since = str(ctx.params["since"])
            found = [c for c in found if c.updated_at >= since]
        page, headers = self._paginate(ctx, found)
        return Reply(200, [resources.issue_comment(c, repo, self.state, self.urls) for c in page], headers)

    def _create_comment(self, ctx: Ctx) -> Reply:
        repo = self._repo(ctx)
        comment = self._new_comment(
            repo,
            int(ctx.params["issue_number"]),
            ctx.body["body"],
            self._actor(ctx),
            via_app=ctx.actor_is_app,
        )
        data = resources.issue_comment(comment, repo, self.state, self.urls)
        return Reply(201, data, {"Location": data["url"]})

    def _update_comment(self, ctx: Ctx) -> Reply:
        repo = self._repo(ctx)
        comment = repo.comments.get(int(ctx.params["comment_id"]))
        if comment is None:
            raise not_found()
        comment.history.append(comment.body)
        comment.body = ctx.body["body"]
        comment.updated_at = iso(now()) or comment.updated_at
        return Reply(200, resources.issue_comment(comment, repo, self.state, self.urls))

    def _list_issue_events(self, ctx: Ctx) -> Reply:
        """Oldest first, as GitHub lists them."""
        repo = self._repo(ctx)
        number = int(ctx.params["issue_number"])
        if number not in repo.pulls:
            raise not_found()
        found = [e for e in repo.events if e.issue_number == number]
        page, headers = self._paginate(ctx, found)
        return Reply(200, [resources.issue_event(e, repo, self.state, self.urls) for e in page], headers)

    # -- pulls ----------------------------------------------------------------------------------------

    def _list_pulls(self, ctx: Ctx) -> Reply:
        repo = self._repo(ctx)
        state = ctx.params.get("state", "open")
        found = [p for p in repo.pulls.values() if state == "all" or p.state == state]
        head = ctx.params.get("head")
        if head is not None:
            owner, sep, ref = str(head).partition(":")
            if sep:
                found = [
                    p
                    for p in found
                    if p.head_owner.lower() == owner.lower() and (not ref or p.head_ref == ref)
                ]
            else:
                # GitHub ignores a `head` without `user:` and returns every pull: a classic client bug.
                self.warnings.append(f"pulls/list head={head!r} lacks the 'owner:' prefix; GitHub ignores it")
        if "base" in ctx.params:
            found = [p for p in found if p.base_ref == ctx.params["base"]]
        sort = ctx.params.get("sort", "created")
        key = (lambda p: p.updated_at) if sort == "updated" else (lambda p: (p.created_at, p.number))
        found.sort(key=key, reverse=ctx.params.get("direction", "desc") == "desc")
        page, headers = self._paginate(ctx, found)
        return Reply(200, [resources.pull_request(p, repo, self.urls, full=False) for p in page], headers)

    def _get_pull(self, ctx: Ctx) -> Reply:
        repo = self._repo(ctx)
        pull = repo.pulls.get(int(ctx.params["pull_number"]))
        if pull is None:
            raise not_found()
        return Reply(200, resources.pull_request(pull, repo, self.urls))

    def _create_pull(self, ctx: Ctx) -> Reply:
        repo = self._repo(ctx)
        body = ctx.body
        if not body.get("title") and "issue" not in body:
            raise unprocessable(
                "Validation Failed", [{"resource": "PullRequest", "field": "title", "code": "missing_field"}]
            )
        pull = self._new_pull(
            repo,
            body["head"],
            body["base"],
            body.get("title") or "",
            body.get("body"),
            bool(body.get("draft", False)),
            self._actor(ctx),
        )
        pull.maintainer_can_modify = bool(body.get("maintainer_can_modify", False))
        data = resources.pull_request(pull, repo, self.urls)
        return Reply(201, data, {"Location": data["url"]})

    def _update_pull(self, ctx: Ctx) -> Reply:
        repo = self._repo(ctx)
        pull = repo.pulls.get(int(ctx.params["pull_number"]))
        if pull is None:
            raise not_found()
        body = ctx.body or {}
        if "base" in body and repo.git.branch_sha(body["base"]) is None:
            raise unprocessable(
                "Validation Failed", [{"resource": "PullRequest", "field": "base", "code": "invalid"}]
            )
        reopening = body.get("state") == "open" and pull.state == "closed"
        if reopening and (pull.merged or repo.git.branch_sha(pull.head_ref) is None):
            raise unprocessable(
                "Validation Failed",
                [{"resource": "PullRequest", "code": "custom", "message": "state cannot be changed."}],
            )
        repo.pull_head_sha(pull)
        repo.pull_base_sha(pull)
        for key in ("title", "body", "base", "maintainer_can_modify"):
            if key in body:
                setattr(pull, "base_ref" if key == "base" else key, body[key])
        if body.get("state") == "closed" and pull.state == "open":
            pull.state = "closed"
            pull.closed_at = iso(now())
        elif body.get("state") == "open" and pull.state == "closed":
            pull.state = "open"
            pull.closed_at = None
        pull.updated_at = iso(now()) or pull.updated_at
        return Reply(200, resources.pull_request(pull, repo, self.urls))
