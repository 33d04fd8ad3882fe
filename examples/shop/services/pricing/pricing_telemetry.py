"""OpenTelemetry wiring for the pricing service: SDK tracer provider and gRPC server instrumentation.

pricing makes no outgoing calls; it still joins the caller's trace and sees its `baggage` (gRPC metadata
are HTTP/2 headers, read by OpenTelemetry's default propagators: `OTEL_PROPAGATORS`, else tracecontext +
baggage). Health checks are not traced, as /healthz is not in the HTTP services.
"""

from __future__ import annotations

import grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import filters, server_interceptor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

SERVICE_NAME = "pricing"


def server_interceptors() -> list[grpc.ServerInterceptor]:
    """The interceptors a pricing server is built with; installs the tracer provider once per process."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME})))
    return [server_interceptor(filter_=filters.negate(filters.health_check()))]
