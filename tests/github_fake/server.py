"""The contract fake of GitHub's REST and GraphQL APIs, served over real HTTP.

Every request is matched to an operation of the published OpenAPI subset and validated (path and query
params, JSON body); every response is validated against the schema of its status. A violation is
recorded and answered with HTTP 599 (configurable) so that the client fails loudly. See
`tests/github_fake/__init__.py` for the Python API.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import traceback
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.github_fake import gql, resources
from tests.github_fake.contract import OpenAPIContract, Operation, load_contract
from tests.github_fake.handlers import (
    DOCS,
    PERMISSIONS,
    Auth,
    Ctx,
    HttpError,
    Reply,
    RestHandlers,
    not_found,
)
from tests.github_fake.state import (
    DEFAULT_PERMISSIONS,
    App,
    CheckRun,
    FakeState,
    GitError,
    IssueComment,
    IssueEvent,
    Pull,
    Repo,
    Status,
    User,
    iso,
    now,
)

API_PREFIX = "/api/v3"
JWT_OPERATIONS = {
    "apps/get-authenticated",
    "apps/create-installation-access-token",
    "apps/get-repo-installation",
}
# What an installation token needs per operation ("a|b": either permission will do).


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    status: int
    operation_id: str | None
    auth: str | None  # "jwt" | "token" | None
    time: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Violation:
    kind: str  # request | response | unknown-operation | graphql | fake-gap
    method: str
    path: str
    operation_id: str | None
    messages: list[str]

    def __str__(self) -> str:
        op = f" [{self.operation_id}]" if self.operation_id else ""
        return f"{self.kind}: {self.method} {self.path}{op}: " + "; ".join(self.messages)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def generate_private_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def public_key_of(private_key_pem: str) -> str:
    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    fake: GitHubFake


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 60

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self._read_chunked()
        else:
            body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, out_headers, payload = self.server.fake.dispatch(self.command, self.path, headers, body)
        self.send_response(status, _REASONS.get(status))
        for name, value in out_headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


_REASONS = {599: "Contract Violation", 422: "Unprocessable Entity", 421: "Misdirected Request"}
_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]"})


def _for_this_host(host: str | None) -> bool:
    """Every client of the fake is configured with a loopback base URL; no Host at all is HTTP/1.0."""
    if host is None:
        return True
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name.lower() in _LOOPBACK_NAMES


class GitHubFake(RestHandlers):
    """A contract fake of the GitHub API over HTTP.

    Use ``with GitHubFake.running(repos={"owner/name": path}) as fake:`` and point PyGithub at
    ``fake.url`` (``base_url``; ``fake.ghes_url`` gives the same API under ``/api/v3``).
    """

    def __init__(
        self,
        repos: Mapping[str, Path | str] | None = None,
        *,
        app_id: int = 424242,
        private_key_pem: str | None = None,
        app_slug: str = "loopgate",
        app_name: str | None = None,
        app_owner: str = "loopgate-dev",
        permissions: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        violation_status: int = 599,
        token_ttl: timedelta = timedelta(hours=1),
        contract: OpenAPIContract | None = None,
    ) -> None:
        self.private_key_pem = private_key_pem or generate_private_key()
        self.host = host
        self.port = port
        self.violation_status = violation_status
        self.contract = contract or load_contract()
        owner = User(app_owner, 9_000_001, "Organization")
        app = App(
            id=app_id,
            slug=app_slug,
            name=app_name or app_slug,
            owner=owner,
            public_key_pem=public_key_of(self.private_key_pem),
            created_at="2024-01-02T03:04:05Z",
            permissions=dict(permissions or DEFAULT_PERMISSIONS),
        )
        self.state = FakeState(app)
        self.state.token_ttl = token_ttl
        for full_name, path in (repos or {}).items():
            self.state.add_repo(full_name, Path(path))
        self._requests: list[RecordedRequest] = []
        self._violations: list[Violation] = []
        self.warnings: list[str] = []
        self._server: _Server | None = None
        self._origin: str | None = None
        self._prefix = ""
        self._thread: threading.Thread | None = None
        self._handlers = self.rest_handlers()
        self._failures: dict[str, tuple[int, int]] = {}

    # -- lifecycle ------------------------------------------------------------------------------------

    @classmethod
    @contextlib.contextmanager
    def running(cls, repos: Mapping[str, Path | str] | None = None, **kwargs: Any) -> Iterator[GitHubFake]:
        fake = cls(repos, **kwargs)
        fake.start()
        try:
            yield fake
        finally:
            fake.stop()

    def bind(self) -> _Server:
        """Open the listening socket (port 0 picks a free one); `url` is valid from here on."""
        if self._server is None:
            server = _Server((self.host, self.port), _Handler)
            server.fake = self
            self.port = server.server_address[1]
            self._server = server
        return self._server

    def start(self) -> GitHubFake:
        """Serve in a background thread."""
        server = self.bind()
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="github-fake", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            if self._thread is not None:
                self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def serve_forever(self) -> None:
        """Serve in the calling thread (the CLI) until interrupted."""
        server = self.bind()
        try:
            server.serve_forever()
        finally:
            server.server_close()
            self._server = None

    # -- public API -----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The API root (PyGithub's `base_url`); html URLs use the same host."""
        return f"http://{self.host}:{self.port}"

    @property
    def ghes_url(self) -> str:
        """The same API under the GitHub Enterprise Server prefix `/api/v3`."""
        return f"{self.url}{API_PREFIX}"

    @property
    def graphql_url(self) -> str:
        return f"{self.url}/graphql"

    @property
    def app_id(self) -> int:
        return self.state.app.id

    @property
    def app_slug(self) -> str:
        return self.state.app.slug

    @property
    def bot_login(self) -> str:
        return self.state.app.bot_login

    @property
    def requests(self) -> list[RecordedRequest]:
        with self.state.lock:
            return list(self._requests)

    @property
    def violations(self) -> list[Violation]:
        with self.state.lock:
            return list(self._violations)

    def clear_log(self) -> None:
        """Forget the recorded requests, violations and warnings."""
        with self.state.lock:
            self._requests.clear()
            self._violations.clear()
            self.warnings.clear()

    def assert_no_violations(self) -> None:
        found = self.violations
        if found:
            counts: dict[str, int] = {}
            for v in found:  # a retrying client (PyGithub's GithubRetry) repeats the same one
                counts[str(v)] = counts.get(str(v), 0) + 1
            lines = "\n".join(f"  - {text}" + (f" (x{n})" if n > 1 else "") for text, n in counts.items())
            raise AssertionError(f"{len(found)} GitHub contract violation(s):\n{lines}")

    def requests_for(self, operation_id: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.operation_id == operation_id]

    @property
    def refuse_draft_conversion(self) -> str | None:
        """When set (a message), `convertPullRequestToDraft` fails with a FORBIDDEN GraphQL error."""
        return self.state.refuse_draft_conversion

    @refuse_draft_conversion.setter
    def refuse_draft_conversion(self, value: str | bool | None) -> None:
        message = "Resource not accessible by integration" if value is True else value
        self.state.refuse_draft_conversion = message or None

    def fail_next(self, operation_id: str, times: int, status: int = 503) -> None:
        """Answer the next `times` requests of `operation_id` with `status` and change nothing: GitHub
        having a bad moment, for testing what retries."""
        with self.state.lock:
            self._failures[operation_id] = (times, status)

    def installation_id(self, repo: str) -> int:
        with self.state.lock:
            return self.state.installation_for(repo).id

    def app_jwt(self, *, expires_in: int = 540, issued_at_offset: int = -60) -> str:
        """An App JWT signed with the App's private key, like PyGithub's `AppAuth` makes."""
        moment = int(time.time())
        claims = {"iat": moment + issued_at_offset, "exp": moment + expires_in, "iss": str(self.app_id)}
        return jwt.encode(claims, self.private_key_pem, algorithm="RS256")

    def installation_token(
        self, repo: str | None = None, permissions: Mapping[str, str] | None = None
    ) -> str:
        """Mint an installation token directly (for raw HTTP calls in tests)."""
        with self.state.lock:
            inst = (
                self.state.installation_for(repo) if repo else next(iter(self.state.installations.values()))
            )
            return self.state.issue_token(inst, dict(permissions) if permissions else None, None).token

    def add_repo(self, full_name: str, path: Path | str, *, private: bool = False) -> Repo:
        with self.state.lock:
            return self.state.add_repo(full_name, Path(path), private=private)

    def set_default_branch(self, repo: str, branch: str) -> None:
        with self.state.lock:
            self.state.require_repo(repo).default_branch = branch

    def set_clone_url(self, repo: str, clone_url: str) -> None:
        with self.state.lock:
            self.state.require_repo(repo).clone_url = clone_url

    def open_pull(
        self,
        repo: str,
        head: str,
        base: str | None = None,
        *,
        title: str | None = None,
        body: str | None = None,
        draft: bool = False,
        user: str = "octocat",
    ) -> Pull:
        """Seed an open pull request (as a human opened it)."""
        with self.state.lock:
            r = self.state.require_repo(repo)
            return self._new_pull(
                r,
                head,
                base or r.effective_default_branch(),
                title or head,
                body,
                draft,
                self.state.user(user),
            )

    def pull(self, repo: str, number: int) -> Pull:
        with self.state.lock:
            return self.state.require_repo(repo).pulls[number]

    def pulls(self, repo: str) -> list[Pull]:
        with self.state.lock:
            return sorted(self.state.require_repo(repo).pulls.values(), key=lambda p: p.number)

    def close_pull(self, repo: str, number: int, *, merged: bool = False) -> Pull:
        with self.state.lock:
            r = self.state.require_repo(repo)
            pull = r.pulls[number]
            r.pull_head_sha(pull)
            r.pull_base_sha(pull)
            pull.state = "closed"
            stamp = iso(now()) or pull.updated_at
            pull.closed_at = pull.updated_at = stamp
            if merged:
                pull.merged = True
                pull.merged_at = pull.closed_at
            return pull

    def set_draft(self, repo: str, number: int, draft: bool, *, user: str = "octocat") -> None:
        """Make a pull request a draft or ready (as a person does in the UI); GitHub records who did."""
        with self.state.lock:
            r = self.state.require_repo(repo)
            self.state.set_draft(r, r.pulls[number], draft, self.state.user(user), via_app=False)

    def issue_events(self, repo: str, number: int) -> list[IssueEvent]:
        with self.state.lock:
            return [e for e in self.state.require_repo(repo).events if e.issue_number == number]

    def retarget(self, repo: str, number: int, base: str) -> str:
        """Change a pull request's base (as a person does in the UI); returns the base it had."""
        with self.state.lock:
            r = self.state.require_repo(repo)
            if r.git.branch_sha(base) is None:
                raise ValueError(f"no branch {base!r} in {repo}")
            pull = r.pulls[number]
            previous, pull.base_ref = pull.base_ref, base
            return previous

    def add_comment(self, repo: str, number: int, body: str, *, user: str = "octocat") -> IssueComment:
        """Seed a comment on a pull request (as a human wrote it)."""
        with self.state.lock:
            r = self.state.require_repo(repo)
            return self._new_comment(r, number, body, self.state.user(user), via_app=False)

    def delete_comment(self, repo: str, comment_id: int) -> None:
        with self.state.lock:
            del self.state.require_repo(repo).comments[comment_id]

    def comments(self, repo: str, number: int | None = None) -> list[IssueComment]:
        with self.state.lock:
            found = self.state.require_repo(repo).comments.values()
            return sorted(
                (c for c in found if number is None or c.issue_number == number), key=lambda c: c.id
            )

    def check_runs(self, repo: str, head_sha: str | None = None, name: str | None = None) -> list[CheckRun]:
        with self.state.lock:
            runs = self.state.require_repo(repo).check_runs.values()
            return sorted(
                (
                    r
                    for r in runs
                    if (head_sha is None or r.head_sha == head_sha) and (name is None or r.name == name)
                ),
                key=lambda r: r.id,
            )

    def statuses(self, repo: str, sha: str | None = None) -> list[Status]:
        with self.state.lock:
            return [s for s in self.state.require_repo(repo).statuses if sha is None or s.sha == sha]

    def wait_until(
        self, predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05
    ) -> None:
        """Poll `predicate` until it holds (for asynchronous clients); AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(interval)
        raise AssertionError(f"condition not met within {timeout}s; violations: {self.violations}")

    # -- dispatch -------------------------------------------------------------------------------------

    @property
    def urls(self) -> resources.Urls:
        """Where the current request's response points: the host the client used (its `Host` header)
        and, for a client on the GHES-style base URL, the `/api/v3` prefix (PyGithub refuses to follow a
        `url` field outside its base URL)."""
        origin = self._origin or self.url
        return resources.Urls(api=origin + self._prefix, web=origin)

    def dispatch(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        """Answer one request: status, headers and body bytes."""
        parts = urllib.parse.urlsplit(target)
        raw_path = parts.path
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        if raw_path.startswith("/_fake/") or raw_path == "/_fake":
            return self._fake_endpoint(method, raw_path)
        if not _for_this_host(headers.get("host")):
            # Not a GitHub client: a port scan on the shared loopback (the hostile probe of the
            # confinement tests sends `Host: x` to every listening port). A server answers a host it
            # does not serve with 421; nothing is recorded, no contract was involved.
            return 421, {"content-type": "text/plain"}, b"misdirected request\n"
        with self.state.lock:
            host = headers.get("host")
            self._origin = f"http://{host}" if host else None
            self._prefix = API_PREFIX if raw_path.startswith(API_PREFIX + "/") else ""
            try:
                reply, op_id, auth_kind = self._dispatch_api(method, raw_path, query, headers, body)
            except Exception:  # a bug of the fake: say so loudly instead of dropping the connection
                detail = traceback.format_exc(limit=6)
                reply = self._violation("fake-error", method, raw_path, None, [detail])
                reply.status = 500
                op_id, auth_kind = None, None
            try:
                parsed_body: Any = json.loads(body) if body else None
            except ValueError:
                parsed_body = body.decode(errors="replace")
            self._requests.append(
                RecordedRequest(method, raw_path, query, parsed_body, reply.status, op_id, auth_kind)
            )
        return self._encode(reply)

    def _violation(self, kind: str, method: str, path: str, op_id: str | None, messages: list[str]) -> Reply:
        violation = Violation(kind, method, path, op_id, messages)
        self._violations.append(violation)
        return Reply(
            self.violation_status,
            {"message": f"GitHub contract violation: {violation}", "documentation_url": DOCS},
        )

    def _dispatch_api(
        self, method: str, raw_path: str, query: dict[str, list[str]], headers: Mapping[str, str], body: bytes
    ) -> tuple[Reply, str | None, str | None]:
        path = raw_path[len(API_PREFIX) :] if raw_path.startswith(API_PREFIX + "/") else raw_path
        if path in ("/graphql", "/api/graphql"):
            if method != "POST":
                return self._violation("graphql", method, raw_path, None, ["GraphQL takes POST"]), None, None
            return self._graphql(raw_path, headers, body)
        matched = self.contract.match(method, path)
        if matched is None:
            message = f"{method} {path} is not an operation of the contract (subset.json)"
            return self._violation("unknown-operation", method, raw_path, None, [message]), None, None
        op, path_params = matched
        problems, values, parsed = self.contract.validate_request(
            op, path_params, query, body, headers.get("content-type")
        )
        if problems:
            return (
                self._violation("request", method, raw_path, op.operation_id, problems),
                op.operation_id,
                None,
            )
        auth, failure = self._authenticate(op, headers)
        auth_kind = auth.kind if auth else None
        left, status = self._failures.get(op.operation_id, (0, 0))
        if failure is None and left > 0:
            self._failures[op.operation_id] = (left - 1, status)
            return (
                Reply(status, {"message": "injected failure", "documentation_url": DOCS}),
                op.operation_id,
                None,
            )
        if failure is not None:
            reply = failure
        else:
            ctx = Ctx(op, values, parsed, auth, raw_path, query, headers)
            try:
                if "owner" in values and "repo" in values:
                    ctx.repo = self._repo_for(ctx)
                    self._check_permission(ctx)
                reply = self._handlers[op.operation_id](ctx)
            except HttpError as exc:
                reply = Reply(exc.status, exc.body)
            except GitError as exc:
                reply = Reply(422, resources.validation_error(f"git: {exc}"))
        problems = self.contract.validate_response(op, reply.status, reply.body, reply.body is not None)
        if problems:
            return (
                self._violation("response", method, raw_path, op.operation_id, problems),
                op.operation_id,
                auth_kind,
            )
        return reply, op.operation_id, auth_kind

    def _encode(self, reply: Reply) -> tuple[int, dict[str, str], bytes]:
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "X-GitHub-Media-Type": "github.v3; format=json",
            "X-GitHub-Request-Id": uuid.uuid4().hex[:16].upper(),
            "X-RateLimit-Limit": "5000",
            "X-RateLimit-Remaining": "4999",
            "X-RateLimit-Reset": str(int(time.time()) + 3600),
            "X-RateLimit-Used": "1",
            "X-RateLimit-Resource": "core",
        }
        headers.update(reply.headers)
        payload = b"" if reply.body is None else json.dumps(reply.body).encode()
        return reply.status, headers, payload

    def _fake_endpoint(self, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        if method == "GET" and path == "/_fake/requests":
            body: Any = [r.to_json() for r in self.requests]
        elif method == "GET" and path == "/_fake/violations":
            body = [v.to_json() for v in self.violations]
        elif method == "GET" and path == "/_fake/state":
            body = self.state.snapshot()
        elif method in ("POST", "DELETE") and path == "/_fake/log":
            self.clear_log()
            body = {"cleared": True}
        else:
            return self._encode(Reply(404, {"message": f"no fake endpoint {method} {path}"}))
        return self._encode(Reply(200, body))

    # -- auth -----------------------------------------------------------------------------------------

    def _credentials(self, headers: Mapping[str, str]) -> tuple[str, str] | None:
        value = headers.get("authorization", "").strip()
        if not value:
            return None
        scheme, _, credential = value.partition(" ")
        return scheme.lower(), credential.strip()

    def _authenticate(self, op: Operation, headers: Mapping[str, str]) -> tuple[Auth | None, Reply | None]:
        credentials = self._credentials(headers)
        if credentials is None:
            return None, Reply(401, resources.basic_error("Requires authentication", 401, DOCS))
        scheme, credential = credentials
        looks_like_jwt = credential.count(".") == 2
        if op.operation_id in JWT_OPERATIONS:
            if scheme != "bearer" or not looks_like_jwt:
                message = "A JSON web token could not be decoded"
                return None, Reply(401, resources.basic_error(message, 401, DOCS))
            error = self._verify_jwt(credential)
            if error:
                return None, Reply(401, resources.basic_error(error, 401, DOCS))
            return Auth("jwt"), None
        return self._token_auth(scheme, credential, looks_like_jwt)

    def _token_auth(
        self, scheme: str, credential: str, looks_like_jwt: bool
    ) -> tuple[Auth | None, Reply | None]:
        if scheme not in ("token", "bearer"):
            return None, Reply(401, resources.basic_error("Bad credentials", 401, DOCS))
        if looks_like_jwt:
            message = "A JSON web token cannot be used here: use an installation access token"
            return None, Reply(401, resources.basic_error(message, 401, DOCS))
        token = self.state.tokens.get(credential)
        if token is None or token.expired:
            return None, Reply(401, resources.basic_error("Bad credentials", 401, DOCS))
        return Auth("token", token), None

    def _verify_jwt(self, token: str) -> str | None:
        try:
            claims = jwt.decode(
                token,
                self.state.app.public_key_pem,
                algorithms=["RS256"],
                options={"require": ["exp", "iat", "iss"], "verify_iss": False},
                leeway=30,
            )
        except jwt.ExpiredSignatureError:
            return (
                "'Expiration time' claim ('exp') must be a numeric value representing the future time at "
                "which the assertion expires"
            )
        except jwt.PyJWTError as exc:
            return f"A JSON web token could not be decoded ({exc})"
        if str(claims.get("iss")) != str(self.state.app.id):
            return f"'Issuer' claim ('iss') {claims.get('iss')!r} is not the App id {self.state.app.id}"
        if int(claims["exp"]) > time.time() + 600 + 30:
            return "'Expiration time' claim ('exp') is too far in the future"
        if int(claims["iat"]) > time.time() + 60:
            return "'Issued at' claim ('iat') must be an Integer representing the past time of issue"
        return None

    def _repo_for(self, ctx: Ctx) -> Repo:
        repo = self.state.repo(str(ctx.params["owner"]), str(ctx.params["repo"]))
        if repo is None:
            raise not_found()
        if ctx.auth and ctx.auth.token and repo.full_name.lower() not in ctx.auth.token.repos:
            raise not_found()
        return repo

    def _check_permission(self, ctx: Ctx) -> None:
        need = PERMISSIONS.get(ctx.op.operation_id)
        if need is None or ctx.auth is None or ctx.auth.token is None:
            return
        names, level = need
        granted = ctx.auth.token.permissions
        rank = {"read": 1, "write": 2, "admin": 3}
        if not any(rank.get(granted.get(n, ""), 0) >= rank[level] for n in names.split("|")):
            raise HttpError(403, resources.basic_error("Resource not accessible by integration", 403, DOCS))

    # -- GraphQL --------------------------------------------------------------------------------------

    def _graphql(
        self, raw_path: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[Reply, str | None, str | None]:
        op_id = "graphql"
        credentials = self._credentials(headers)
        if credentials is None:
            message = "This endpoint requires you to be authenticated."
            return (
                Reply(401, {"message": message, "documentation_url": "https://docs.github.com/graphql"}),
                op_id,
                None,
            )
        auth, failure = self._token_auth(credentials[0], credentials[1], credentials[1].count(".") == 2)
        if failure is not None:
            return failure, op_id, None
        assert auth is not None and auth.token is not None
        try:
            payload = json.loads(body) if body else None
        except ValueError as exc:
            return (
                self._violation("graphql", "POST", raw_path, op_id, [f"body is not JSON: {exc}"]),
                op_id,
                "token",
            )
        outcome = gql.handle(payload, gql.StateBackend(self.state, self.urls, auth.token))
        if outcome.violations:
            return self._violation("graphql", "POST", raw_path, op_id, outcome.violations), op_id, "token"
        if outcome.gaps:
            return self._violation("fake-gap", "POST", raw_path, op_id, outcome.gaps), op_id, "token"
        return Reply(outcome.status, outcome.body), op_id, "token"
