"""Values, compared between control and candidate with the noise learned from two controls.

The Diffy approach: a primary and a secondary control (the base code, each on its own copy of the same
data, each having seen the same writes) and the candidate answer the same request. A JSON value that
differs between primary and secondary — an id made on write, a timestamp, a random choice — is noise
at its pointer, and so is everything below it; a value that primary and secondary agree on and the
candidate does not is a finding naming the pointer and both values. Nothing is configured.

Values are compared leaf by leaf at RFC 6901 pointers (array elements by index); an array's length is a
value too. A member only one side has is a shape matter (`compare.py`: removed is breaking, added is
not), so it is not repeated here. Bounded: at most MAX_DEPTH levels and MAX_LEAVES leaves per body.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from bot.evidence import Finding
from bot.verify.compare import MAX_DEPTH, Response, _format_pointer, _json_body, _matches, _parse_pointer

__all__ = ["MAX_LEAVES", "Leaves", "generalise", "leaves", "noise_pointers", "value_findings"]

MAX_LEAVES: Final = 20_000
_EXCERPT_CHARS: Final = 60
_ARRAY: Final = "array"
_OBJECT: Final = "object"
_CUT: Final = "cut"


@dataclass(frozen=True)
class Leaves:
    """A body flattened: pointer → canonical value. Containers are entries too (`array`, its length;
    `object`), so a place that changed from a container to a scalar is seen."""

    values: Mapping[str, tuple[str, str]]
    truncated: bool = False


def _canonical(value: Any) -> tuple[str, str]:
    """(kind, text): equal JSON values get equal pairs. 1 and 1.0 are one number; NaN equals NaN (Python's
    parser accepts it and `nan != nan` would make every NaN a finding)."""
    if value is None:
        return ("null", "null")
    if isinstance(value, bool):
        return ("boolean", "true" if value else "false")
    if isinstance(value, int):
        return ("number", str(value))
    if isinstance(value, float):
        if math.isnan(value):
            return ("number", "NaN")
        if math.isinf(value):
            return ("number", "Infinity" if value > 0 else "-Infinity")
        return ("number", str(int(value)) if value.is_integer() and abs(value) < 2**63 else repr(value))
    if isinstance(value, str):
        return ("string", value)
    raise TypeError(f"not a JSON scalar: {type(value).__name__}")


def leaves(value: Any) -> Leaves:
    """Flattens a parsed JSON value, iteratively (deep nesting cannot exhaust the stack)."""
    out: dict[str, tuple[str, str]] = {}
    truncated = False
    stack: list[tuple[str, Any, int]] = [("", value, 0)]
    while stack:
        pointer, item, depth = stack.pop()
        if len(out) >= MAX_LEAVES:
            truncated = True
            break
        if isinstance(item, dict):
            out[pointer] = (_OBJECT, "")
            if depth >= MAX_DEPTH:
                out[pointer] = (_CUT, "")
                continue
            for name in sorted(item, reverse=True):
                stack.append((pointer + _format_pointer((str(name),)), item[name], depth + 1))
        elif isinstance(item, list):
            out[pointer] = (_ARRAY, str(len(item)))
            if depth >= MAX_DEPTH:
                out[pointer] = (_CUT, "")
                continue
            for index in range(len(item) - 1, -1, -1):
                stack.append((f"{pointer}/{index}", item[index], depth + 1))
        else:
            out[pointer] = _canonical(item)
    return Leaves(out, truncated)


def _body_leaves(response: Response) -> Leaves | None:
    is_json, value = _json_body(response)
    return leaves(value) if is_json else None


def noise_pointers(primary: Response, secondary: Response) -> list[str]:
    """Where the two control answers differ, as pointers (the shallowest of each subtree). "" when the
    whole answer is noise: statuses differ, or one body is JSON and the other is not."""
    if primary.status != secondary.status:
        return [""]
    a, b = _body_leaves(primary), _body_leaves(secondary)
    if a is None or b is None:
        return [] if a is None and b is None else [""]
    differing = sorted(p for p in a.values.keys() | b.values.keys() if a.values.get(p) != b.values.get(p))
    return _shallowest(differing)


def _shallowest(pointers: list[str]) -> list[str]:
    """Pointers with those below another one dropped (linear: each is looked up by its prefixes)."""
    kept: list[str] = []
    seen: set[tuple[str, ...]] = set()
    for pointer in sorted(pointers, key=_sort_key):
        parsed = _parse_pointer(pointer)
        if not any(parsed[:n] in seen for n in range(len(parsed) + 1)):
            seen.add(parsed)
            kept.append(pointer)
    return sorted(kept)


def generalise(pointers: list[str], limit: int = 50) -> list[str]:
    """Noise as a short list of patterns: array indices become `*` (`/orders/*/id`), those below another
    dropped, at most `limit`. For setting a place's shape aside and for the Evidence; values use the
    exact pointers."""
    patterns = {tuple("*" if s.isdigit() else s for s in _parse_pointer(p)) for p in pointers}
    kept: list[str] = []
    seen: set[tuple[str, ...]] = set()
    for pattern in sorted(patterns, key=lambda t: (len(t), t)):
        if not any(pattern[:n] in seen for n in range(len(pattern) + 1)):
            seen.add(pattern)
            kept.append(_format_pointer(pattern))
    return sorted(kept)[:limit]


def value_findings(
    control: Response, candidate: Response, noise: list[str], ignore: tuple[str, ...] = ()
) -> list[Finding]:
    """`value_changed` findings (breaking) where control and candidate differ beyond the noise; only for
    answers of one status (a status change is its own finding) that are both JSON."""
    if control.status != candidate.status:
        return []
    a, b = _body_leaves(control), _body_leaves(candidate)
    if a is None or b is None:
        return []
    quiet = {_parse_pointer(p) for p in noise}
    patterns = [_parse_pointer(p) for p in ignore]
    findings: list[Finding] = []
    for pointer in sorted(a.values.keys() & b.values.keys(), key=_sort_key):
        mine, theirs = a.values[pointer], b.values[pointer]
        if mine == theirs or _CUT in (mine[0], theirs[0]):
            continue
        parsed = _parse_pointer(pointer)
        if any(parsed[:n] in quiet for n in range(len(parsed) + 1)):
            continue
        if any(_matches(q, parsed) for q in patterns):
            continue
        if mine[0] != theirs[0]:
            continue  # a changed type: the shape comparison's finding
        if mine[0] == _OBJECT:
            continue
        findings.append(
            Finding(
                kind="value_changed",
                pointer=pointer,
                baseline=_show(mine),
                sandbox=_show(theirs),
                breaking=True,
            )
        )
    if a.truncated or b.truncated:
        note = f"over {MAX_LEAVES} values: the rest not compared"
        findings.append(Finding(kind="truncated", pointer="", sandbox=note, breaking=False))
    return findings


def _sort_key(pointer: str) -> tuple[int, str]:
    return (pointer.count("/"), pointer)


def _show(value: tuple[str, str]) -> str:
    kind, text = value
    if kind == _ARRAY:
        return f"{text} items"
    if kind == "string":
        shown = text if len(text) <= _EXCERPT_CHARS else text[: _EXCERPT_CHARS - 1] + "…"
        return json.dumps(shown, ensure_ascii=False)
    return text if len(text) <= _EXCERPT_CHARS else text[: _EXCERPT_CHARS - 1] + "…"
