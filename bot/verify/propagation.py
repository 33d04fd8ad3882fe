"""Propagation diagnostics: where did the sandbox's tag get lost?

A fork that is never reached is often not the fork's fault: some service on the way forwards
`traceparent` but not `baggage` (e.g. `OTEL_PROPAGATORS=tracecontext`), so its downstream calls arrive
untagged and go to the baseline. In one trace, an untagged request whose time lies inside a tagged
request at another service was made by that service while it handled the tagged one: that service
dropped the baggage.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.evidence import Propagation
from bot.verify.observed import Observed


@dataclass(frozen=True)
class _Span:
    request: Observed
    start: datetime
    end: datetime


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), None when malformed."""
    if not traceparent:
        return None
    parts = traceparent.strip().split("-")
    if len(parts) != 4 or len(parts[1]) != 32 or parts[1] == "0" * 32:
        return None
    return parts[1].lower()


def _span(request: Observed) -> _Span | None:
    try:
        start = datetime.fromisoformat(request.started_at.replace("Z", "+00:00"))
    except ValueError:
        return None
    # Timestamps have millisecond precision: widen by one so a call made in the same millisecond counts.
    return _Span(request, start, start + timedelta(milliseconds=request.duration_ms + 1))


def diagnose(routing_key: str, observed: Iterable[Observed]) -> list[Propagation]:
    traces: dict[str, list[_Span]] = defaultdict(list)
    for request in observed:
        trace, span = trace_id(request.traceparent), _span(request)
        if trace is not None and span is not None:
            traces[trace].append(span)
    drops: dict[str, set[str]] = defaultdict(set)
    for spans in traces.values():
        tagged = [s for s in spans if s.request.routing_key == routing_key]
        for lost in (s for s in spans if s.request.routing_key is None):
            callers = [
                t
                for t in tagged
                if t.request.service != lost.request.service and t.start <= lost.start <= t.end
            ]
            if callers:
                caller = max(callers, key=lambda t: t.start)  # the innermost enclosing request
                drops[caller.request.service].add(lost.request.service)
    return [Propagation(service=s, drops_baggage_to=sorted(to)) for s, to in sorted(drops.items())]


def last_tagged_hop(routing_key: str, observed: Iterable[Observed]) -> str | None:
    """Without trace context nothing links the hops: name the last service the tag was seen at."""
    tagged = [r for r in observed if r.routing_key == routing_key]
    return max(tagged, key=lambda r: r.started_at).service if tagged else None
