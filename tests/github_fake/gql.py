"""`POST /graphql`: every document is parsed and validated against GitHub's published schema (SDL) with
graphql-core, then executed against the fake's state for the few fields the fake implements.

GitHub's published SDL defines `EnterpriseOwnerInfo.repositoryDeployKeySetting` twice, so a strict
`build_schema(sdl)` refuses it; the schema is built with `assume_valid_sdl=True` (documents are still
fully validated against it). graphql-core 3.3 also rejects the schema itself in `validate()` (deprecated
fields implementing non-deprecated interface fields, e.g. `PullRequest.databaseId`), hence the pin to 3.2.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from graphql import (
    DocumentNode,
    FieldNode,
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    build_schema,
    execute_sync,
    get_operation_ast,
    parse,
    validate,
)

from tests.github_fake.contract import package_dir
from tests.github_fake.resources import Urls
from tests.github_fake.state import FakeState, Pull, Repo, Token, node_id

# Root fields the fake can answer; anything else valid is reported as a gap of the fake.
SUPPORTED_ROOT_FIELDS = {
    "query": {"node", "nodes", "repository", "viewer", "__typename", "__schema", "__type"},
    "mutation": {"convertPullRequestToDraft", "markPullRequestReadyForReview", "__typename"},
}


def schema_path() -> Path:
    return package_dir("@octokit/graphql-schema") / "schema.graphql"


@functools.cache
def github_schema(path: str | None = None) -> GraphQLSchema:
    """GitHub's GraphQL schema, built once per process."""
    sdl = Path(path or schema_path()).read_text()
    return build_schema(sdl, assume_valid_sdl=True)


class GraphQLFakeError(Exception):
    """An error GitHub would report in `errors[]` with a `type` (NOT_FOUND, FORBIDDEN, UNPROCESSABLE...)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Backend(Protocol):
    def node(self, node_id: str) -> dict[str, Any] | None: ...

    def repository(self, owner: str, name: str) -> dict[str, Any] | None: ...

    def viewer(self) -> dict[str, Any]: ...

    def set_draft(self, pull_node_id: str, draft: bool) -> dict[str, Any]: ...


@dataclass
class Outcome:
    status: int
    body: dict[str, Any]
    violations: list[str] = field(default_factory=list)  # the client's fault
    gaps: list[str] = field(default_factory=list)  # valid, but the fake does not implement it


def check_document(query: str, schema: GraphQLSchema | None = None) -> tuple[DocumentNode | None, list[str]]:
    """Parse and validate a document; the problems as messages."""
    schema = schema or github_schema()
    try:
        document = parse(query)
    except GraphQLError as exc:
        return None, [f"syntax: {exc.message}"]
    return document, [_describe(e) for e in validate(schema, document)]


def _describe(error: GraphQLError) -> str:
    where = ""
    if error.locations:
        loc = error.locations[0]
        where = f" (line {loc.line}, column {loc.column})"
    return f"{error.message}{where}"


def _formatted(error: GraphQLError) -> dict[str, Any]:
    data: dict[str, Any] = dict(error.formatted)
    original = error.original_error
    if isinstance(original, GraphQLFakeError):
        data["type"] = original.kind
    return data


def _mutation_resolver(backend: Backend, draft: bool) -> Callable[..., dict[str, Any]]:
    def resolve(_info: Any, input: dict[str, Any]) -> dict[str, Any]:
        pull = backend.set_draft(str(input["pullRequestId"]), draft)
        return {"clientMutationId": input.get("clientMutationId"), "pullRequest": pull}

    return resolve


def handle(payload: Any, backend: Backend, schema: GraphQLSchema | None = None) -> Outcome:
    """Answer one `POST /graphql` body like GitHub: HTTP 200 with `data` and/or `errors`."""
    schema = schema or github_schema()
    if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
        message = "A query attribute must be specified and must be a string."
        return Outcome(400, {"message": message}, [f"request body: {message}"])
    unknown = set(payload) - {"query", "variables", "operationName"}
    variables = payload.get("variables") or {}
    problems = [f"unknown request key {k!r}" for k in sorted(unknown)]
    if not isinstance(variables, dict):
        problems.append("variables must be a JSON object")
        variables = {}
    operation_name = payload.get("operationName")
    document, errors = check_document(payload["query"], schema)
    problems.extend(errors)
    if document is None or problems:
        return Outcome(200, {"errors": [{"message": p} for p in problems]}, problems)
    operation = get_operation_ast(document, operation_name)
    if operation is None:
        message = f"operation {operation_name!r} not found or ambiguous"
        return Outcome(200, {"errors": [{"message": message}]}, [message])
    gaps = _unsupported_roots(operation)
    if gaps:
        return Outcome(200, {"errors": [{"message": g} for g in gaps]}, [], gaps)

    root = {
        "node": lambda _info, id: backend.node(str(id)),
        "nodes": lambda _info, ids: [backend.node(str(i)) for i in ids],
        "repository": lambda _info, owner, name, **_: backend.repository(owner, name),
        "viewer": lambda _info: backend.viewer(),
        "convertPullRequestToDraft": _mutation_resolver(backend, True),
        "markPullRequestReadyForReview": _mutation_resolver(backend, False),
    }
    result = execute_sync(
        schema, document, root_value=root, variable_values=variables, operation_name=operation_name
    )
    body: dict[str, Any] = {}
    violations: list[str] = []
    gap_messages: list[str] = []
    if result.errors:
        body["errors"] = [_formatted(e) for e in result.errors]
        for error in result.errors:
            if isinstance(error.original_error, GraphQLFakeError):
                continue
            if result.data is None and not error.path:
                violations.append(_describe(error))  # e.g. variables that do not coerce to their types
            else:
                gap_messages.append(
                    f"fake could not resolve {'.'.join(map(str, error.path or []))}: {error.message}"
                )
    if result.data is not None or not result.errors:
        body["data"] = result.data
    return Outcome(200, body, violations, gap_messages)


def _unsupported_roots(operation: OperationDefinitionNode) -> list[str]:
    kind = operation.operation.value
    supported = SUPPORTED_ROOT_FIELDS.get(kind, set())
    gaps = []
    for selection in operation.selection_set.selections:
        if isinstance(selection, FieldNode) and selection.name.value not in supported:
            gaps.append(f"the GitHub fake does not implement {kind} field {selection.name.value!r}")
    return gaps


class StateBackend:
    """The GraphQL view of the fake's state, limited to what the token may see."""

    def __init__(self, state: FakeState, urls: Urls, token: Token) -> None:
        self.state = state
        self.urls = urls
        self.token = token

    def _visible(self, repo: Repo) -> bool:
        return repo.full_name.lower() in self.token.repos

    def _pull(self, repo: Repo, pull: Pull) -> dict[str, Any]:
        web = f"{self.urls.web}/{repo.full_name}"
        state = "MERGED" if pull.merged else pull.state.upper()
        return {
            "__typename": "PullRequest",
            "id": pull.node_id,
            "databaseId": pull.id,
            "number": pull.number,
            "title": pull.title,
            "body": pull.body or "",
            "isDraft": pull.draft,
            "state": state,
            "closed": pull.state == "closed",
            "merged": pull.merged,
            "url": f"{web}/pull/{pull.number}",
            "permalink": f"{web}/pull/{pull.number}",
            "headRefName": pull.head_ref,
            "baseRefName": pull.base_ref,
            "headRefOid": repo.pull_head_sha(pull),
            "baseRefOid": repo.pull_base_sha(pull),
            "createdAt": pull.created_at,
            "updatedAt": pull.updated_at,
            "closedAt": pull.closed_at,
            "mergedAt": pull.merged_at,
            "repository": self._repository(repo),
        }

    def _repository(self, repo: Repo) -> dict[str, Any]:
        def pull_request(_info: Any, number: int) -> dict[str, Any] | None:
            pull = repo.pulls.get(number)
            return self._pull(repo, pull) if pull else None

        return {
            "__typename": "Repository",
            "id": repo.node_id,
            "databaseId": repo.id,
            "name": repo.name,
            "nameWithOwner": repo.full_name,
            "url": f"{self.urls.web}/{repo.full_name}",
            "isPrivate": repo.private,
            "pullRequest": pull_request,
        }

    def node(self, node_id: str) -> dict[str, Any] | None:
        found = self.state.find_pull_by_node_id(node_id)
        if found and self._visible(found[0]):
            return self._pull(*found)
        for repo in self.state.repos.values():
            if repo.node_id == node_id and self._visible(repo):
                return self._repository(repo)
        raise GraphQLFakeError("NOT_FOUND", f"Could not resolve to a node with the global id of '{node_id}'")

    def repository(self, owner: str, name: str) -> dict[str, Any] | None:
        repo = self.state.repo(owner, name)
        if repo is None or not self._visible(repo):
            raise GraphQLFakeError(
                "NOT_FOUND", f"Could not resolve to a Repository with the name '{owner}/{name}'."
            )
        return self._repository(repo)

    def viewer(self) -> dict[str, Any]:
        bot = self.state.bot
        return {"__typename": "Bot", "login": bot.login, "id": node_id("Bot", bot.id), "databaseId": bot.id}

    def set_draft(self, pull_node_id: str, draft: bool) -> dict[str, Any]:
        found = self.state.find_pull_by_node_id(pull_node_id)
        if found is None or not self._visible(found[0]):
            raise GraphQLFakeError(
                "NOT_FOUND", f"Could not resolve to a node with the global id of '{pull_node_id}'"
            )
        repo, pull = found
        rank = {"read": 1, "write": 2}
        if rank.get(self.token.permissions.get("pull_requests", ""), 0) < 2:
            raise GraphQLFakeError("FORBIDDEN", "Resource not accessible by integration")
        if draft and self.state.refuse_draft_conversion:
            raise GraphQLFakeError("FORBIDDEN", self.state.refuse_draft_conversion)
        if pull.state != "open":
            raise GraphQLFakeError("UNPROCESSABLE", "Pull request is closed")
        self.state.set_draft(repo, pull, draft, self.state.bot, via_app=True)
        return self._pull(repo, pull)
