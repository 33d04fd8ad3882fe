"""The `.loopgate.yml` schema, version 1.

Every model forbids unknown keys: a typo in a gate's configuration must stop the run, not be ignored
and silently loosen the gate. Durations are seconds.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bot.config import environ
from bot.config.errors import ConfigError
from bot.config.grpc import PROTOCOL_DESCRIPTION, Grpc, Protocol, grpc_defaults, inside_repository
from bot.config.health import Health
from bot.config.health import HealthCheck as HealthCheck  # re-exported: where callers import it from
from bot.config.kubernetes import (
    KubernetesRuntime,
    KubernetesService,
    KubernetesSuite,
)
from bot.config.strict import Seconds, Strict

CONFIG_FILE = ".loopgate.yml"
"""Where a repository keeps its loopgate config, at its root."""

SERVICE_NAME = r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$"
"""DNS-1123 label, short enough to prefix with a routing key and stay a valid Kubernetes name."""


def _check_env(env: dict[str, str], *, port: bool) -> dict[str, str]:
    for name, value in env.items():
        if not environ.NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a variable name (letters, digits, _; not a digit first)")
        if name.startswith(environ.OWN_PREFIX):
            raise ValueError(f"{name}: loopgate sets LOOPGATE_* itself; name your variable differently")
        if name in environ.OWN:
            raise ValueError(f"{name}: loopgate gives every job a {name} of its own")
        try:
            environ.template_names(value)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
        if not port and "{port}" in value:
            raise ValueError(f"{name}: a suite listens on no port, so {{port}} means nothing here")
    return env


def _check_pass_env(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        if not environ.PATTERN.fullmatch(pattern):
            raise ValueError(f"{pattern!r} is not a variable name or a glob of one (`*`, `?`)")
        refused = environ.refused_by(pattern)
        if refused is not None:
            raise ValueError(
                f"{pattern!r} could pass {refused}: loopgate's own settings and secrets are never passed"
            )
    return patterns


ENV_DESCRIPTION = (
    "Variables set for the process. Values may use `${NAME}` (a `LOOPGATE_*` value loopgate gives, a"
    " variable `pass_env` passes, PATH, HOME, TMPDIR) and `$$` for a literal `$`."
)
PASS_ENV_DESCRIPTION = (
    "Names or globs (`OTEL_*`) of variables passed from the environment loopgate was started in;"
    " never LOOPGATE_*, GITHUB_*, ACTIONS_*, INPUT_* or KUBECONFIG."
)


class LocalService(Strict):
    """How the local runtime builds and starts one service."""

    # Before `run`, which may leave `{port}` to one of them (validators see earlier fields only).
    env: dict[str, str] = Field(
        default_factory=dict, description=ENV_DESCRIPTION + " `{port}` is the port it listens on."
    )
    pass_env: list[str] = Field(default_factory=list, description=PASS_ENV_DESCRIPTION)
    run: str = Field(
        description="Command started with `sh -c`; `{port}` is replaced by the port to listen on."
    )
    build: str | None = Field(default=None, description="Command run once in the service's cwd before start.")
    health: Health = Field(
        default="/healthz",
        description="When the service is ready: an HTTP path answering 2xx, `{tcp: true}`,"
        ' `{path, status}`, or `{grpc: ""}` (grpc.health.v1; the default of a `grpc` service).',
    )
    cwd: str = Field(
        default=".",
        description="Working directory: a directory of the repository, relative to its root (no `..`).",
    )
    ready_timeout: Seconds = Field(default=30, description="Seconds to wait for the health check to pass.")
    build_timeout: Seconds = Field(default=600, description="Seconds the build may take.")
    after: list[str] = Field(
        default_factory=list,
        description="Services that must be healthy before this one starts in the baseline.",
    )

    @field_validator("run")
    @classmethod
    def _run_takes_port(cls, value: str, info: ValidationInfo) -> str:
        env = info.data.get("env") or {}
        if "{port}" not in value and not any("{port}" in v for v in env.values()):
            raise ValueError(
                'must contain {port}: the runtime chooses the port (or an env value must, `PORT: "{port}"`)'
            )
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, env: dict[str, str]) -> dict[str, str]:
        return _check_env(env, port=True)

    @field_validator("pass_env")
    @classmethod
    def _pass_env(cls, patterns: list[str]) -> list[str]:
        return _check_pass_env(patterns)

    @field_validator("cwd")
    @classmethod
    def _cwd_inside_repository(cls, value: str) -> str:
        return inside_repository(value, "cwd") if value else value

    @field_validator("health")
    @classmethod
    def _health_is_path(cls, value: str | HealthCheck) -> str | HealthCheck:
        if isinstance(value, str) and not value.startswith("/"):
            raise ValueError(
                'must be an HTTP path starting with /, `{tcp: true}`, `{path, status}` or `{grpc: ""}`'
            )
        return value

    @property
    def health_check(self) -> HealthCheck:
        """`health` in its one full form."""
        return HealthCheck(path=self.health) if isinstance(self.health, str) else self.health


class PostgresState(Strict):
    database: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")


class State(Strict):
    """Data a service owns; each fork gets its own copy, made at fork time (DESIGN "Data")."""

    sqlite: str | None = Field(default=None, description="SQLite file, relative to the service's state dir.")
    postgres: PostgresState | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> State:
        if (self.sqlite is None) == (self.postgres is None):
            raise ValueError("set exactly one of sqlite or postgres")
        if self.sqlite is not None and (self.sqlite.startswith("/") or ".." in self.sqlite.split("/")):
            raise ValueError("sqlite must be a relative path inside the service's state dir")
        return self


class OpenAPIDescription(Strict):
    """Where a service publishes its OpenAPI 3.0/3.1 description (JSON), asked with GET."""

    path: str = Field(default="/openapi.json", description="HTTP path of the description.")

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must be an HTTP path starting with /")
        return value


def _openapi_kind(value: Any) -> str:
    return "path" if isinstance(value, str) else "off" if isinstance(value, bool) else "description"


OpenAPI = Annotated[
    Annotated[str, Tag("path")]
    | Annotated[Literal[False], Tag("off")]
    | Annotated[OpenAPIDescription, Tag("description")],
    Discriminator(_openapi_kind),
]
"""A path string (the short form), `false`, or `{path}`."""


class Service(Strict):
    paths: list[str] = Field(
        min_length=1, description="Globs (git pathspec style, ** allowed) owned by the service."
    )
    protocol: Protocol = Field(default="http", description=PROTOCOL_DESCRIPTION)
    grpc: Grpc | None = Field(
        default=None,
        description="`protocol: grpc` services: their `.proto` contract, checked base against head when"
        " the service is forked.",
    )
    local: LocalService | None = Field(default=None, description="Required by the local runtime.")
    kubernetes: KubernetesService | None = Field(
        default=None, description="Required by the Kubernetes runtime."
    )
    state: State | None = None

    openapi: OpenAPI = Field(
        default_factory=OpenAPIDescription,
        description="Where the service publishes its OpenAPI description: `{path}` (default"
        " `/openapi.json`, FastAPI's), a path, or `false`. A forked service's base and head descriptions"
        " are compared and its safe operations probed; one that answers no description there has none.",
    )

    @model_validator(mode="before")
    @classmethod
    def _protocol_defaults(cls, data: Any) -> Any:
        return grpc_defaults(data)

    @field_validator("grpc")
    @classmethod
    def _grpc_needs_protocol(cls, value: Grpc | None, info: ValidationInfo) -> Grpc | None:
        protocol = info.data.get("protocol", "http")
        if value is not None and protocol != "grpc":
            raise ValueError(f"a `grpc:` section needs `protocol: grpc` (this service speaks {protocol})")
        return value

    @field_validator("openapi", mode="before")
    @classmethod
    def _openapi_form(cls, value: Any) -> Any:
        if value is True or (isinstance(value, str) and not value.startswith("/")):
            raise ValueError("must be an HTTP path starting with /, `false`, or `{path: ...}`")
        return value

    @property
    def openapi_path(self) -> str | None:
        """Where to GET the service's OpenAPI description; None when switched off."""
        if self.openapi is False:
            return None
        return self.openapi if isinstance(self.openapi, str) else self.openapi.path

    @property
    def local_spec(self) -> LocalService:
        """The `local:` section; Config guarantees one whenever runtime.kind is local."""
        if self.local is None:
            raise ConfigError("this service has no `local:` section, which the local runtime needs")
        return self.local


class Suite(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    run: str | None = Field(
        default=None, description="Command started with `sh -c` in the repository root (local runtime)."
    )
    kubernetes: KubernetesSuite | None = Field(default=None, description="The suite as a Job (Kubernetes).")
    timeout: Seconds = 600
    paths: list[str] = Field(
        default_factory=list, description="The suite's own files, to detect head changes."
    )
    gating: bool = Field(
        default=True, description="A failing non-gating suite is reported but does not fail."
    )
    repeat_failed: int = Field(
        default=2,
        ge=0,
        le=10,
        description=(
            "When a gating suite has failures the baseline does not share, it runs this many more times"
            " on the sandbox (after every comparison, the controls not again) and each failure reports"
            " in how many runs it failed. A failure that shows only sometimes still counts."
        ),
    )
    env: dict[str, str] = Field(default_factory=dict, description=ENV_DESCRIPTION + " Local runtime.")
    pass_env: list[str] = Field(default_factory=list, description=PASS_ENV_DESCRIPTION)

    @field_validator("env")
    @classmethod
    def _env(cls, env: dict[str, str]) -> dict[str, str]:
        return _check_env(env, port=False)

    @field_validator("pass_env")
    @classmethod
    def _pass_env(cls, patterns: list[str]) -> list[str]:
        return _check_pass_env(patterns)


SAFE_METHODS = ("GET", "HEAD")


class DiffRequest(Strict):
    """One request sent to both the baseline and the sandbox; their answers are compared."""

    service: str = Field(description="The service whose entry the request is sent to.")
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    path: str
    headers: dict[str, str] = Field(default_factory=dict)
    body: Any = Field(default=None, description="JSON body.")
    unsafe: bool = Field(
        default=False, description="Required for methods that write: they write on both sides."
    )

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with /")
        return value

    @model_validator(mode="after")
    def _unsafe_is_explicit(self) -> DiffRequest:
        if self.method not in SAFE_METHODS and not self.unsafe:
            raise ValueError(f"{self.method} writes state on both sides; mark it `unsafe: true` to replay it")
        return self


class Diff(Strict):
    """The response diff: control-vs-candidate at a forked service's listener, baseline-vs-sandbox at the
    services not forked."""

    requests: list[DiffRequest] | None = Field(default=None, min_length=1)
    from_suites: bool = Field(default=True, description="Also replay the suites' own GET/HEAD traffic.")
    ignore: list[str] = Field(default_factory=list, description="RFC 6901 pointers; `*` matches one segment.")
    headers: list[str] = Field(default_factory=list, description="Response headers that must not change.")
    max_requests: int = Field(default=50, ge=1, le=1000)
    control: bool = Field(
        default=True,
        description=(
            "Beside each fork, start controls: the base commit's code on copies of the same data, made"
            " from one snapshot. The suites run against them too; requests at a forked service are"
            " compared control-vs-candidate, values included; what differs between the two controls is"
            " noise, never a finding."
        ),
    )

    @field_validator("ignore")
    @classmethod
    def _pointers(cls, pointers: list[str]) -> list[str]:
        for pointer in pointers:
            if pointer and not pointer.startswith("/"):
                raise ValueError(f"{pointer!r} is not a JSON pointer (it must start with /)")
            if not re.fullmatch(r"(/([^~/]|~[01])*)*", pointer):
                raise ValueError(f"{pointer!r} is not a JSON pointer (`~` must be followed by 0 or 1)")
        return pointers


class Seed(Strict):
    """A command run once against a new baseline (untagged, confined like a suite) to write realistic
    data with the base code, so every fork copies real rows."""

    run: str = Field(min_length=1, description="`sh -c` command; gets LOOPGATE_<SERVICE>_URL.")
    timeout: float = Field(default=120, gt=0, le=3600)


class Verify(Strict):
    suites: list[Suite] = Field(default_factory=list)
    diff: Diff = Field(default_factory=Diff)
    seed: Seed | None = Field(default=None, description="Read from the base commit's config.")

    @field_validator("suites")
    @classmethod
    def _unique_names(cls, suites: list[Suite]) -> list[Suite]:
        seen: set[str] = set()
        for suite in suites:
            if suite.name in seen:
                raise ValueError(f"suite name {suite.name!r} is used twice")
            seen.add(suite.name)
        return suites


class Routing(Strict):
    baggage_member: str = Field(default="loopgate-sandbox", pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    header: str = Field(default="x-loopgate-sandbox", pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")


DEFAULT_AGENT_BRANCHES = ["devin/**", "codex/**", "copilot/**", "claude/**", "cursor/**", "agent/**"]


class Agents(Strict):
    """Which pushes loopgate gates, and what it does with the verdict (read from the base commit)."""

    branches: list[str] = Field(default_factory=lambda: list(DEFAULT_AGENT_BRANCHES), min_length=1)
    open_pr: bool = Field(default=True, description="Open a PR for a branch that passes and has none.")
    draft_on_failure: bool = Field(default=True, description="Turn an open PR into a draft on any non-pass.")
    pr_base: str | None = Field(
        default=None, description="Base branch for opened PRs; default branch if unset."
    )
    bases: list[str] = Field(
        default_factory=list,
        description=(
            "Branches (names or globs, `*` within one segment, `**` across) trusted as a PR's base"
            " besides the default branch. Read only from the default branch's .loopgate.yml; a PR into"
            " any other base gets verdict error."
        ),
    )


class LocalRuntime(Strict):
    kind: Literal["local"] = "local"


class Config(Strict):
    version: Literal[1]
    services: dict[str, Service] = Field(
        min_length=1, description="At least one: with no service, nothing could ever be verified."
    )
    verify: Verify = Field(default_factory=Verify)
    routing: Routing = Field(default_factory=Routing)
    agents: Agents = Field(default_factory=Agents)
    runtime: Annotated[LocalRuntime | KubernetesRuntime, Field(discriminator="kind")] = Field(
        default_factory=LocalRuntime
    )

    @model_validator(mode="after")
    def _diff_services_exist(self) -> Config:
        for request in self.verify.diff.requests or []:
            if request.service not in self.services:
                raise ValueError(
                    f"verify.diff request {request.path} names unknown service {request.service!r}"
                )
        return self

    @field_validator("services")
    @classmethod
    def _service_names(cls, services: dict[str, Service]) -> dict[str, Service]:
        for name in services:
            if not re.match(SERVICE_NAME, name):
                raise ValueError(f"service name {name!r} must be a DNS-1123 label (a-z, 0-9, '-'; ≤ 40)")
        return services
