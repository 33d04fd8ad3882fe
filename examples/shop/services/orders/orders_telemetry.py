"""OpenTelemetry wiring for the orders service: SDK tracer provider, server and client instrumentation.

Propagators are OpenTelemetry's defaults (`OTEL_PROPAGATORS`, else tracecontext + baggage), so the
incoming `traceparent` and `baggage` -- which carries loopgate's `loopgate-sandbox=<key>` member --
go out again on every outgoing call made with an instrumented client: as HTTP headers to inventory and
payments, as gRPC metadata to pricing.
"""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

SERVICE_NAME = "orders"


def setup_telemetry(app: FastAPI) -> None:
    """Install the SDK tracer provider once per process and trace every request but /healthz."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME})))
    FastAPIInstrumentor.instrument_app(app, excluded_urls="/healthz")


def instrument_client(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """Trace calls made with `client` and inject the propagation headers (whatever its transport)."""
    HTTPXClientInstrumentor.instrument_client(client)
    return client


def grpc_interceptors() -> list[Any]:
    """Interceptors for a grpc.aio channel: trace each call and inject the propagation metadata."""
    return list(aio_client_interceptors())
