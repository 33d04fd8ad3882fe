"""What a service speaks (`protocol`) and, for gRPC services, where its contract lives (`grpc:`).

Kept apart from `schema` so the HTTP-only majority of the schema stays readable. A gRPC service differs
from an HTTP one in three ways loopgate must know before anything runs: its upstream connection is
HTTP/2 (Envoy would speak HTTP/1.1 to it otherwise, which a gRPC server refuses), it has no HTTP health
route (readiness is the standard `grpc.health.v1.Health/Check`, or a TCP connect), and its contract is
`.proto` files in the repository rather than an OpenAPI document it serves.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from bot.config.strict import Strict

Protocol = Literal["http", "http2", "grpc"]
"""`http`: HTTP/1.1 (or h2c) in, HTTP/1.1 upstream. `http2`: HTTP/2 (h2c) upstream. `grpc`: HTTP/2
upstream, gRPC health checks, `.proto` contracts."""

PROTOCOL_DESCRIPTION = (
    "What the service speaks: `http` (HTTP/1.1, the default), `http2` (h2c: Envoy speaks HTTP/2 to it) or"
    " `grpc` (HTTP/2, health through `grpc.health.v1`, contract from `grpc.protos`). Every listener"
    " accepts HTTP/1.1 and h2c whatever the protocol."
)

MAX_HEALTH_SERVICE = 200
"""A gRPC health service name is a fully qualified service name; far past this it is not one."""


def check_health_service(name: str) -> str:
    """The service name asked in `HealthCheckRequest.service` ("" asks about the server as a whole)."""
    if len(name) > MAX_HEALTH_SERVICE:
        raise ValueError(f"a gRPC health service name is at most {MAX_HEALTH_SERVICE} characters")
    if any(not char.isprintable() or char.isspace() for char in name):
        raise ValueError("a gRPC health service name has no spaces or control characters")
    return name


def inside_repository(value: str, what: str) -> str:
    """A path read from the checkout of the commit under test (a service's cwd, a proto): one outside
    it would read, or run, other code."""
    if not value:
        raise ValueError(f"an empty {what}")
    if value.startswith("/"):
        raise ValueError(f"{value!r} must be relative to the repository root, not absolute")
    if "\\" in value or "\0" in value:
        raise ValueError(f"{value!r} must not contain a backslash or NUL")
    if ".." in value.split("/"):
        raise ValueError(f"{value!r} must stay inside the repository (no '..')")
    return value


class Grpc(Strict):
    """A gRPC service's contract: its `.proto` files (or prebuilt descriptor sets), compared base
    against head by the wire-compatibility rules whenever the service is forked."""

    protos: list[str] = Field(
        min_length=1,
        description="Repository paths or globs (`**` allowed) of the service's `.proto` files, or"
        " prebuilt `FileDescriptorSet`s (`.binpb`/`.pb`).",
    )
    import_paths: list[str] = Field(
        default_factory=lambda: ["."],
        min_length=1,
        description="protoc's `-I` directories, relative to the repository root.",
    )
    breaking: Literal["wire", "wire_json"] = Field(
        default="wire",
        description="Which changes break: `wire` (buf's WIRE category: what breaks the binary encoding) or"
        " `wire_json` (also what breaks the JSON mapping, e.g. a renamed field).",
    )

    @field_validator("protos")
    @classmethod
    def _protos(cls, values: list[str]) -> list[str]:
        return [inside_repository(value, "proto path") for value in values]

    @field_validator("import_paths")
    @classmethod
    def _import_paths(cls, values: list[str]) -> list[str]:
        return [inside_repository(value, "import path") for value in values]


def grpc_defaults(data: Any) -> Any:
    """A gRPC service's defaults before validation: its health is `{grpc: ""}` unless given (an HTTP
    GET of `/healthz` never succeeds against a gRPC server) and it publishes no OpenAPI description
    unless told (asking for one would only add a note to every run)."""
    if not isinstance(data, dict) or data.get("protocol") != "grpc":
        return data
    data = dict(data)
    local = data.get("local")
    if isinstance(local, dict) and "health" not in local:
        data["local"] = {**local, "health": {"grpc": ""}}
    data.setdefault("openapi", False)
    return data


def health_fits(protocol: str, *, grpc_check: bool, path_check: bool) -> str | None:
    """Why a health check cannot work for a service speaking `protocol`; None when it can."""
    if grpc_check and protocol != "grpc":
        return f"a gRPC health check needs `protocol: grpc` (this service speaks {protocol})"
    if path_check and protocol == "grpc":
        return 'a gRPC server answers no HTTP GET: use `{grpc: ""}` (grpc.health.v1) or `{tcp: true}`'
    return None
