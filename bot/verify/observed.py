"""The shapes `verify` judges, declared structurally so that it depends on no runtime: any runtime's
records with these attributes will do."""

from __future__ import annotations

from typing import Protocol


class Observed(Protocol):
    """One request as the data plane saw it."""

    @property
    def service(self) -> str: ...
    @property
    def routing_key(self) -> str | None: ...
    @property
    def target(self) -> str | None: ...
    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def status(self) -> int: ...
    @property
    def traceparent(self) -> str | None: ...
    @property
    def started_at(self) -> str: ...
    @property
    def duration_ms(self) -> int: ...
    @property
    def grpc_status(self) -> int | None:
        """A gRPC call's status code (its `path` is `/package.Service/Method`); None when not gRPC."""


class RanSuite(Protocol):
    """What running a suite left behind."""

    @property
    def exit_code(self) -> int | None: ...
    @property
    def timed_out(self) -> bool: ...
    @property
    def duration_ms(self) -> int: ...
    @property
    def junit_xml(self) -> bytes | None:
        """The report's bytes: a runtime carries them back from wherever the suite ran."""

    @property
    def log_tail(self) -> str: ...
