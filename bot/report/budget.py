"""Size budgets and the deterministic shrinking that keeps every output inside its budget.

GitHub rejects a check output, comment or PR body over 65,535 characters and a step summary over
1 MiB. A failing run is exactly when reports grow (long logs, many failures), and exactly when the
report must still arrive, so an output that does not fit is shrunk in a fixed order: log tails first
(keeping their end, where the error is), then failure lists, then tables. Templates render whatever
the `Shrink` knobs allow and say what was left out; `fit` finds the largest knobs that fit.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Generic, Literal, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Budget:
    limit: int
    unit: Literal["characters", "bytes"]

    def measure(self, text: str) -> int:
        return len(text.encode("utf-8")) if self.unit == "bytes" else len(text)

    def fits(self, text: str) -> bool:
        return self.measure(text) <= self.limit


GITHUB_TEXT = Budget(65_535, "characters")
"""Check-run summary and text, issue comments and PR bodies."""
COMMENT = GITHUB_TEXT
PR_BODY = GITHUB_TEXT
CHECK_SUMMARY = GITHUB_TEXT
CHECK_TEXT = GITHUB_TEXT
STEP_SUMMARY = Budget(1_048_576, "bytes")
CHECK_TITLE_CHARS = 200


@dataclass(frozen=True)
class Shrink:
    """How much of each shrinkable part a render may show; None means all of it."""

    log_chars: int | None = None
    failures: int | None = None
    rows: int | None = None
    omitted: int = 0
    """Characters left out, for the visible note; 0 when nothing was."""


FULL = Shrink()
KNOBS = ("log_chars", "failures", "rows")
"""The order in which parts are shrunk."""


@dataclass(frozen=True)
class Listing(Generic[T]):
    """The first items of a list that a render shows, and how many it leaves out."""

    items: Sequence[T]
    omitted: int


@dataclass(frozen=True)
class LogTail:
    """The end of a log that a render shows, and how many characters before it it leaves out."""

    text: str
    omitted: int


def head(items: Sequence[T], limit: int | None) -> Listing[T]:
    if limit is None or len(items) <= limit:
        return Listing(items, 0)
    return Listing(items[:limit], len(items) - limit)


def tail(text: str, limit: int | None) -> LogTail:
    """The last `limit` characters, starting at a line start when the cut leaves whole lines."""
    if limit is None or len(text) <= limit:
        return LogTail(text, 0)
    kept = text[len(text) - limit :] if limit else ""
    newline = kept.find("\n")
    if 0 <= newline < len(kept) - 1:
        kept = kept[newline + 1 :]
    return LogTail(kept, len(text) - len(kept))


Render = Callable[[Shrink], Iterable[str]]
"""A Markdown output rendered with the given knobs, as the template's chunks: a probe that does not
fit stops reading them once the budget is passed, so a huge report costs about a budget's worth of
rendering per probe, not its whole size."""


def markdown_text(chunks: Iterable[str]) -> str:
    """The output whole, ending in exactly one newline: sections end in a blank line to separate them,
    the last needs none."""
    return "".join(chunks).rstrip("\n") + "\n"


def fits_streamed(chunks: Iterable[str], budget: Budget) -> bool:
    """Would `markdown_text(chunks)` fit? Reads no further than the first chunk past the budget: the
    trailing newlines a chunk ends in may yet be trimmed, all else only grows."""
    size = trailing = 0
    for chunk in chunks:
        if not chunk:
            continue
        size += budget.measure(chunk)
        if chunk[-1] != "\n":
            trailing = 0
        else:
            stripped = chunk.rstrip("\n")
            trailing = len(chunk) - len(stripped) + (trailing if not stripped else 0)
        if size - trailing + 1 > budget.limit:
            return False
    return True


def fit(render: Render, budget: Budget, start: Shrink = FULL) -> str:
    """The render with the largest knobs, taken in `KNOBS` order, whose output fits the budget.

    `start` is what the output shows when nothing needs cutting (a short output may cap its lists by
    design). Deterministic: the same Evidence gives the same output. Each knob is searched with the
    earlier ones at zero; the note is sized with the widest number it can show, then filled in.
    """
    full = markdown_text(render(start))
    if budget.fits(full):
        return full
    size = len(full)
    shrink = replace(start, omitted=size)
    for knob in KNOBS:
        shrink, fitted = _largest(render, budget, shrink, knob, size)
        if fitted:
            break
    candidate = markdown_text(render(shrink))
    final = markdown_text(render(replace(shrink, omitted=max(size - len(candidate), 1))))
    return final if budget.fits(final) else cut(final, budget)


def _largest(render: Render, budget: Budget, shrink: Shrink, knob: str, high: int) -> tuple[Shrink, bool]:
    """The largest value of `knob` in [0, high] that fits, or 0 and False when even 0 does not.

    The search gallops up from 1 before it bisects, so most probes render about a budget's worth of
    text rather than half of an oversized report.
    """

    def fits(value: int) -> bool:
        return fits_streamed(render(replace(shrink, **{knob: value})), budget)

    if not fits(0):
        return replace(shrink, **{knob: 0}), False
    best, probe = 0, 1
    while probe <= high and fits(probe):
        best, probe = probe, probe * 2
    low, high = best + 1, min(probe, high + 1) - 1
    while low <= high:
        middle = (low + high) // 2
        if fits(middle):
            best, low = middle, middle + 1
        else:
            high = middle - 1
    return replace(shrink, **{knob: best}), True


_FENCE_LINE = re.compile(r"^(`{3,})")


def cut(markdown: str, budget: Budget) -> str:
    """Last resort when even the smallest render is too big: whole lines up to the budget, an open
    fence closed, and the note. Only reached by single values too long for any report."""
    note = "\n\n_… truncated: the report does not fit; full evidence: see JSON_\n"
    room = budget.limit - budget.measure(note)
    kept: list[str] = []
    used, fence = 0, ""
    for line in markdown.split("\n"):
        after = _fence_after(line, fence)
        closing = budget.measure(after) + 1 if after else 0
        cost = budget.measure(line) + 1
        if used + cost + closing > room:
            break
        kept.append(line)
        used, fence = used + cost, after
    if fence:
        kept.append(fence)
    return "\n".join(kept) + note


def _fence_after(line: str, open_fence: str) -> str:
    """The fence open after `line`, given the one open before it ("" for none)."""
    match = _FENCE_LINE.match(line)
    if open_fence:
        closes = match is not None and len(match[1]) >= len(open_fence) and not line.strip("`").strip()
        return "" if closes else open_fence
    return match[1] if match else ""
