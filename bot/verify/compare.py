"""The response diff: one request answered by the shared baseline and by the sandbox, compared by shape.

Why a structural comparison of our own and not a generic diff library (deepdiff, jsondiff, jsonpatch):
those report differences of *value*, and between two live systems values differ legitimately — ids,
timestamps, counters, the order of list items. What breaks a caller at a service boundary is a change
of *shape*: a member gone, a JSON type or string format changed, a value that is now null, a status
class or content type changed. A value diff would need every one of its findings re-interpreted and
most of them thrown away, and its positional list diff reports a reordered or longer list as wholesale
change. So each JSON body is reduced to a shape — the JSON types seen, the string formats seen, the
member names, and for every array one element shape merged from all its elements — and the two shapes
are compared. Non-JSON bodies are not compared at all: their bytes differ legitimately.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final

from bot.evidence import Finding

__all__ = ["MAX_DEPTH", "MAX_FINDINGS", "ComparePolicy", "Response", "compare", "pointer_matches"]

MAX_DEPTH: Final = 64  # nesting below this is not looked at (a `truncated` note says where)
MAX_FINDINGS: Final = 200  # findings kept; a final `truncated` note says more were found
WILDCARD: Final = "*"  # one pointer segment: any member name or array index
_EXCERPT_CHARS: Final = 40
_KIND_ORDER: Final = ("null", "boolean", "integer", "number", "string", "object", "array")
_FORMAT_ORDER: Final = ("date-time", "date", "epoch", "numeric", "uuid", "text")


@dataclass(frozen=True)
class Response:
    """What one side answered. Header names are expected lower-cased (they are lowered again anyway)."""

    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class ComparePolicy:
    """What the team told us about this request.

    `ignore`: RFC 6901 pointers, `*` matching exactly one segment; a pointer also ignores everything
    below it, and "" ignores the whole body. `headers`: names (any case) whose values must be equal.
    Malformed pointers fail here, when the policy is built, not in the middle of a run.
    """

    ignore: Sequence[str] = ()
    headers: Sequence[str] = ()

    def __post_init__(self) -> None:
        for name in ("ignore", "headers"):
            if isinstance(getattr(self, name), str):
                raise TypeError(f"ComparePolicy.{name} is a sequence of strings, not one string")
        for pattern in self.ignore:
            _parse_pointer(pattern)
        object.__setattr__(self, "ignore", tuple(self.ignore))
        object.__setattr__(self, "headers", tuple(self.headers))


def pointer_matches(pattern: str, pointer: str) -> bool:
    """Whether `pointer` is `pattern` or lies below it; a `*` segment in `pattern` matches any one segment.

    Both are RFC 6901 pointers (`~1` is `/`, `~0` is `~`); ValueError when either is malformed.
    """
    return _matches(_parse_pointer(pattern), _parse_pointer(pointer))


def compare(baseline: Response, sandbox: Response, policy: ComparePolicy) -> list[Finding]:
    """Findings for what the sandbox answered differently in a way a caller could notice.

    Sorted breaking first, then by pointer; deduplicated; at most MAX_FINDINGS plus a `truncated` note.
    """
    differ = _Differ(tuple(_parse_pointer(p) for p in policy.ignore))
    out = _Findings()
    try:
        same_class = _compare_status(baseline.status, sandbox.status, out)
        _compare_headers(baseline.headers, sandbox.headers, policy.headers, out)
        # A success and an error answer have unrelated bodies: the status finding already says it all,
        # and a member-by-member diff of them would only bury it in noise.
        if same_class:
            _compare_bodies(baseline, sandbox, differ, out)
    except _Enough:
        pass
    return out.result()


# --- status, headers, bodies -------------------------------------------------------------------


def _compare_status(baseline: int, sandbox: int, out: _Findings) -> bool:
    """Adds `status_changed`; breaking only when the class (2xx, 4xx, ...) changes. Returns same class."""
    same_class = baseline // 100 == sandbox // 100
    if baseline != sandbox:
        out.add("status_changed", "", str(baseline), str(sandbox), breaking=not same_class)
    return same_class


def _compare_headers(
    baseline: Mapping[str, str], sandbox: Mapping[str, str], names: Sequence[str], out: _Findings
) -> None:
    """Only the headers the policy names: most headers (date, server-timing, ...) differ legitimately."""
    b = {k.lower(): v.strip() for k, v in baseline.items()}
    s = {k.lower(): v.strip() for k, v in sandbox.items()}
    for name in sorted({n.strip().lower() for n in names}):
        if b.get(name) != s.get(name):
            pointer = "/headers" + _format_pointer((name,))
            out.add("header_changed", pointer, b.get(name), s.get(name), breaking=True)


def _compare_bodies(baseline: Response, sandbox: Response, differ: _Differ, out: _Findings) -> None:
    if differ.ignored(()):
        return
    b_json, b_value = _json_body(baseline)
    s_json, s_value = _json_body(sandbox)
    if not b_json and not s_json:
        return
    if b_json != s_json:
        label_b, label_s = _body_label(baseline, b_json), _body_label(sandbox, s_json)
        out.add("body_changed", "", label_b, label_s, breaking=True)
        return
    differ.diff(differ.shape(b_value), differ.shape(s_value), (), out)


def _media_type(response: Response) -> str:
    ctype = next((v for k, v in response.headers.items() if k.lower() == "content-type"), "")
    return ctype.split(";", 1)[0].strip().lower()


def _is_json_media(media: str) -> bool:
    return media == "application/json" or media.endswith("+json")


def _json_body(response: Response) -> tuple[bool, Any]:
    """(is JSON, value). The content type decides; without one, a body that parses counts as JSON."""
    media = _media_type(response)
    if media and not _is_json_media(media):
        return False, None
    if not response.body.strip():
        return False, None
    try:
        return True, json.loads(response.body)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the parser's stack
        return False, None


def _body_label(response: Response, is_json: bool) -> str:
    media = _media_type(response) or "no content-type"
    if is_json:
        return f"JSON ({media})"
    if not response.body.strip():
        return f"empty body ({media})"
    if _is_json_media(media):
        return f"invalid JSON ({media}, {len(response.body)} bytes)"
    return f"{media} ({len(response.body)} bytes)"


# --- pointers ----------------------------------------------------------------------------------

_BAD_TILDE: Final = re.compile(r"~(?![01])")


def _parse_pointer(text: str) -> tuple[str, ...]:
    """RFC 6901 pointer → unescaped segments; "" is the whole document."""
    if text == "":
        return ()
    if not text.startswith("/"):
        raise ValueError(f"not a JSON pointer (must be empty or start with '/'): {text!r}")
    if _BAD_TILDE.search(text):
        raise ValueError(f"not a JSON pointer ('~' must be followed by 0 or 1): {text!r}")
    return tuple(s.replace("~1", "/").replace("~0", "~") for s in text[1:].split("/"))


def _format_pointer(path: tuple[str, ...]) -> str:
    return "".join("/" + s.replace("~", "~0").replace("/", "~1") for s in path)


def _matches(pattern: tuple[str, ...], path: tuple[str, ...]) -> bool:
    if len(path) < len(pattern):
        return False
    return all(p in (WILDCARD, s) for p, s in zip(pattern, path, strict=False))


# --- shapes ------------------------------------------------------------------------------------

_UUID: Final = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DATE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATE_TIME: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}([.,]\d+)?)?([Zz]|[+-]\d{2}(:?\d{2})?)?"
)
_EPOCH: Final = re.compile(r"\d{10}(\d{3})?")  # seconds or milliseconds since 1970, 2001..2286
_NUMERIC: Final = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
# One format to a caller: epoch digits are a numeric string too (a counter may grow to ten digits).
_NUMBER_LIKE: Final = frozenset({"epoch", "numeric"})


def _string_format(text: str) -> str:
    """A small, well-defined classification: the formats callers parse, everything else is `text`."""
    if _UUID.fullmatch(text):
        return "uuid"
    if _DATE_TIME.fullmatch(text) and _valid_date(text[:10]):
        return "date-time"
    if _DATE.fullmatch(text) and _valid_date(text):
        return "date"
    if _EPOCH.fullmatch(text):
        return "epoch"
    if _NUMERIC.fullmatch(text):
        return "numeric"
    return "text"


def _valid_date(text: str) -> bool:
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _kind(value: object) -> str:
    """The JSON type name; a float with an integral value (`1.0`) is an integer, as JSON has one number."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def _clip(text: str) -> str:
    return text if len(text) <= _EXCERPT_CHARS else text[: _EXCERPT_CHARS - 1] + "…"


def _excerpt(kind: str, value: Any) -> str:
    """A short, bounded picture of one example value; never walks a whole structure."""
    if kind == "null":
        return ""
    if kind == "string":
        return json.dumps(_clip(value), ensure_ascii=False)
    if kind == "object":
        names = sorted(value)
        shown = ", ".join(json.dumps(_clip(n), ensure_ascii=False) for n in names[:4])
        return _clip("{" + shown + (", …" if len(names) > 4 else "") + "}")
    if kind == "array":
        return f"{len(value)} items"
    return _clip(json.dumps(value))


def _describe(examples: Mapping[str, str], names: Sequence[str], order: Sequence[str]) -> str:
    """`integer (1200)`, or `integer (1) | string ("a")` where a merged array mixed several."""
    return " | ".join(
        name if name == "null" else f"{name} ({examples[name]})" for name in order if name in names
    )


@dataclass
class _Shape:
    """What all values seen at one place had in common: types, string formats, members, element shape."""

    kinds: dict[str, str] = field(default_factory=dict)  # JSON type → excerpt of its first example
    formats: dict[str, str] = field(default_factory=dict)  # string format → excerpt of its first example
    members: dict[str, _Shape] = field(default_factory=dict)  # union over every object seen here
    items: _Shape | None = None  # merged over every element of every array seen here; None: none seen
    cut: bool = False  # a container sat at MAX_DEPTH here: what lies below it was not looked at

    def describe(self, *, nulls: bool = True) -> str:
        kinds = [k for k in self.kinds if nulls or k != "null"]
        return _describe(self.kinds, kinds, _KIND_ORDER)

    def describe_formats(self) -> str:
        return _describe(self.formats, list(self.formats), _FORMAT_ORDER)


class _Enough(Exception):
    """More than MAX_FINDINGS breaking findings: nothing found later can make the cut."""


class _Findings:
    def __init__(self) -> None:
        self._seen: dict[tuple[bool, str, str, str | None, str | None], None] = {}
        self._breaking = 0
        self._stopped = False

    def add(
        self, kind: str, pointer: str, baseline: str | None, sandbox: str | None, *, breaking: bool
    ) -> None:
        key = (breaking, pointer, kind, baseline, sandbox)
        if key in self._seen:
            return
        self._seen[key] = None
        if breaking:
            self._breaking += 1
            if self._breaking > MAX_FINDINGS:
                self._stopped = True
                raise _Enough

    def result(self) -> list[Finding]:
        # Sorting before truncating keeps every breaking finding that fits: notes are dropped first.
        keys = sorted(self._seen, key=lambda k: (not k[0], k[1], k[2], k[3] or "", k[4] or ""))
        findings = [Finding(kind=k, pointer=p, baseline=b, sandbox=s, breaking=br) for br, p, k, b, s in keys]
        if len(findings) <= MAX_FINDINGS:
            return findings
        total = f"over {MAX_FINDINGS}" if self._stopped else str(len(findings))
        note = f"{total} findings; the first {MAX_FINDINGS} are listed"
        return [*findings[:MAX_FINDINGS], Finding(kind="truncated", pointer="", sandbox=note, breaking=False)]


class _Differ:
    """Builds shapes (skipping ignored places) and compares them."""

    def __init__(self, ignore: tuple[tuple[str, ...], ...]) -> None:
        self._ignore = ignore

    def ignored(self, path: tuple[str, ...]) -> bool:
        return any(_matches(pattern, path) for pattern in self._ignore)

    def shape(self, value: Any) -> _Shape:
        shape = _Shape()
        self._absorb(shape, value, (), 0)
        return shape

    def _absorb(self, shape: _Shape, value: Any, path: tuple[str, ...], depth: int) -> None:
        """Adds one value to a shape. `path` is concrete (array indices) so ignores can name one element."""
        kind = _kind(value)
        if kind not in shape.kinds:
            shape.kinds[kind] = _excerpt(kind, value)
        if kind == "string" and value:  # "" says nothing about a format
            fmt = _string_format(value)
            if fmt not in shape.formats:
                shape.formats[fmt] = _excerpt(kind, value)
        if kind not in ("object", "array"):
            return
        if depth >= MAX_DEPTH:
            shape.cut = True
            return
        if kind == "object":
            for name, child in value.items():
                child_path = (*path, name)
                if not self.ignored(child_path):
                    member = shape.members.setdefault(name, _Shape())
                    self._absorb(member, child, child_path, depth + 1)
            return
        for index, child in enumerate(value):
            child_path = (*path, str(index))
            if not self.ignored(child_path):
                if shape.items is None:
                    shape.items = _Shape()
                self._absorb(shape.items, child, child_path, depth + 1)

    def diff(self, b: _Shape, s: _Shape, path: tuple[str, ...], out: _Findings) -> None:
        """Compares two shapes at `path` (array positions are `*`); recursion depth ≤ MAX_DEPTH + 1."""
        if self.ignored(path):
            return
        pointer = _format_pointer(path)
        b_kinds = {k for k in b.kinds if k != "null"}
        s_kinds = {k for k in s.kinds if k != "null"}

        # Null where the baseline never had one; or a value where the baseline only ever had null. A
        # baseline that mixed null and values (a merged array) is not contradicted by values alone.
        if "null" in s.kinds and "null" not in b.kinds:
            out.add("nullability_changed", pointer, b.describe(), "null", breaking=True)
        elif not b_kinds and s_kinds:
            out.add("nullability_changed", pointer, "null", s.describe(nulls=False), breaking=True)

        # A type the baseline never had here. An integer where the baseline had fractional numbers is
        # still a number; a fractional number where it only had integers is not an integer.
        if b_kinds and s_kinds:
            compatible = b_kinds | ({"integer"} if "number" in b_kinds else set())
            if not s_kinds <= compatible:
                out.add(
                    "type_changed", pointer, b.describe(nulls=False), s.describe(nulls=False), breaking=True
                )

        if "string" in b_kinds & s_kinds and b.formats and s.formats:
            known = set(b.formats) | (_NUMBER_LIKE if _NUMBER_LIKE & b.formats.keys() else set())
            if not set(s.formats) <= known:
                out.add("format_changed", pointer, b.describe_formats(), s.describe_formats(), breaking=True)

        shared = b_kinds & s_kinds & {"object", "array"}
        if not shared:
            return
        if b.cut or s.cut:
            note = f"nested deeper than {MAX_DEPTH} levels: not compared"
            out.add("truncated", pointer, None, note, breaking=False)
            return
        if "object" in shared:
            self._diff_members(b, s, path, out)
        if "array" in shared and b.items is not None and s.items is not None:
            self.diff(b.items, s.items, (*path, WILDCARD), out)

    def _diff_members(self, b: _Shape, s: _Shape, path: tuple[str, ...], out: _Findings) -> None:
        for name in sorted(b.members.keys() | s.members.keys()):
            child_path = (*path, name)
            if self.ignored(child_path):
                continue
            in_b, in_s = b.members.get(name), s.members.get(name)
            if in_b is not None and in_s is not None:
                self.diff(in_b, in_s, child_path, out)
            elif in_b is not None:
                out.add("field_removed", _format_pointer(child_path), in_b.describe(), None, breaking=True)
            elif in_s is not None:
                out.add("field_added", _format_pointer(child_path), None, in_s.describe(), breaking=False)
