"""A `RepoClient` from a plain token (the workflow's `GITHUB_TOKEN` or one the caller passes), so the
Action makes its check run, sticky comment and PR through the App's own adapter and `publish`.

The adapter asks its identity for the login its comments and draft conversions appear under (how the
sticky comment is found again, and how loopgate's own drafts are told from the author's). A workflow token
cannot ask GitHub who it is (`GET /app` needs a JWT, `GET /user` refuses installation tokens), so the
login is known instead: `github-actions[bot]` for `GITHUB_TOKEN`, or `LOOPGATE_COMMENT_AUTHOR` for
another token.
"""

from __future__ import annotations

from bot.github.client import RepoClient

WORKFLOW_TOKEN_LOGIN = "github-actions[bot]"


def token_repo_client(
    api_url: str, token: str, repository: str, login: str = WORKFLOW_TOKEN_LOGIN
) -> RepoClient:
    return RepoClient.for_token(api_url, token, repository, login)
