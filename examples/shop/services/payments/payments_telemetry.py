"""OpenTelemetry wiring for the payments service: SDK tracer provider and server instrumentation.

The service makes no outgoing calls; it still joins the caller's trace (`traceparent`) and sees its
`baggage` through OpenTelemetry's default propagators (`OTEL_PROPAGATORS`, else tracecontext + baggage).
"""

from __future__ import annotations

from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

SERVICE_NAME = "payments"


def setup_telemetry(app: FastAPI) -> None:
    """Install the SDK tracer provider once per process and trace every request but /healthz."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME})))
    FastAPIInstrumentor.instrument_app(app, excluded_urls="/healthz")
