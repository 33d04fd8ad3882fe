"""What `verify.seed` read from its baseline, taken from the data plane's access log afterwards.

The seed's span (where the log stood, and when it ran) is recorded with the baseline; its reads are
read back only when a verify asks for them, long after Envoy flushed the lines, so nothing waits here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel

from bot.config.schema import SAFE_METHODS, Routing
from bot.runtimes.local.accesslog import read_access_log
from bot.runtimes.protocol import ObservedRequest

MAX_SEED_READS = 100


class SeedSpan(BaseModel):
    offset: int
    started: str
    finished: str = ""


def now() -> str:
    """The access log's own time format (`%Y-%m-%dT%H:%M:%E3SZ`), so spans compare as text."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def begin(access_log: Path) -> SeedSpan:
    try:
        offset = access_log.stat().st_size
    except FileNotFoundError:
        offset = 0
    return SeedSpan(offset=offset, started=now())


def seed_reads(access_log: Path, span: SeedSpan, routing: Routing) -> list[ObservedRequest]:
    """The seed's untagged GET/HEAD requests answered below 400, first of each path, in order."""
    raw, _ = read_access_log(
        access_log, offset=span.offset, baggage_member=routing.baggage_member, header=routing.header
    )
    seen: set[tuple[str, str, str]] = set()
    reads: list[ObservedRequest] = []
    for record in raw:
        key = (record.service, record.method, record.path)
        if (
            record.routing_key is None
            and record.method in SAFE_METHODS
            and record.status < 400
            and span.started <= record.started_at <= span.finished
            and key not in seen
        ):
            seen.add(key)
            reads.append(record)
    return reads[:MAX_SEED_READS]
