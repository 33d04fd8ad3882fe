"""Coverage: did the sandbox's own requests reach each fork, and which services did they pass? A green
run that never touched the change proves nothing, so the count of tagged requests is part of every
verdict."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from bot.verify.observed import Observed


def tagged_counts(
    routing_key: str, observed: Iterable[Observed], forked: Iterable[str] = ()
) -> dict[str, int]:
    """Requests tagged for the sandbox that each service received, for every service that received any.

    For a forked service only those its fork served count (the proof that routing reached it); for
    the others, every tagged request that passed their listener (they reach the baseline, as they should).
    Every forked service is in the result, with 0 when none reached it.
    """
    forks = set(forked)
    hits: Counter[str] = Counter()
    for request in observed:
        if request.service in forks:
            hits[request.service] += request.target == routing_key
        elif request.routing_key == routing_key:
            hits[request.service] += 1
    return {service: hits.get(service, 0) for service in sorted(set(hits) | forks)}
