"""The routing contract's one parsing rule, shared by every runtime: which sandbox a W3C `baggage`
header names (DESIGN "Routing")."""

from __future__ import annotations

import re


def baggage_member(baggage: str | None, member: str) -> str | None:
    """Value of the W3C baggage member `member` in a `baggage` header value, or None.

    An exact key match (`loopgate-sandbox` never matches `loopgate-sandbox2`), ignoring optional
    whitespace and `;properties`, as the data plane's routes match it; the first such member wins.
    """
    if not baggage:
        return None
    for item in baggage.split(","):
        key, sep, rest = item.partition("=")
        if not sep or key.strip(" \t") != member:
            continue
        value = re.split(r";|%3[Bb]", rest, maxsplit=1)[0].strip(" \t")
        return value or None
    return None
