"""Contract checks from a service's own API description (OpenAPI 3.0 and 3.1), pure: no I/O.

Two things come from the documents a forked service publishes:

- `compare_documents`: the base document (the baseline's, base code) against the head document (the
  fork's): what a caller relying on the base contract would trip over, by the usual rules (oasdiff's
  classification): a removed operation, a removed, renamed or moved parameter, a new required parameter
  or request field, an optional parameter or field becoming required, a removed success status or
  response field, a changed response field type or new null, a narrowed input type (number → integer, a
  new enum or pattern, a lower maxLength, an enum that lost values), a changed input default. New
  operations, new optional parameters and new response fields are reported, not breaking.
- `plan_probes`: concrete requests for every safe operation (GET, HEAD) of the *base* document, its path
  and query parameters filled from values seen in the suites' traffic and from the description
  (examples, enums, defaults); an operation without a known value for a required parameter is skipped
  rather than sent with an invented one that would only 404. The head document is only ever compared:
  it comes from the agent's code and never decides what is sent.

Both documents come from running code, the head one from the agent's branch: they are hostile input.
Size, nesting, node count, `$ref` chains and loops and the comparison work are bounded; what exceeds a
bound is a one-line note, never a hang or a crash.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, quote, unquote, urlencode

from bot.evidence import DiffResult, Finding

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "MAX_NESTING",
    "MAX_NODES",
    "MAX_STEPS",
    "Document",
    "NotADescription",
    "Operation",
    "PlannedProbe",
    "compare_documents",
    "operations",
    "parse_document",
    "plan_probes",
]

MAX_DOCUMENT_BYTES: Final = 10 * 1024 * 1024  # a service's description; larger ones are not parsed
MAX_NESTING: Final = 128  # JSON nesting levels of the document
MAX_NODES: Final = 1_000_000  # JSON values in the document
MAX_REF_HOPS: Final = 32  # `$ref`s followed in one chain
MAX_SCHEMA_DEPTH: Final = 48  # schema levels compared below one parameter, body or response
MAX_STEPS: Final = 200_000  # schema comparisons and views per pair of documents
MAX_FINDINGS_PER_OPERATION: Final = 200
MAX_ADDED_LISTED: Final = 20  # new operations listed one by one; the rest are counted
MAX_VALUES: Final = 5  # values remembered per parameter from traffic

METHODS: Final = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
SAFE: Final = frozenset({"get", "head"})
_PARAM: Final = re.compile(r"\{([^{}/]*)\}")


class NotADescription(ValueError):
    """The answer is not an OpenAPI 3 description loopgate can use; the message is one line."""


@dataclass(frozen=True)
class Document:
    raw: Mapping[str, Any]
    version: str
    """`3.0` or `3.1`."""


@dataclass(frozen=True)
class Operation:
    method: str
    """Upper case."""
    template: str
    raw: Mapping[str, Any]
    path_item: Mapping[str, Any]

    @property
    def label(self) -> str:
        return f"{self.method} {_clip(self.template, 200)}"

    @property
    def key(self) -> tuple[str, str]:
        """Path parameters' names do not matter to a caller: `/a/{id}` is `/a/{order_id}`."""
        return self.method, _PARAM.sub("{}", self.template)


@dataclass(frozen=True)
class PlannedProbe:
    operation: str
    """The operation of the base document, `GET /items/{sku}`."""
    method: str
    path: str
    """Concrete, with the query string."""
    headers: Mapping[str, str] = field(default_factory=dict)
    from_traffic: bool = False
    """A value came from the suites' traffic: data made during the run may exist on one side only."""


# --- the document -------------------------------------------------------------------------------


def parse_document(body: bytes) -> Document:
    """The description in an answer's body; NotADescription (one line) when it is none or too big."""
    if len(body) > MAX_DOCUMENT_BYTES:
        raise NotADescription(
            f"the description is {len(body) / 2**20:.1f} MiB, over the {MAX_DOCUMENT_BYTES // 2**20} MiB"
            " limit: not read"
        )
    try:
        raw = json.loads(body)
    except RecursionError:
        raise NotADescription(
            f"the description is nested deeper than {MAX_NESTING} levels: not read"
        ) from None
    except ValueError:
        raise NotADescription("the answer is not JSON") from None
    if not isinstance(raw, dict):
        raise NotADescription("the answer is JSON but not an OpenAPI description (not an object)")
    _check_size(raw)
    version = raw.get("openapi")
    if not isinstance(version, str):
        if "swagger" in raw:
            raise NotADescription("Swagger 2.0 descriptions are not compared (OpenAPI 3.0 or 3.1 only)")
        raise NotADescription("the answer is JSON but not an OpenAPI description (no `openapi` version)")
    for known in ("3.0", "3.1"):
        if version == known or version.startswith(known + "."):
            if not isinstance(raw.get("paths", {}), dict):
                raise NotADescription("the description's `paths` is not an object")
            return Document(raw, known)
    raise NotADescription(f"OpenAPI {version[:20]} is not compared (3.0 or 3.1 only)")


def _check_size(raw: Any) -> None:
    """Nesting and node count, walked without recursion."""
    stack: list[tuple[Any, int]] = [(raw, 1)]
    nodes = 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise NotADescription(f"the description has over {MAX_NODES:,} values: not compared")
        if depth > MAX_NESTING:
            raise NotADescription(f"the description is nested deeper than {MAX_NESTING} levels: not read")
        if isinstance(value, dict):
            stack.extend((child, depth + 1) for child in value.values())
        elif isinstance(value, list):
            stack.extend((child, depth + 1) for child in value)


class _Resolver:
    """Local `$ref`s (`#/components/...`) of one document; chains are followed, loops and misses noted."""

    def __init__(self, document: Document) -> None:
        self.root = document.raw
        self.notes: set[str] = set()

    def deref(self, node: Any) -> tuple[Any, str | None]:
        """The node a `$ref` chain ends at (siblings of a `$ref` kept, as 3.1 allows) and the last ref."""
        last: str | None = None
        seen: list[str] = []
        while isinstance(node, dict) and isinstance(node.get("$ref"), str):
            ref = node["$ref"]
            if ref in seen or len(seen) >= MAX_REF_HOPS:
                self.notes.add(f"a $ref chain loops or exceeds {MAX_REF_HOPS} hops at {_clip(ref)}")
                return {}, ref
            seen.append(ref)
            target = self._lookup(ref)
            if target is None:
                self.notes.add(f"$ref {_clip(ref)} is not a local reference that resolves: not followed")
                return {}, ref
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            node = {**target, **siblings} if siblings and isinstance(target, dict) else target
            last = ref
        return node, last

    def _lookup(self, ref: str) -> Any:
        if not ref.startswith("#"):
            return None
        fragment = unquote(ref[1:])
        if fragment == "":
            return self.root
        if not fragment.startswith("/"):
            return None
        node: Any = self.root
        for raw in fragment[1:].split("/"):
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return None
        return node


def operations(document: Document) -> list[Operation]:
    """Every operation, in document order (path items by `$ref` resolved)."""
    resolver = _Resolver(document)
    found = []
    for template, item in _items(document.raw.get("paths")):
        path_item, _ = resolver.deref(item)
        if not isinstance(path_item, dict):
            continue
        for method in METHODS:
            operation = path_item.get(method)
            if isinstance(operation, dict):
                found.append(Operation(method.upper(), str(template), operation, path_item))
    return found


# --- comparing two documents -------------------------------------------------------------------


def compare_documents(base: Document, head: Document, service: str) -> tuple[list[DiffResult], list[str]]:
    """One DiffResult per operation with findings (request `OpenAPI GET /items/{sku}`), and notes.

    Pointers are relative to the operation: `/parameters/query/limit`, `/requestBody/items/*/sku`,
    `/responses/200/total`; "" is the operation itself.
    """
    comparer = _Comparer(_Resolver(base), _Resolver(head))
    head_ops = {op.key: op for op in operations(head)}
    base_ops = operations(base)
    results: list[DiffResult] = []
    notes: list[str] = []
    base_keys = set()
    try:
        for op in base_ops:
            base_keys.add(op.key)
            out = _Out()
            comparer.out = out
            twin = head_ops.get(op.key)
            if twin is None:
                deprecated = op.raw.get("deprecated") is True
                note = "deprecated in base" if deprecated else None
                out.add("operation_removed", "", op.label, note, breaking=not deprecated)
            else:
                comparer.operation(op, twin)
            if out.findings:
                results.append(
                    DiffResult(request=f"OpenAPI {op.label}", service=service, findings=out.result())
                )
        added = [op for key, op in head_ops.items() if key not in base_keys]
        for op in added[:MAX_ADDED_LISTED]:
            finding = Finding(kind="operation_added", pointer="", sandbox=op.label, breaking=False)
            results.append(DiffResult(request=f"OpenAPI {op.label}", service=service, findings=[finding]))
        if len(added) > MAX_ADDED_LISTED:
            more = f"{len(added) - MAX_ADDED_LISTED} more new operations, not listed"
            finding = Finding(kind="operation_added", pointer="", sandbox=more, breaking=False)
            results.append(
                DiffResult(request="OpenAPI (new operations)", service=service, findings=[finding])
            )
    except _Budget:
        comparer.out.add(
            "truncated", "", None, f"over {MAX_STEPS:,} schema comparisons: stopped here", breaking=False
        )
        if comparer.out.findings:
            results.append(
                DiffResult(request=f"OpenAPI {op.label}", service=service, findings=comparer.out.result())
            )
        notes.append(
            f"the OpenAPI descriptions need over {MAX_STEPS:,} schema comparisons: compared up to {op.label}"
        )
    for side, resolver in (("base", comparer.base), ("head", comparer.head)):
        notes.extend(f"{side} OpenAPI description: {note}" for note in sorted(resolver.notes)[:5])
    return results, notes


class _Budget(Exception):
    """MAX_STEPS schema comparisons done."""


class _Out:
    def __init__(self) -> None:
        self.findings: dict[tuple[str, str, str | None, str | None], bool] = {}

    def add(self, kind: str, pointer: str, base: str | None, head: str | None, *, breaking: bool) -> None:
        """Texts from the head document are the agent's: every one is clipped."""
        if len(self.findings) < MAX_FINDINGS_PER_OPERATION:
            clipped = (_clip(pointer, 300), _maybe_clip(base), _maybe_clip(head))
            self.findings.setdefault((kind, *clipped), breaking)

    def result(self) -> list[Finding]:
        ordered = sorted(self.findings.items(), key=lambda kv: (not kv[1], kv[0][1], kv[0][0]))
        return [
            Finding(kind=k, pointer=p, baseline=b, sandbox=h, breaking=br) for (k, p, b, h), br in ordered
        ]


@dataclass
class _View:
    """One schema with refs, allOf, nullable forms (3.0 `nullable`, 3.1 `type: [.., "null"]`, an
    `anyOf`/`oneOf` with a null member) reduced to what the rules look at."""

    types: frozenset[str] | None  # None: any type
    nullable: bool
    node: Mapping[str, Any]
    properties: dict[str, Any] = field(default_factory=dict)
    required: frozenset[str] = frozenset()
    items: Any = None
    extra: Any = None  # additionalProperties, when a schema
    alternatives: list[Any] = field(default_factory=list)
    ref: str | None = None

    def describe(self) -> str:
        names = "any" if self.types is None else " | ".join(sorted(self.types)) or "null"
        return f"{names} | null" if self.nullable and self.types != frozenset() else names


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


class _Comparer:
    def __init__(self, base: _Resolver, head: _Resolver) -> None:
        self.base, self.head = base, head
        self.steps = 0
        self.out = _Out()
        self._done: set[tuple[str, str, bool]] = set()

    # operations

    def operation(self, b: Operation, h: Operation) -> None:
        self._done = set()
        self._parameters(b, h)
        self._request_body(b.raw.get("requestBody"), h.raw.get("requestBody"))
        self._responses(b.raw.get("responses"), h.raw.get("responses"))

    def _params(self, resolver: _Resolver, op: Operation) -> dict[tuple[str, str], dict[str, Any]]:
        """(in, name) → parameter; path parameters by position (`#0`), header names lower-cased."""
        found: dict[tuple[str, str], dict[str, Any]] = {}
        positions = {name: i for i, name in enumerate(_PARAM.findall(op.template))}
        for source in (op.path_item.get("parameters"), op.raw.get("parameters")):  # the operation's win
            for raw in source if isinstance(source, list) else []:
                param, _ = resolver.deref(raw)
                if not isinstance(param, dict) or not isinstance(param.get("name"), str):
                    continue
                where, name = str(param.get("in")), param["name"]
                if where == "path" and name in positions:
                    found[(where, f"#{positions[name]}")] = param
                else:
                    found[(where, name.lower() if where == "header" else name)] = param
        return found

    def _parameters(self, b_op: Operation, h_op: Operation) -> None:
        b_params, h_params = self._params(self.base, b_op), self._params(self.head, h_op)
        removed = [k for k in b_params if k not in h_params]
        added = [k for k in h_params if k not in b_params]
        for key in list(removed):  # the same name elsewhere: moved (query → header)
            moved = next((k for k in added if k[1] == key[1] and k[0] != key[0] and k[0] != "path"), None)
            if moved is not None and key[0] != "path":
                removed.remove(key)
                added.remove(moved)
                self.out.add(
                    "parameter_location_changed", _ptr("parameters", *key), key[0], moved[0], breaking=True
                )
        for where in sorted({k[0] for k in removed}):  # one gone and one new in the same place: renamed
            gone = [k for k in removed if k[0] == where]
            new = [k for k in added if k[0] == where]
            if len(gone) == 1 and len(new) == 1:
                removed.remove(gone[0])
                added.remove(new[0])
                h_param = h_params[new[0]]
                detail = (
                    f"{h_param['name']} ({'required' if h_param.get('required') is True else 'optional'})"
                )
                self.out.add(
                    "parameter_renamed", _ptr("parameters", *gone[0]), gone[0][1], detail, breaking=True
                )
        for key in removed:
            self.out.add(
                "parameter_removed",
                _ptr("parameters", *key),
                _param_label(b_params[key]),
                None,
                breaking=True,
            )
        for key in added:
            param = h_params[key]
            required = param.get("required") is True
            self.out.add(
                "parameter_added", _ptr("parameters", *key), None, _param_label(param), breaking=required
            )
        for key, b_param in b_params.items():
            twin = h_params.get(key)
            if twin is None:
                continue
            h_param = twin
            pointer = ("parameters", key[0], b_param["name"] if key[0] == "path" else key[1])
            if h_param.get("required") is True and b_param.get("required") is not True:
                self.out.add("parameter_required", _ptr(*pointer), "optional", "required", breaking=True)
            self.schema(_param_schema(b_param), _param_schema(h_param), pointer, request=True)

    def _request_body(self, b_raw: Any, h_raw: Any) -> None:
        b_body, _ = self.base.deref(b_raw)
        h_body, _ = self.head.deref(h_raw)
        b_has, h_has = isinstance(b_body, dict) and b_body, isinstance(h_body, dict) and h_body
        if not h_has:
            if b_has:
                self.out.add("request_body_removed", "/requestBody", "a body", None, breaking=False)
            return
        assert isinstance(h_body, dict)
        h_required = h_body.get("required") is True
        if not b_has:
            if h_required:
                self.out.add("request_body_required", "/requestBody", None, "required", breaking=True)
            return
        assert isinstance(b_body, dict)
        if h_required and b_body.get("required") is not True:
            self.out.add("request_body_required", "/requestBody", "optional", "required", breaking=True)
        self._content(b_body.get("content"), h_body.get("content"), ("requestBody",), request=True)

    def _responses(self, b_raw: Any, h_raw: Any) -> None:
        b_all = b_raw if isinstance(b_raw, dict) else {}
        h_all = h_raw if isinstance(h_raw, dict) else {}
        b_ok = [str(c) for c in b_all if _success(str(c))]
        h_ok = [str(c) for c in h_all if _success(str(c))]
        gone = [c for c in b_ok if c not in h_ok]
        new = [c for c in h_ok if c not in b_ok]
        if gone and new:
            self.out.add("status_changed", "/responses", ", ".join(gone), ", ".join(new), breaking=True)
        elif gone:
            self.out.add(
                "status_removed", "/responses", ", ".join(gone), ", ".join(h_ok) or None, breaking=True
            )
        elif new:
            self.out.add("status_added", "/responses", ", ".join(b_ok), ", ".join(new), breaking=False)
        for code in b_ok:
            if code in h_ok:
                b_resp, _ = self.base.deref(b_all[code])
                h_resp, _ = self.head.deref(h_all[code])
                if isinstance(b_resp, dict) and isinstance(h_resp, dict):
                    self._content(
                        b_resp.get("content"), h_resp.get("content"), ("responses", code), request=False
                    )

    def _content(self, b_raw: Any, h_raw: Any, where: tuple[str, ...], *, request: bool) -> None:
        b_media = b_raw if isinstance(b_raw, dict) else {}
        h_media = h_raw if isinstance(h_raw, dict) else {}
        for media, b_entry in b_media.items():
            if media not in h_media:
                # A body the server no longer takes, or one the caller no longer gets.
                self.out.add(
                    "media_type_removed",
                    _ptr(*where),
                    str(media),
                    ", ".join(map(str, h_media)) or None,
                    breaking=True,
                )
                continue
            b_entry, _ = self.base.deref(b_entry)
            h_entry, _ = self.head.deref(h_media[media])
            if isinstance(b_entry, dict) and isinstance(h_entry, dict) and "schema" in b_entry:
                self.schema(b_entry.get("schema"), h_entry.get("schema", {}), where, request=request)

    # schemas

    def _tick(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise _Budget

    def schema(self, b_raw: Any, h_raw: Any, path: tuple[str, ...], *, request: bool, depth: int = 0) -> None:
        """Inputs (`request`) may only widen; outputs may only narrow."""
        self._tick()
        if depth > MAX_SCHEMA_DEPTH:
            self.out.add(
                "truncated",
                _ptr(*path),
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
        pointer = _ptr(*path)
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

    def _types(self, b: _View, h: _View, pointer: str, *, request: bool) -> bool:
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

    def _input_rules(self, b: _View, h: _View, pointer: str) -> None:
        b_enum, h_enum = _enum(b.node), _enum(h.node)
        if h_enum is not None:
            if b_enum is None:
                self.out.add("enum_added", pointer, None, _values(h_enum), breaking=True)
            elif not set(b_enum) <= set(h_enum):
                self.out.add("enum_narrowed", pointer, _values(b_enum), _values(h_enum), breaking=True)
        b_pat, h_pat = b.node.get("pattern"), h.node.get("pattern")
        if isinstance(h_pat, str) and h_pat != b_pat:
            self.out.add("pattern_changed", pointer, _text(b_pat), _clip(h_pat), breaking=True)
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

    def _properties(self, b: _View, h: _View, path: tuple[str, ...], *, request: bool, depth: int) -> None:
        names = list(dict.fromkeys([*b.properties, *b.required, *h.properties, *h.required]))
        if not names:
            return
        for name in names:
            child = (*path, name)
            pointer = _ptr(*child)
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

    def _flag(self, resolver: _Resolver, raw: Any, name: str) -> bool:
        node, _ = resolver.deref(raw)
        return isinstance(node, dict) and node.get(name) is True

    def _describe(self, resolver: _Resolver, raw: Any) -> str:
        return self._view(resolver, raw).describe()

    def _view(self, resolver: _Resolver, raw: Any, entered: frozenset[str] = frozenset()) -> _View:
        """`entered`: the refs this view is being built inside (`A: {anyOf: [A, ...]}` would never end)."""
        self._tick()
        node, ref = resolver.deref(raw)
        if ref is not None:
            if ref in entered:
                return _View(types=None, nullable=False, node={}, ref=ref)
            entered = entered | {ref}
        if not isinstance(node, dict):
            return _View(types=None, nullable=False, node={}, ref=ref)
        node = self._merge_all_of(resolver, node)
        nulls: list[Any] = []
        rest: list[Any] = []
        for keyword in ("anyOf", "oneOf"):
            members = node.get(keyword)
            for member in members if isinstance(members, list) else []:
                target, _ = resolver.deref(member)
                (nulls if _is_null(target) else rest).append(member)
        if len(rest) == 1 and "type" not in node:
            inner = self._view(resolver, rest[0], entered)
            inner.nullable = inner.nullable or bool(nulls) or node.get("nullable") is True
            own = {k: v for k, v in node.items() if k not in ("anyOf", "oneOf")}
            inner.node = {**inner.node, **own}
            inner.ref = inner.ref or ref
            return inner
        types, nullable = _types(node)
        if rest and types is None:
            alt_types: set[str] = set()
            for member in rest:
                view = self._view(resolver, member, entered)
                if view.types is None:
                    break
                alt_types |= view.types
                nullable = nullable or view.nullable
            else:
                types = frozenset(alt_types)
        properties = node.get("properties")
        required = node.get("required")
        extra = node.get("additionalProperties")
        return _View(
            types=types,
            nullable=nullable or bool(nulls),
            node=node,
            properties=dict(properties) if isinstance(properties, dict) else {},
            required=frozenset(r for r in required if isinstance(r, str))
            if isinstance(required, list)
            else frozenset(),
            items=node.get("items") if isinstance(node.get("items"), dict) else None,
            extra=extra if isinstance(extra, dict) else None,
            alternatives=rest if len(rest) > 1 else [],
            ref=ref,
        )

    def _merge_all_of(self, resolver: _Resolver, node: dict[str, Any]) -> dict[str, Any]:
        """`allOf` members folded into one schema: properties and `required` united, first type kept."""
        if not isinstance(node.get("allOf"), list):
            return node
        merged: dict[str, Any] = {k: v for k, v in node.items() if k != "allOf"}
        properties: dict[str, Any] = dict(merged.get("properties") or {})
        required: list[Any] = list(merged.get("required") or [])
        pending, seen = list(node["allOf"]), 0
        while pending and seen < 64:
            seen += 1
            member, _ = resolver.deref(pending.pop(0))
            if not isinstance(member, dict):
                continue
            if isinstance(member.get("allOf"), list):
                pending.extend(member["allOf"])
            if isinstance(member.get("properties"), dict):
                properties.update(member["properties"])
            if isinstance(member.get("required"), list):
                required.extend(member["required"])
            for key, value in member.items():
                if key not in ("allOf", "properties", "required"):
                    merged.setdefault(key, value)
        if properties:
            merged["properties"] = properties
        if required:
            merged["required"] = required
        return merged


def _types(node: Mapping[str, Any]) -> tuple[frozenset[str] | None, bool]:
    nullable = node.get("nullable") is True
    declared = node.get("type")
    names = [declared] if isinstance(declared, str) else declared if isinstance(declared, list) else None
    if names is None:
        if "const" in node and node["const"] is None:
            return frozenset(), True
        if isinstance(node.get("properties"), dict):
            return frozenset({"object"}), nullable
        if isinstance(node.get("items"), dict):
            return frozenset({"array"}), nullable
        return None, nullable
    kinds = {str(n) for n in names}
    if "null" in kinds:
        kinds.discard("null")
        nullable = True
    return frozenset(kinds), nullable


def _is_null(node: Any) -> bool:
    if not isinstance(node, dict):
        return False
    types, nullable = _types(node)
    return nullable and types == frozenset()


def _covers(types: frozenset[str], kind: str) -> bool:
    return kind in types or (kind == "integer" and "number" in types)


def _enum(node: Mapping[str, Any]) -> list[str] | None:
    if isinstance(node.get("enum"), list):
        return [_json(v) for v in node["enum"]]
    if "const" in node:
        return [_json(node["const"])]
    return None


def _values(values: Sequence[str]) -> str:
    return _clip(", ".join(values[:20]), 120)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _bound(keyword: str, value: Any) -> str | None:
    return None if value is None else f"{keyword} {_json(value)}"


def _param_schema(param: Mapping[str, Any]) -> Any:
    if "schema" in param:
        return param["schema"]
    content = param.get("content")
    if isinstance(content, dict):
        for entry in content.values():
            if isinstance(entry, dict) and "schema" in entry:
                return entry["schema"]
    return {}


def _param_label(param: Mapping[str, Any]) -> str:
    return f"{param.get('name')} ({'required' if param.get('required') is True else 'optional'})"


def _success(code: str) -> bool:
    return len(code) == 3 and code[0] == "2"


def _ptr(*segments: str) -> str:
    return "".join("/" + s.replace("~", "~0").replace("/", "~1") for s in segments)


def _json(value: Any) -> str:
    return _clip(json.dumps(value, ensure_ascii=False, sort_keys=True, default=str))


def _maybe_clip(text: str | None) -> str | None:
    return None if text is None else _clip(text, 200)


def _text(value: Any) -> str | None:
    return None if value is None else _clip(str(value))


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _items(value: Any) -> Iterator[tuple[Any, Any]]:
    return iter(value.items()) if isinstance(value, dict) else iter(())


# --- probes from the base document --------------------------------------------------------------


def plan_probes(
    document: Document, seen: Sequence[str], *, limit: int, exclude: Collection[str] = ()
) -> tuple[list[PlannedProbe], list[str]]:
    """One concrete request per safe operation of `document`, at most `limit`, and notes.

    `seen`: the paths (with query strings) of requests the service answered in the suites' traffic,
    mined for real ids; `exclude`: paths the response diff already replays.
    """
    resolver = _Resolver(document)
    ops = operations(document)
    harvest = _Harvest([op.template for op in ops], seen)
    planned: list[PlannedProbe] = []
    skipped: list[str] = []
    over = 0
    for op in ops:
        if op.method.lower() not in SAFE:
            continue
        probe = _probe(resolver, op, harvest)
        if probe is None:
            skipped.append(op.label)
        elif probe.path in exclude:
            continue
        elif len(planned) >= limit:
            over += 1
        else:
            planned.append(probe)
    notes = []
    if skipped:
        shown = ", ".join(skipped[:3]) + (f" (+{len(skipped) - 3} more)" if len(skipped) > 3 else "")
        notes.append(
            f"{len(skipped)} safe operation{'s' if len(skipped) != 1 else ''} not probed, no value known for"
            f" a required parameter: {shown}"
        )
    if over:
        notes.append(f"{over} more safe operations not probed: verify.diff.max_requests ({limit}) reached")
    return planned, notes


class _Harvest:
    """Values seen in traffic: path parameters by their place (`/orders/{}`), query values by name."""

    def __init__(self, templates: Sequence[str], seen: Sequence[str]) -> None:
        self.path: dict[tuple[str, ...], list[str]] = {}
        self.query: dict[tuple[str, str], list[str]] = {}  # (normalized template or "", name)
        # By segment count and first segment: a path is matched only against templates it could fit.
        patterns: dict[tuple[int, str | None], list[tuple[str, re.Pattern[str], list[tuple[str, ...]]]]] = {}
        for template in dict.fromkeys(templates):
            pattern, places = _template_pattern(template)
            patterns.setdefault(_shelf(template), []).append((template, pattern, places))
        for full in seen:
            path, _, query = full.partition("?")
            pairs = parse_qsl(query, keep_blank_values=False)[: MAX_VALUES * 4]
            count = path.count("/")
            first = path.split("/")[1] if count else None
            for template, pattern, places in [
                *patterns.get((count, first), []),
                *patterns.get((count, None), []),
            ]:
                match = pattern.fullmatch(path)
                if match is None:
                    continue
                for group, place in enumerate(places, start=1):
                    _remember(self.path.setdefault(place, []), match.group(group))
                for name, value in pairs:
                    _remember(self.query.setdefault((_PARAM.sub("{}", template), name), []), value)
            for name, value in pairs:
                _remember(self.query.setdefault(("", name), []), value)


def _shelf(template: str) -> tuple[int, str | None]:
    """(segments, the first one when it is literal)."""
    segments = template.split("/")[1:]
    first = segments[0] if segments and not _PARAM.search(segments[0]) else None
    return len(segments), first


def _remember(values: list[str], value: str) -> None:
    if value and value not in values and len(values) < MAX_VALUES:
        values.append(value)


def _template_pattern(template: str) -> tuple[re.Pattern[str], list[tuple[str, ...]]]:
    """A regex for the concrete paths of `template`, and per parameter its place: the normalized
    segments up to and including it, so `/orders/{id}` and `/orders/{order_id}/items` share ids."""
    regex, places, segments = "", [], []
    for segment in template.split("/")[1:]:
        normal = _PARAM.sub("{}", segment)
        segments.append(normal)
        regex += "/"
        last = 0
        for match in _PARAM.finditer(segment):
            regex += re.escape(segment[last : match.start()]) + "([^/]+)"
            last = match.end()
            places.append(tuple(segments))
        regex += re.escape(segment[last:])
    return re.compile(regex or "/"), places


def _probe(resolver: _Resolver, op: Operation, harvest: _Harvest) -> PlannedProbe | None:
    params: dict[tuple[str, str], dict[str, Any]] = {}
    for source in (op.path_item.get("parameters"), op.raw.get("parameters")):
        for raw in source if isinstance(source, list) else []:
            param, _ = resolver.deref(raw)
            if isinstance(param, dict) and isinstance(param.get("name"), str):
                params[(str(param.get("in")), param["name"])] = param
    body, _ = resolver.deref(op.raw.get("requestBody"))
    if isinstance(body, dict) and body.get("required") is True:
        return None
    from_traffic = False
    _, places = _template_pattern(op.template)
    path = op.template
    for place, name in zip(places, _PARAM.findall(op.template), strict=True):
        seen = harvest.path.get(place, [])
        param = params.get(("path", name), {})
        if seen:
            value, from_traffic = seen[0], True
        else:
            described = _described(resolver, param)
            if described is None:
                return None
            value = quote(described, safe="")
        path = path.replace("{" + name + "}", value, 1)
    query: list[tuple[str, str]] = []
    headers: dict[str, str] = {}
    template = _PARAM.sub("{}", op.template)
    for (where, name), param in params.items():
        required = param.get("required") is True or where == "path"
        if where == "query":
            seen = harvest.query.get((template, name)) or harvest.query.get(("", name)) or []
            if seen:
                query.append((name, seen[0]))
                from_traffic = True
                continue
            described = _described(resolver, param)
            if described is not None:
                query.append((name, described))
            elif required:
                return None
        elif where == "header" and required:
            described = _described(resolver, param)
            if described is None:
                return None
            headers[name.lower()] = described
        elif where == "cookie" and required:
            return None
    if query:
        path += "?" + urlencode(query)
    return PlannedProbe(op.label, op.method, path, headers, from_traffic)


def _described(resolver: _Resolver, param: Mapping[str, Any]) -> str | None:
    """A value the description gives: an example, an enum's first value, a default; None when none."""
    schema, _ = resolver.deref(_param_schema(param))
    schema = schema if isinstance(schema, dict) else {}
    candidates: list[Any] = []
    for node in (param, schema):
        if "example" in node:
            candidates.append(node["example"])
        examples = node.get("examples")
        if isinstance(examples, dict):  # the parameter's: name → Example object
            for example in examples.values():
                target, _ = resolver.deref(example)
                if isinstance(target, dict) and "value" in target:
                    candidates.append(target["value"])
        elif isinstance(examples, list):  # the schema's (3.1, JSON Schema)
            candidates.extend(examples)
    if isinstance(schema.get("enum"), list):
        candidates.extend(schema["enum"])
    for key in ("const", "default"):
        if key in schema:
            candidates.append(schema[key])
    for value in candidates:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float | str) and str(value) != "":
            return str(value)
    return None
