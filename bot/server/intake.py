"""From the raw request to a payload: size, headers, UTF-8, JSON and its depth, each refused with a
reason instead of an exception an unauthenticated or careless sender could turn into a 500.

Nothing here touches the database: what is refused before the signature is checked is never stored.
"""

from __future__ import annotations

import json
import re
from typing import Any

from bot.github.events import MAX_DEPTH, depth_within

MAX_BODY = 25 * 1024 * 1024
# GitHub's delivery ids are UUIDs and event names snake_case; both are stored in 64-character columns.
DELIVERY_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
EVENT_NAME = re.compile(r"[a-z_]{1,64}")


class Refused(Exception):
    """The request cannot be acted on; `status` is the HTTP answer, the message its reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def declared_too_large(content_length: str | None) -> bool:
    """Content-Length over the limit. `isdigit` alone admits '²', which `int` refuses."""
    if content_length is None:
        return False
    digits = content_length.strip()
    return digits.isascii() and digits.isdigit() and int(digits) > MAX_BODY


def delivery_headers(event: str | None, delivery: str | None) -> tuple[str, str]:
    """(event, delivery id), both fit to store, or 400."""
    if not event or not delivery:
        raise Refused(400, "X-GitHub-Event and X-GitHub-Delivery are required")
    if not EVENT_NAME.fullmatch(event) or not DELIVERY_ID.fullmatch(delivery):
        raise Refused(400, "X-GitHub-Event or X-GitHub-Delivery is not a GitHub event name or delivery id")
    return event, delivery


def decode(body: bytes) -> dict[str, Any]:
    """The JSON object in `body`, or `Refused(400)`: not UTF-8, not JSON, not an object, or nested
    deeper than `MAX_DEPTH`. Python's parser recurses and raises RecursionError near 1,000 levels;
    that is caught, and anything shallower is measured without recursion."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refused(400, f"body is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        payload = json.loads(text)
    except RecursionError:
        raise Refused(400, f"JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise Refused(400, f"malformed JSON: {str(exc)[:200]}") from None
    if not isinstance(payload, dict):
        raise Refused(400, "malformed JSON: the payload is not an object")
    if not depth_within(payload):
        raise Refused(400, f"JSON nested deeper than {MAX_DEPTH} levels")
    return payload


def storable_text(body: bytes) -> str:
    """The body as text a database column holds: undecodable bytes and NUL replaced."""
    return body.decode("utf-8", "replace").replace("\x00", "\ufffd")
