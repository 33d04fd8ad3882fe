"""Factories for GitHub's REST resources, one per resource, with every field the contract requires.

URLs point back at the fake (`api` for REST URLs, `web` for html URLs) so that clients which follow
`url` fields (PyGithub does) keep talking to it.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from tests.github_fake.state import (
    App,
    CheckRun,
    CommitComment,
    FakeState,
    FileChange,
    GitCommit,
    Installation,
    IssueComment,
    IssueEvent,
    Pull,
    Repo,
    Status,
    TreeEntry,
    User,
    iso,
    node_id,
    now,
)

CREATED = "2024-01-02T03:04:05Z"


@dataclass(frozen=True)
class Urls:
    api: str
    web: str

    def repo(self, full_name: str) -> str:
        return f"{self.api}/repos/{full_name}"


def user(u: User, urls: Urls) -> dict[str, Any]:
    base = f"{urls.api}/users/{u.login}"
    return {
        "login": u.login,
        "id": u.id,
        "node_id": node_id(u.type, u.id),
        "avatar_url": f"{urls.web}/avatars/u/{u.id}?v=4",
        "gravatar_id": "",
        "url": base,
        "html_url": f"{urls.web}/{u.login.removesuffix('[bot]')}"
        if u.type != "Bot"
        else f"{urls.web}/apps/{u.login.removesuffix('[bot]')}",
        "followers_url": f"{base}/followers",
        "following_url": f"{base}/following{{/other_user}}",
        "gists_url": f"{base}/gists{{/gist_id}}",
        "starred_url": f"{base}/starred{{/owner}}{{/repo}}",
        "subscriptions_url": f"{base}/subscriptions",
        "organizations_url": f"{base}/orgs",
        "repos_url": f"{base}/repos",
        "events_url": f"{base}/events{{/privacy}}",
        "received_events_url": f"{base}/received_events",
        "type": u.type,
        "user_view_type": "public",
        "site_admin": False,
    }


def integration(app: App, urls: Urls) -> dict[str, Any]:
    return {
        "id": app.id,
        "slug": app.slug,
        "node_id": app.node_id,
        "client_id": f"Iv1.{app.id:016x}",
        "owner": user(app.owner, urls),
        "name": app.name,
        "description": "loopgate test App (contract fake)",
        "external_url": f"{urls.web}/apps/{app.slug}/home",
        "html_url": f"{urls.web}/apps/{app.slug}",
        "created_at": app.created_at,
        "updated_at": app.created_at,
        "permissions": dict(app.permissions),
        "events": ["check_run", "check_suite", "pull_request", "push"],
    }


def installation(inst: Installation, app: App, urls: Urls) -> dict[str, Any]:
    return {
        "id": inst.id,
        "account": user(inst.account, urls),
        "repository_selection": "selected",
        "access_tokens_url": f"{urls.api}/app/installations/{inst.id}/access_tokens",
        "repositories_url": f"{urls.api}/installation/repositories",
        "html_url": f"{urls.web}/settings/installations/{inst.id}",
        "app_id": app.id,
        "client_id": f"Iv1.{app.id:016x}",
        "target_id": inst.account.id,
        "target_type": inst.account.type,
        "permissions": dict(inst.permissions),
        "events": list(inst.events),
        "created_at": inst.created_at,
        "updated_at": inst.created_at,
        "single_file_name": None,
        "has_multiple_single_files": False,
        "single_file_paths": [],
        "app_slug": app.slug,
        "suspended_by": None,
        "suspended_at": None,
    }


def repository(repo: Repo, urls: Urls, *, full: bool = False) -> dict[str, Any]:
    """`repository` (nested in pulls, tokens) or, with `full`, `full-repository` (`GET /repos/{o}/{r}`)."""
    api = urls.repo(repo.full_name)
    web = f"{urls.web}/{repo.full_name}"
    pushed = iso(now())
    data: dict[str, Any] = {
        "id": repo.id,
        "node_id": repo.node_id,
        "name": repo.name,
        "full_name": repo.full_name,
        "owner": user(repo.owner, urls),
        "private": repo.private,
        "html_url": web,
        "description": None,
        "fork": False,
        "url": api,
        "archive_url": f"{api}/{{archive_format}}{{/ref}}",
        "assignees_url": f"{api}/assignees{{/user}}",
        "blobs_url": f"{api}/git/blobs{{/sha}}",
        "branches_url": f"{api}/branches{{/branch}}",
        "collaborators_url": f"{api}/collaborators{{/collaborator}}",
        "comments_url": f"{api}/comments{{/number}}",
        "commits_url": f"{api}/commits{{/sha}}",
        "compare_url": f"{api}/compare/{{base}}...{{head}}",
        "contents_url": f"{api}/contents/{{+path}}",
        "contributors_url": f"{api}/contributors",
        "deployments_url": f"{api}/deployments",
        "downloads_url": f"{api}/downloads",
        "events_url": f"{api}/events",
        "forks_url": f"{api}/forks",
        "git_commits_url": f"{api}/git/commits{{/sha}}",
        "git_refs_url": f"{api}/git/refs{{/sha}}",
        "git_tags_url": f"{api}/git/tags{{/sha}}",
        "git_url": f"git://{urls.web.split('://', 1)[-1]}/{repo.full_name}.git",
        "issue_comment_url": f"{api}/issues/comments{{/number}}",
        "issue_events_url": f"{api}/issues/events{{/number}}",
        "issues_url": f"{api}/issues{{/number}}",
        "keys_url": f"{api}/keys{{/key_id}}",
        "labels_url": f"{api}/labels{{/name}}",
        "languages_url": f"{api}/languages",
        "merges_url": f"{api}/merges",
        "milestones_url": f"{api}/milestones{{/number}}",
        "notifications_url": f"{api}/notifications{{?since,all,participating}}",
        "pulls_url": f"{api}/pulls{{/number}}",
        "releases_url": f"{api}/releases{{/id}}",
        "ssh_url": f"git@{urls.web.split('://', 1)[-1].split('/')[0]}:{repo.full_name}.git",
        "stargazers_url": f"{api}/stargazers",
        "statuses_url": f"{api}/statuses/{{sha}}",
        "subscribers_url": f"{api}/subscribers",
        "subscription_url": f"{api}/subscription",
        "tags_url": f"{api}/tags",
        "teams_url": f"{api}/teams",
        "trees_url": f"{api}/git/trees{{/sha}}",
        "clone_url": repo.effective_clone_url(),
        "mirror_url": None,
        "hooks_url": f"{api}/hooks",
        "svn_url": web,
        "homepage": None,
        "language": None,
        "forks_count": 0,
        "stargazers_count": 0,
        "watchers_count": 0,
        "size": 1,
        "default_branch": repo.effective_default_branch(),
        "open_issues_count": sum(1 for p in repo.pulls.values() if p.state == "open"),
        "is_template": False,
        "topics": [],
        "has_issues": True,
        "has_projects": False,
        "has_wiki": False,
        "has_pages": False,
        "has_downloads": True,
        "has_discussions": False,
        "archived": False,
        "disabled": False,
        "visibility": "private" if repo.private else "public",
        "pushed_at": pushed,
        "created_at": repo.created_at,
        "updated_at": pushed,
        "permissions": {"admin": False, "maintain": False, "push": True, "triage": True, "pull": True},
        "allow_forking": True,
        "web_commit_signoff_required": False,
        "license": None,
        "forks": 0,
        "open_issues": sum(1 for p in repo.pulls.values() if p.state == "open"),
        "watchers": 0,
    }
    if full:
        data.update(
            {
                "subscribers_count": 0,
                "network_count": 0,
                "allow_squash_merge": True,
                "allow_merge_commit": True,
                "allow_rebase_merge": True,
                "delete_branch_on_merge": False,
            }
        )
    return data


def commit(repo: Repo, c: GitCommit, urls: Urls, *, files: list[FileChange] | None = None) -> dict[str, Any]:
    api = urls.repo(repo.full_name)
    web = f"{urls.web}/{repo.full_name}"
    data: dict[str, Any] = {
        "url": f"{api}/commits/{c.sha}",
        "sha": c.sha,
        "node_id": node_id("Commit", int(c.sha[:7], 16)),
        "html_url": f"{web}/commit/{c.sha}",
        "comments_url": f"{api}/commits/{c.sha}/comments",
        "commit": {
            "url": f"{api}/git/commits/{c.sha}",
            "author": {"name": c.author.name, "email": c.author.email, "date": c.author.date},
            "committer": {"name": c.committer.name, "email": c.committer.email, "date": c.committer.date},
            "message": c.message,
            "comment_count": sum(1 for cc in repo.commit_comments if cc.commit_id == c.sha),
            "tree": {"sha": c.tree, "url": f"{api}/git/trees/{c.tree}"},
            "verification": {
                "verified": False,
                "reason": "unsigned",
                "payload": None,
                "signature": None,
                "verified_at": None,
            },
        },
        "author": None,
        "committer": None,
        "parents": [
            {"sha": p, "url": f"{api}/commits/{p}", "html_url": f"{web}/commit/{p}"} for p in c.parents
        ],
    }
    if files is not None:
        data["files"] = [diff_entry(repo, c.sha, f, urls) for f in files]
        additions = sum(f.additions for f in files)
        deletions = sum(f.deletions for f in files)
        data["stats"] = {"additions": additions, "deletions": deletions, "total": additions + deletions}
    return data


def diff_entry(repo: Repo, ref: str, f: FileChange, urls: Urls) -> dict[str, Any]:
    api = urls.repo(repo.full_name)
    web = f"{urls.web}/{repo.full_name}"
    data: dict[str, Any] = {
        "sha": f.sha,
        "filename": f.filename,
        "status": f.status,
        "additions": f.additions,
        "deletions": f.deletions,
        "changes": f.additions + f.deletions,
        "blob_url": f"{web}/blob/{ref}/{f.filename}",
        "raw_url": f"{web}/raw/{ref}/{f.filename}",
        "contents_url": f"{api}/contents/{f.filename}?ref={ref}",
    }
    if f.previous_filename:
        data["previous_filename"] = f.previous_filename
    return data


def branch(repo: Repo, name: str, c: GitCommit, urls: Urls) -> dict[str, Any]:
    api = urls.repo(repo.full_name)
    return {
        "name": name,
        "commit": commit(repo, c, urls),
        "_links": {"html": f"{urls.web}/{repo.full_name}/tree/{name}", "self": f"{api}/branches/{name}"},
        "protected": False,
        "protection": {
            "enabled": False,
            "required_status_checks": {"enforcement_level": "off", "contexts": [], "checks": []},
        },
        "protection_url": f"{api}/branches/{name}/protection",
    }


def check_run(run: CheckRun, repo: Repo, state: FakeState, urls: Urls) -> dict[str, Any]:
    api = urls.repo(repo.full_name)
    output = run.output
    pulls = [
        pull_minimal(p, repo, urls)
        for p in repo.pulls.values()
        if p.state == "open" and repo.pull_head_sha(p) == run.head_sha
    ]
    return {
        "id": run.id,
        "head_sha": run.head_sha,
        "node_id": run.node_id,
        "external_id": run.external_id or "",
        "url": f"{api}/check-runs/{run.id}",
        "html_url": f"{urls.web}/{repo.full_name}/runs/{run.id}",
        "details_url": run.details_url or f"{urls.web}/apps/{state.app.slug}",
        "status": run.status,
        "conclusion": run.conclusion,
        "started_at": run.started_at,
        "completed_at": run.completed_at,
        "output": {
            "title": output.get("title"),
            "summary": output.get("summary"),
            "text": output.get("text"),
            "annotations_count": len(run.annotations),
            "annotations_url": f"{api}/check-runs/{run.id}/annotations",
        },
        "name": run.name,
        "check_suite": {"id": run.check_suite_id},
        "app": integration(state.app, urls),
        "pull_requests": pulls,
    }


def pull_minimal(p: Pull, repo: Repo, urls: Urls) -> dict[str, Any]:
    api = urls.repo(repo.full_name)
    small_repo = {"id": repo.id, "url": api, "name": repo.name}
    return {
        "id": p.id,
        "number": p.number,
        "url": f"{api}/pulls/{p.number}",
        "head": {"ref": p.head_ref, "sha": repo.pull_head_sha(p), "repo": small_repo},
        "base": {"ref": p.base_ref, "sha": repo.pull_base_sha(p), "repo": small_repo},
    }


def pull_request(p: Pull, repo: Repo, urls: Urls, *, full: bool = True) -> dict[str, Any]:
    """`pull-request` (`full`) or `pull-request-simple` (list)."""
    api = urls.repo(repo.full_name)
    web = f"{urls.web}/{repo.full_name}"
    head_sha = repo.pull_head_sha(p)
    base_sha = repo.pull_base_sha(p)
    repo_json = repository(repo, urls)
    comments = sum(1 for c in repo.comments.values() if c.issue_number == p.number)
    data: dict[str, Any] = {
        "url": f"{api}/pulls/{p.number}",
        "id": p.id,
        "node_id": p.node_id,
        "html_url": f"{web}/pull/{p.number}",
        "diff_url": f"{web}/pull/{p.number}.diff",
        "patch_url": f"{web}/pull/{p.number}.patch",
        "issue_url": f"{api}/issues/{p.number}",
        "commits_url": f"{api}/pulls/{p.number}/commits",
        "review_comments_url": f"{api}/pulls/{p.number}/comments",
        "review_comment_url": f"{api}/pulls/comments{{/number}}",
        "comments_url": f"{api}/issues/{p.number}/comments",
        "statuses_url": f"{api}/statuses/{head_sha}",
        "number": p.number,
        "state": p.state,
        "locked": False,
        "title": p.title,
        "user": user(p.user, urls),
        "body": p.body,
        "labels": [],
        "milestone": None,
        "active_lock_reason": None,
        "created_at": p.created_at,
        "updated_at": p.updated_at,
        "closed_at": p.closed_at,
        "merged_at": p.merged_at,
        "merge_commit_sha": None,
        "assignee": None,
        "assignees": [],
        "requested_reviewers": [],
        "requested_teams": [],
        "head": {
            "label": f"{p.head_owner}:{p.head_ref}",
            "ref": p.head_ref,
            "sha": head_sha,
            "user": user(repo.owner, urls),
            "repo": repo_json,
        },
        "base": {
            "label": f"{repo.owner_login}:{p.base_ref}",
            "ref": p.base_ref,
            "sha": base_sha,
            "user": user(repo.owner, urls),
            "repo": repo_json,
        },
        "_links": {
            "self": {"href": f"{api}/pulls/{p.number}"},
            "html": {"href": f"{web}/pull/{p.number}"},
            "issue": {"href": f"{api}/issues/{p.number}"},
            "comments": {"href": f"{api}/issues/{p.number}/comments"},
            "review_comments": {"href": f"{api}/pulls/{p.number}/comments"},
            "review_comment": {"href": f"{api}/pulls/comments{{/number}}"},
            "commits": {"href": f"{api}/pulls/{p.number}/commits"},
            "statuses": {"href": f"{api}/statuses/{head_sha}"},
        },
        "author_association": "OWNER" if p.user.login == repo.owner_login else "CONTRIBUTOR",
        "auto_merge": None,
        "draft": p.draft,
    }
    if full:
        git = repo.git
        merge_base = git.merge_base(base_sha, head_sha) if p.state == "open" else None
        changes = git.changes(merge_base, head_sha) if merge_base else []
        data.update(
            {
                "merged": p.merged,
                "mergeable": True if p.state == "open" else None,
                "rebaseable": True if p.state == "open" else None,
                "mergeable_state": "clean" if p.state == "open" else "unknown",
                "merged_by": None,
                "comments": comments,
                "review_comments": 0,
                "maintainer_can_modify": p.maintainer_can_modify,
                "commits": git.count(f"{merge_base}..{head_sha}") if merge_base else 0,
                "additions": sum(c.additions for c in changes),
                "deletions": sum(c.deletions for c in changes),
                "changed_files": len(changes),
            }
        )
    return data


def issue_comment(c: IssueComment, repo: Repo, state: FakeState, urls: Urls) -> dict[str, Any]:
    api = urls.repo(repo.full_name)
    return {
        "id": c.id,
        "node_id": c.node_id,
        "url": f"{api}/issues/comments/{c.id}",
        "html_url": f"{urls.web}/{repo.full_name}/pull/{c.issue_number}#issuecomment-{c.id}",
        "body": c.body,
        "user": user(c.user, urls),
        "created_at": c.created_at,
        "updated_at": c.updated_at,
        "issue_url": f"{api}/issues/{c.issue_number}",
        "author_association": "NONE" if c.via_app else "OWNER",
        "performed_via_github_app": integration(state.app, urls) if c.via_app else None,
        "reactions": {
            "url": f"{api}/issues/comments/{c.id}/reactions",
            "total_count": 0,
            "+1": 0,
            "-1": 0,
            "laugh": 0,
            "confused": 0,
            "heart": 0,
            "hooray": 0,
            "eyes": 0,
            "rocket": 0,
        },
    }


def issue_event(e: IssueEvent, repo: Repo, state: FakeState, urls: Urls) -> dict[str, Any]:
    """An event of `GET .../issues/{n}/events` as GitHub shows a draft change: no commit, the actor, and
    the App whose token did it."""
    return {
        "id": e.id,
        "node_id": e.node_id,
        "url": f"{urls.repo(repo.full_name)}/issues/events/{e.id}",
        "actor": user(e.actor, urls),
        "event": e.event,
        "commit_id": None,
        "commit_url": None,
        "created_at": e.created_at,
        "performed_via_github_app": integration(state.app, urls) if e.via_app else None,
    }


def commit_comment(c: CommitComment, repo: Repo, urls: Urls) -> dict[str, Any]:
    api = urls.repo(repo.full_name)
    return {
        "html_url": f"{urls.web}/{repo.full_name}/commit/{c.commit_id}#commitcomment-{c.id}",
        "url": f"{api}/comments/{c.id}",
        "id": c.id,
        "node_id": node_id("CommitComment", c.id),
        "body": c.body,
        "path": c.path,
        "position": c.position,
        "line": c.line,
        "commit_id": c.commit_id,
        "user": user(c.user, urls),
        "created_at": c.created_at,
        "updated_at": c.created_at,
        "author_association": "NONE",
    }


def status(s: Status, repo: Repo, urls: Urls) -> dict[str, Any]:
    return {
        "url": f"{urls.repo(repo.full_name)}/statuses/{s.sha}",
        "avatar_url": None,
        "id": s.id,
        "node_id": node_id("StatusContext", s.id),
        "state": s.state,
        "description": s.description,
        "target_url": s.target_url,
        "context": s.context,
        "created_at": s.created_at,
        "updated_at": s.created_at,
        "creator": user(s.creator, urls),
    }


def _content_common(repo: Repo, entry: TreeEntry, ref: str, urls: Urls) -> dict[str, Any]:
    api = urls.repo(repo.full_name)
    web = f"{urls.web}/{repo.full_name}"
    name = entry.path.rsplit("/", 1)[-1]
    kind = {"tree": "dir", "commit": "submodule"}.get(entry.kind, "file")
    if entry.mode == "120000":
        kind = "symlink"
    git_kind = "trees" if entry.kind == "tree" else "blobs"
    self_url = f"{api}/contents/{entry.path}?ref={ref}"
    html = f"{web}/{'tree' if kind == 'dir' else 'blob'}/{ref}/{entry.path}"
    git_url = f"{api}/git/{git_kind}/{entry.sha}"
    return {
        "type": kind,
        "size": entry.size if entry.kind == "blob" else 0,
        "name": name,
        "path": entry.path,
        "sha": entry.sha,
        "url": self_url,
        "git_url": git_url if kind != "submodule" else None,
        "html_url": html if kind != "submodule" else None,
        "download_url": f"{web}/raw/{ref}/{entry.path}" if kind in ("file", "symlink") else None,
        "_links": {"self": self_url, "git": git_url, "html": html},
    }


def content_entry(repo: Repo, entry: TreeEntry, ref: str, urls: Urls) -> dict[str, Any]:
    """One item of a directory listing."""
    return _content_common(repo, entry, ref, urls)


def content(repo: Repo, entry: TreeEntry, ref: str, urls: Urls, data: bytes | None) -> dict[str, Any]:
    """A file (`content-file`, base64 in 60-column lines like GitHub), symlink or submodule."""
    out = _content_common(repo, entry, ref, urls)
    if out["type"] == "file":
        encoded = base64.b64encode(data or b"").decode()
        out["encoding"] = "base64"
        out["content"] = "".join(encoded[i : i + 60] + "\n" for i in range(0, len(encoded), 60))
    elif out["type"] == "symlink":
        out["target"] = (data or b"").decode(errors="replace")
    elif out["type"] == "submodule":
        out["submodule_git_url"] = f"{urls.web}/{repo.full_name}.git"
    return out


def installation_token(
    token: str, expires_at: str, permissions: dict[str, str], repos: list[Repo] | None, urls: Urls
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "token": token,
        "expires_at": expires_at,
        "permissions": dict(permissions),
        "repository_selection": "selected",
    }
    if repos is not None:
        data["repositories"] = [repository(r, urls) for r in repos]
    return data


def basic_error(message: str, status: int, doc: str = "https://docs.github.com/rest") -> dict[str, Any]:
    return {"message": message, "documentation_url": doc, "status": str(status)}


def validation_error(message: str, errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"message": message, "documentation_url": "https://docs.github.com/rest"}
    if errors:
        data["errors"] = errors
    return data
