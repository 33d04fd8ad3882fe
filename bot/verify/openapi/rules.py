"""The breaking-change rules for schemas, base against head: inputs (`request`) may only widen, outputs
may only narrow (oasdiff's classification).

A changed response field type or new null, a removed response field, a narrowed input type (number →
integer, a new enum or pattern, a lower maxLength, an enum that lost values), a newly required request
field, a changed input default are breaking; new response fields and new optional request fields are
reported, not breaking. The work is bounded: the schema levels below one parameter, body or response, the
comparisons and views per pair of documents (Budget), the findings per operation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from bot.evidence import Finding
from bot.verify.openapi.document import Resolver, clip
from bot.verify.openapi.views import View, build_view

MAX_SCHEMA_DEPTH: Final = 48  # schema levels compared below one parameter, body or response
MAX_STEPS: Final = 200_000  # schema comparisons and views per pair of documents
MAX_FINDINGS_PER_OPERATION: Final = 200

_INPUT_BOUNDS: Final = (  # keyword, True when a higher value is stricter
    ("minLength", True),
    ("maxLength", False),
    ("minimum", True),
    ("maximum", False),
    ("minItems", True),
    ("maxItems", False),
    ("minProperties", True),
    ("maxProperties", False),
)


class Budget(Exception):
    """MAX_STEPS schema comparisons done."""


class Out:
    def __init__(self) -> None:
        self.findings: dict[tuple[str, str, str | None, str | None], bool] = {}

    def add(self, kind: str, pointer: str, base: str | None, head: str | None, *, breaking: bool) -> None:
        """Texts from the head document are the agent's: every one is clipped."""
        if len(self.findings) < MAX_FINDINGS_PER_OPERATION:
            clipped = (clip(pointer, 300), _maybe_clip(base), _maybe_clip(head))
            self.findings.setdefault((kind, *clipped), breaking)

    def result(self) -> list[Finding]:
        ordered = sorted(self.findings.items(), key=lambda kv: (not kv[1], kv[0][1], kv[0][0]))
        return [
            Finding(kind=k, pointer=p, baseline=b, sandbox=h, breaking=br) for (k, p, b, h), br in ordered
        ]


class SchemaRules:
    """The schemas of one operation compared, base against head, into `out`; Budget after `max_steps`."""

    def __init__(self, base: Resolver, head: Resolver, max_steps: int = MAX_STEPS) -> None:
        self.base, self.head = base, head
        self.max_steps = max_steps
        self.steps = 0
        self.out = Out()
        self._done: set[tuple[str, str, bool]] = set()

    def _tick(self) -> None:
        self.steps += 1
        if self.steps > self.max_steps:
            raise Budget

    def schema(self, b_raw: Any, h_raw: Any, path: tuple[str, ...], *, request: bool, depth: int = 0) -> None:
        """Inputs (`request`) may only widen; outputs may only narrow."""
        self._tick()
        if depth > MAX_SCHEMA_DEPTH:
            self.out.add(
                "truncated",
                ptr(*path),
                None,
                f"nested deeper than {MAX_SCHEMA_DEPTH} levels: not compared",
                breaking=False,
            )
            return
        b, h = self._view(self.base, b_raw), self._view(self.head, h_raw)
        if b.ref is not None and h.ref is not None:
            key = (b.ref, h.ref, request)
            if key in self._done:  # compared already here or above (a loop, or a schema used twice)
                return
            self._done.add(key)
        pointer = ptr(*path)
        if not self._types(b, h, pointer, request=request):
            return
        if request:
            self._input_rules(b, h, pointer)
        else:
            b_enum, h_enum = _enum(b.node), _enum(h.node)
            if h_enum is not None and (b_enum is None or not set(h_enum) <= set(b_enum)):
                known = set(b_enum or [])
                new = _values([v for v in h_enum if v not in known])
                self.out.add(
                    "enum_widened", pointer, _values(b_enum) if b_enum else None, new, breaking=False
                )
        b_fmt, h_fmt = b.node.get("format"), h.node.get("format")
        if isinstance(h_fmt, str) and h_fmt != b_fmt and (isinstance(b_fmt, str) or request):
            self.out.add("format_changed", pointer, _text(b_fmt), h_fmt, breaking=True)
        self._properties(b, h, path, request=request, depth=depth)
        if b.items is not None and h.items is not None:
            self.schema(b.items, h.items, (*path, "*"), request=request, depth=depth + 1)
        if isinstance(b.extra, dict) and isinstance(h.extra, dict):
            self.schema(b.extra, h.extra, (*path, "*"), request=request, depth=depth + 1)
        if len(b.alternatives) == len(h.alternatives):
            for b_alt, h_alt in zip(b.alternatives, h.alternatives, strict=True):
                self.schema(b_alt, h_alt, path, request=request, depth=depth + 1)

    def _types(self, b: View, h: View, pointer: str, *, request: bool) -> bool:
        """Type and null rules; False when the types are too different to look further."""
        if request:  # every value the base accepted is still accepted
            if b.nullable and not h.nullable:
                self.out.add("type_narrowed", pointer, b.describe(), h.describe(), breaking=True)
            if h.types is not None and (b.types is None or not all(_covers(h.types, t) for t in b.types)):
                self.out.add("type_narrowed", pointer, b.describe(), h.describe(), breaking=True)
                return False
            return True
        if h.nullable and not b.nullable:
            self.out.add("nullability_changed", pointer, b.describe(), h.describe(), breaking=True)
        if b.types is not None and (h.types is None or not all(_covers(b.types, t) for t in h.types)):
            self.out.add("type_changed", pointer, b.describe(), h.describe(), breaking=True)
            return False
        return True

    def _input_rules(self, b: View, h: View, pointer: str) -> None:
        b_enum, h_enum = _enum(b.node), _enum(h.node)
        if h_enum is not None:
            if b_enum is None:
                self.out.add("enum_added", pointer, None, _values(h_enum), breaking=True)
            elif not set(b_enum) <= set(h_enum):
                self.out.add("enum_narrowed", pointer, _values(b_enum), _values(h_enum), breaking=True)
        b_pat, h_pat = b.node.get("pattern"), h.node.get("pattern")
        if isinstance(h_pat, str) and h_pat != b_pat:
            self.out.add("pattern_changed", pointer, _text(b_pat), clip(h_pat), breaking=True)
        for keyword, higher_is_stricter in _INPUT_BOUNDS:
            b_val, h_val = _number(b.node.get(keyword)), _number(h.node.get(keyword))
            if h_val is None or b_val == h_val:
                continue
            if b_val is None or (h_val > b_val) == higher_is_stricter:
                self.out.add(
                    "constraint_narrowed",
                    pointer,
                    _bound(keyword, b.node.get(keyword)),
                    _bound(keyword, h.node.get(keyword)),
                    breaking=True,
                )
        for keyword in ("exclusiveMinimum", "exclusiveMaximum", "multipleOf"):
            b_val, h_val = b.node.get(keyword), h.node.get(keyword)
            if h_val not in (None, False) and h_val != b_val:
                self.out.add(
                    "constraint_narrowed",
                    pointer,
                    _bound(keyword, b_val),
                    _bound(keyword, h_val),
                    breaking=True,
                )
        if "default" in b.node and "default" in h.node and b.node["default"] != h.node["default"]:
            # A caller that leaves the value out now asks for something else.
            self.out.add(
                "default_changed", pointer, _json(b.node["default"]), _json(h.node["default"]), breaking=True
            )

    def _properties(self, b: View, h: View, path: tuple[str, ...], *, request: bool, depth: int) -> None:
        names = list(dict.fromkeys([*b.properties, *b.required, *h.properties, *h.required]))
        if not names:
            return
        for name in names:
            child = (*path, name)
            pointer = ptr(*child)
            in_b = name in b.properties or name in b.required
            in_h = name in h.properties or name in h.required
            b_prop, h_prop = b.properties.get(name, {}), h.properties.get(name, {})
            hidden = "readOnly" if request else "writeOnly"
            if self._flag(self.head if in_h else self.base, h_prop if in_h else b_prop, hidden):
                continue  # never sent (readOnly input) or never answered (writeOnly output)
            if request:
                if in_h and name in h.required and name not in b.required:
                    was = "optional" if in_b else None
                    self.out.add("request_field_required", pointer, was, "required", breaking=True)
                elif in_h and not in_b:
                    self.out.add("request_field_added", pointer, None, "optional", breaking=False)
                if in_b and not in_h:
                    self.out.add(
                        "request_field_removed",
                        pointer,
                        self._describe(self.base, b_prop),
                        None,
                        breaking=False,
                    )
            else:
                if in_b and not in_h:
                    self.out.add(
                        "field_removed", pointer, self._describe(self.base, b_prop), None, breaking=True
                    )
                elif in_h and not in_b:
                    self.out.add(
                        "field_added", pointer, None, self._describe(self.head, h_prop), breaking=False
                    )
                elif name in b.required and name not in h.required:
                    # FastAPI leaves a field with a default out of `required` though it is always sent.
                    self.out.add("field_optional", pointer, "required", "optional", breaking=False)
            if in_b and in_h:
                self.schema(b_prop, h_prop, child, request=request, depth=depth + 1)

    def _flag(self, resolver: Resolver, raw: Any, name: str) -> bool:
        node, _ = resolver.deref(raw)
        return isinstance(node, dict) and node.get(name) is True

    def _describe(self, resolver: Resolver, raw: Any) -> str:
        return self._view(resolver, raw).describe()

    def _view(self, resolver: Resolver, raw: Any) -> View:
        return build_view(resolver, raw, self._tick)


def _covers(types: frozenset[str], kind: str) -> bool:
    return kind in types or (kind == "integer" and "number" in types)


def _enum(node: Mapping[str, Any]) -> list[str] | None:
    if isinstance(node.get("enum"), list):
        return [_json(v) for v in node["enum"]]
    if "const" in node:
        return [_json(node["const"])]
    return None


def _values(values: Sequence[str]) -> str:
    return clip(", ".join(values[:20]), 120)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _bound(keyword: str, value: Any) -> str | None:
    return None if value is None else f"{keyword} {_json(value)}"


def ptr(*segments: str) -> str:
    return "".join("/" + s.replace("~", "~0").replace("/", "~1") for s in segments)


def _json(value: Any) -> str:
    return clip(json.dumps(value, ensure_ascii=False, sort_keys=True, default=str))


def _maybe_clip(text: str | None) -> str | None:
    return None if text is None else clip(text, 200)


def _text(value: Any) -> str | None:
    return None if value is None else clip(str(value))
