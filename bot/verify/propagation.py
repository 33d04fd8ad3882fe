"""Propagation diagnostics: where did the sandbox's tag get lost?

A fork that is never reached is often not the fork's fault: some service on the way forwards
`traceparent` but not `baggage` (e.g. `OTEL_PROPAGATORS=tracecontext`), so its downstream calls arrive
untagged and go to the baseline. Each hop's access-log line carries the `traceparent` it received (the
data plane gives a tagged request without trace context one, and services propagate it), so the
hops of one trace can be put in order (bot/verify/requestmap.py): an untagged hop whose caller's own
request was tagged was made by a service that received the tag and did not pass it on. That service
drops the baggage, not one further up: an untagged hop whose caller was untagged already is only the
consequence of a loss earlier in the chain.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from bot.evidence import Propagation
from bot.verify.observed import Observed
from bot.verify.requestmap import hops, trace_id

__all__ = ["diagnose", "last_tagged_hop", "trace_id"]


def diagnose(routing_key: str, observed: Iterable[Observed]) -> list[Propagation]:
    drops: dict[str, set[str]] = defaultdict(set)
    for hop in hops(routing_key, observed):
        caller = hop.caller
        if hop.request.routing_key is None and caller is not None and caller.routing_key == routing_key:
            drops[caller.service].add(hop.request.service)
    return [Propagation(service=s, drops_baggage_to=sorted(to)) for s, to in sorted(drops.items())]


def last_tagged_hop(routing_key: str, observed: Iterable[Observed]) -> str | None:
    """Without trace context nothing links the hops: name the last service the tag was seen at."""
    tagged = [r for r in observed if r.routing_key == routing_key]
    return max(tagged, key=lambda r: r.started_at).service if tagged else None
