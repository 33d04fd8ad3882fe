"""The observed request map: who called whom with the sandbox's traffic, and where its tag was lost.

The data plane logs one line per hop (service, tag, `traceparent`, start, duration) but not who made
the call: a service's outbound call carries a new span id that no log line names. Within one trace,
though, a call is made while its caller handles the request that led to it, so the caller of a hop is
the service whose request in the same trace *precedes* it: it started no later (a tie goes to the
longer request) and was still running when the hop started. Of several, the innermost (latest start)
is the caller; one that also lasted until the hop ended is preferred, since a caller outlasts its call
(a parallel sibling call that merely overlapped the hop's start does not). A hop that nothing
precedes is the entry: a suite's own request (drawn as `client`).

Only the sandbox's traces are mapped: those with at least one request tagged with its routing key.
A request tagged for another sandbox (a control, another run) is not part of this map; an untagged one
inside the sandbox's trace is the sandbox's traffic that lost its tag. Requests without trace context
cannot be placed (the local data plane gives every tagged request one, so that is rare) and are left out
of the map; they still count in `tagged_counts`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.evidence.model import RequestEdge
from bot.verify.observed import Observed

# Access-log times have millisecond precision and durations are whole milliseconds, both cut rather
# than rounded: a hop may seem to start or end up to that much outside the request that made it.
_SLACK = timedelta(milliseconds=2)


@dataclass(frozen=True)
class Hop:
    """One request of the sandbox's traffic and the request during which it was made (None: the entry)."""

    request: Observed
    caller: Observed | None


@dataclass(frozen=True)
class _Timed:
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
    try:
        int(parts[1], 16)
    except ValueError:
        return None
    return parts[1].lower()


def _timed(request: Observed) -> _Timed | None:
    try:
        start = datetime.fromisoformat(request.started_at.replace("Z", "+00:00"))
    except ValueError:
        return None
    return _Timed(request, start, start + timedelta(milliseconds=max(request.duration_ms, 0)))


def _precedes(before: _Timed, hop: _Timed) -> bool:
    """Whether `before` could have made `hop`: it started first (or at once and is longer) and was running."""
    if before.request.service == hop.request.service:
        return False  # a second request at the same service is a retry or a sibling, not a caller
    started_first = (before.start, -before.request.duration_ms) < (hop.start, -hop.request.duration_ms)
    return started_first and hop.start <= before.end + _SLACK


def _callers(trace: list[_Timed]) -> list[tuple[datetime, Hop]]:
    """Each request of one trace with its caller. The trace is scanned in start order, and only back as
    far as the longest request could reach: a suite that sends everything in one trace stays linear."""
    trace = sorted(trace, key=lambda t: (t.start, -t.request.duration_ms))
    reach = max(t.end - t.start for t in trace) + _SLACK
    found: list[tuple[datetime, Hop]] = []
    for index, hop in enumerate(trace):
        candidates = []
        for before in reversed(trace[:index]):
            if before.start < hop.start - reach:
                break
            if _precedes(before, hop):
                candidates.append(before)
        best = max(
            candidates,
            key=lambda t: (hop.end <= t.end + _SLACK, t.start, -t.request.duration_ms),
            default=None,
        )
        found.append((hop.start, Hop(hop.request, best.request if best is not None else None)))
    return found


def hops(routing_key: str, observed: Iterable[Observed]) -> list[Hop]:
    """Every request of the sandbox's traces, with its caller, in the order of their start."""
    traces: dict[str, list[_Timed]] = defaultdict(list)
    for request in observed:
        if request.routing_key not in (routing_key, None):
            continue
        trace_of, timed = trace_id(request.traceparent), _timed(request)
        if trace_of is not None and timed is not None:
            traces[trace_of].append(timed)
    found: list[tuple[datetime, Hop]] = []
    for trace in traces.values():
        if not any(t.request.routing_key == routing_key for t in trace):
            continue  # baseline traffic: nothing of the sandbox's passed here
        found += _callers(trace)
    return [hop for _, hop in sorted(found, key=lambda pair: pair[0])]


def request_map(routing_key: str, observed: Iterable[Observed]) -> list[RequestEdge]:
    """The edges of the sandbox's traffic, caller to callee, with tagged and untagged counts; an edge on
    which a tagged request's call went out untagged is where the tag was lost."""
    tagged: Counter[tuple[str | None, str]] = Counter()
    untagged: Counter[tuple[str | None, str]] = Counter()
    lost: set[tuple[str | None, str]] = set()
    for hop in hops(routing_key, observed):
        edge = (hop.caller.service if hop.caller is not None else None, hop.request.service)
        if hop.request.routing_key == routing_key:
            tagged[edge] += 1
        else:
            untagged[edge] += 1
            if hop.caller is not None and hop.caller.routing_key == routing_key:
                lost.add(edge)
    edges = sorted(set(tagged) | set(untagged), key=lambda e: (e[0] is not None, e[0] or "", e[1]))
    return [
        RequestEdge(source=s, target=t, tagged=tagged[s, t], untagged=untagged[s, t], lost_tag=(s, t) in lost)
        for s, t in edges
    ]
