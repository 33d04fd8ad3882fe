"""When a service is ready: the `health:` forms of `services.*.local`.

Apart from `schema` because the forms grew with gRPC: a path (the short form), `{path, status}`,
`{tcp: true}`, and `{grpc: NAME}` for the standard gRPC health checking protocol.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Discriminator, Field, Tag, model_validator

from bot.config.grpc import check_health_service
from bot.config.strict import Strict

__all__ = ["Health", "HealthCheck"]


class HealthCheck(Strict):
    """When a service is ready: its port accepts a connection (`tcp: true`), an HTTP path answers, or
    (a gRPC service) the standard health service says SERVING (`grpc: NAME`)."""

    tcp: bool | None = Field(default=None, description="`true`: ready once the port accepts a connection.")
    path: str | None = Field(default=None, description="HTTP path asked with GET.")
    grpc: str | None = Field(
        default=None,
        description="gRPC services: ready once `grpc.health.v1.Health/Check` for this service name answers"
        ' SERVING (`""`: the server as a whole).',
    )
    status: int | list[int] | None = Field(
        default=None, description="The status (or statuses) that mean ready; default any 2xx."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> HealthCheck:
        if self.tcp is False:
            raise ValueError("`tcp: false` checks nothing: give `tcp: true`, a `path` or `grpc`")
        if [self.tcp, self.path, self.grpc].count(None) != 2:
            raise ValueError("set exactly one of `tcp: true`, `path` or `grpc`")
        if self.grpc is not None:
            check_health_service(self.grpc)
        if self.path is not None and not self.path.startswith("/"):
            raise ValueError("path must be an HTTP path starting with /")
        if self.status is not None and self.path is None:
            raise ValueError("`status` needs a `path`: a TCP check has no status")
        for code in self.statuses or ():
            if not 100 <= code <= 599:
                raise ValueError(f"status {code} is not an HTTP status (100-599)")
        return self

    @property
    def statuses(self) -> tuple[int, ...] | None:
        """The accepted statuses; None means any 2xx."""
        if self.status is None:
            return None
        return (self.status,) if isinstance(self.status, int) else tuple(self.status)

    def describe(self) -> str:
        if self.tcp:
            return "tcp: the port accepts a connection"
        if self.grpc is not None:
            return f"grpc.health.v1.Health/Check({self.grpc!r}) answers SERVING"
        accepted = "2xx" if self.statuses is None else " or ".join(str(code) for code in self.statuses)
        return f"GET {self.path} answers {accepted}"


def _health_kind(value: Any) -> str:
    return "path" if isinstance(value, str) else "check"


Health = Annotated[
    Annotated[str, Tag("path")] | Annotated[HealthCheck, Tag("check")], Discriminator(_health_kind)
]
"""A path string (the short form) or a HealthCheck; the tag keeps errors to the form that was written."""
