"""Fork coverage: did the sandbox's own requests reach each fork? A green run that never touched the
change proves nothing, so the count of tagged requests per fork is part of every verdict."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from bot.verify.observed import Observed


def fork_coverage(routing_key: str, forked: Iterable[str], observed: Iterable[Observed]) -> dict[str, int]:
    hits = Counter(r.service for r in observed if r.target == routing_key)
    return {service: hits.get(service, 0) for service in forked}
