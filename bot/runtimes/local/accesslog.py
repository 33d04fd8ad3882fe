"""Envoy's JSON access log read back as :class:`LoggedRequest` records.

The access log is the evidence that a fork really received tagged traffic (``observed_requests``),
so it is read incrementally (by byte offset) while Envoy keeps appending to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.runtimes.baggage import baggage_member as member_value
from bot.runtimes.local.xds import BASELINE, ROUTING_KEY_RE
from bot.runtimes.protocol import ObservedRequest


@dataclass(frozen=True)
class LoggedRequest(ObservedRequest):
    """One request as one Envoy listener logged it: what the Runtime protocol reports, plus the raw
    baggage and Envoy's response flags, which only the data plane's own tests read."""

    baggage: str | None = None
    response_flags: str = "-"


def read_access_log(
    path: Path,
    *,
    offset: int = 0,
    baggage_member: str = "loopgate-sandbox",
    header: str = "x-loopgate-sandbox",
) -> tuple[list[LoggedRequest], int]:
    """Records from byte ``offset`` on, and the offset to continue from.

    A last line without its newline is still being written: it is left for the next call. A log
    shorter than ``offset`` was truncated or replaced and is read from the start.
    """
    try:
        with path.open("rb") as log:
            log.seek(0, 2)
            if log.tell() < offset:
                offset = 0
            log.seek(offset)
            data = log.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    records: list[LoggedRequest] = []
    for line in data[: end + 1].splitlines():
        record = _parse(line, baggage_member, header)
        if record is not None:
            records.append(record)
    return records, offset + end + 1


def _parse(line: bytes, baggage_member: str, header: str) -> LoggedRequest | None:
    """One log line; None for blank or foreign lines, which must not stop the reader."""
    try:
        raw = json.loads(line)
    except ValueError:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("service"), str):
        return None
    baggage = _text(raw.get("baggage"))
    tagged_by_header = _text(raw.get(header))
    routing_key = member_value(baggage, baggage_member)
    if routing_key is None and tagged_by_header and ROUTING_KEY_RE.fullmatch(tagged_by_header):
        routing_key = tagged_by_header
    return LoggedRequest(
        service=raw["service"],
        routing_key=routing_key,
        target=_target(_text(raw.get("target"))),
        method=_text(raw.get("method")) or "",
        path=_text(raw.get("path")) or "",
        status=_int(raw.get("status")),
        traceparent=_text(raw.get("traceparent")),
        baggage=baggage,
        started_at=_text(raw.get("start_time")) or "",
        duration_ms=_int(raw.get("duration_ms")),
        grpc_status=_grpc_status(raw.get("grpc_status")),
        response_flags=_text(raw.get("response_flags")) or "-",
    )


def _text(value: Any) -> str | None:
    """Envoy writes a missing value as null (or '-' in text formats)."""
    if value is None:
        return None
    text = str(value)
    return None if text in ("", "-") else text


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _grpc_status(value: Any) -> int | None:
    """gRPC codes are 0-16; anything else a service put in its grpc-status is kept if it is a number
    (a caller sees it too), and a missing or non-numeric one is None."""
    if isinstance(value, bool):
        return None
    try:
        code = int(value)
    except (TypeError, ValueError):
        return None
    return code if 0 <= code < 2**31 else None


def _target(subset: str | None) -> str | None:
    """The sandbox whose fork answered (the endpoint's subset); None for the baseline or no answer."""
    if subset is None or subset == BASELINE or not ROUTING_KEY_RE.fullmatch(subset):
        return None
    return subset
