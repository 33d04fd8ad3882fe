"""A `RepoClient` from a plain token (the workflow's `GITHUB_TOKEN` or one the caller passes), so the
Action makes its check run, sticky comment and PR through the App's own adapter and `publish`.

The adapter asks an identity for two things: the login its comments appear under (how the sticky
comment is found again) and a token for git. An App answers from its JWT; a workflow token cannot ask
GitHub who it is (`GET /app` needs a JWT, `GET /user` refuses installation tokens), so the login is
known instead: `github-actions[bot]` for `GITHUB_TOKEN`, or `LOOPGATE_COMMENT_AUTHOR` for another token.
"""

from __future__ import annotations

from typing import cast

from github import Auth, Github

from bot.github.client import GitHubApp, RepoClient, _retry

WORKFLOW_TOKEN_LOGIN = "github-actions[bot]"


class TokenIdentity:
    """What `RepoClient` needs of a `GitHubApp`, for a token that is not an App's."""

    def __init__(self, token: str, login: str) -> None:
        self._token = token
        self._login = login

    def bot_login(self) -> str:
        return self._login

    def token(self, installation_id: int) -> str:
        return self._token


def token_repo_client(
    api_url: str, token: str, repository: str, login: str = WORKFLOW_TOKEN_LOGIN
) -> RepoClient:
    github = Github(auth=Auth.Token(token), base_url=api_url, retry=_retry())
    identity = cast(GitHubApp, TokenIdentity(token, login))
    return RepoClient(github.get_repo(repository, lazy=True), repository, identity)
