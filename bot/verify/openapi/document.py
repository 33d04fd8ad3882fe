"""Reading a service's description: parsing under limits, local `$ref`s, the operations it declares.

The documents come from running code, the head one from the agent's branch: they are hostile input. Size,
nesting, node count and `$ref` chains and loops are bounded; what exceeds a bound is a one-line note or a
NotADescription, never a hang or a crash.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote

MAX_DOCUMENT_BYTES: Final = 10 * 1024 * 1024  # a service's description; larger ones are not parsed
MAX_NESTING: Final = 128  # JSON nesting levels of the document
MAX_NODES: Final = 1_000_000  # JSON values in the document
MAX_REF_HOPS: Final = 32  # `$ref`s followed in one chain

METHODS: Final = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
PARAM: Final = re.compile(r"\{([^{}/]*)\}")
"""A path template's parameter, `{sku}`."""


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
        return f"{self.method} {clip(self.template, 200)}"

    @property
    def key(self) -> tuple[str, str]:
        """Path parameters' names do not matter to a caller: `/a/{id}` is `/a/{order_id}`."""
        return self.method, PARAM.sub("{}", self.template)


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


class Resolver:
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
                self.notes.add(f"a $ref chain loops or exceeds {MAX_REF_HOPS} hops at {clip(ref)}")
                return {}, ref
            seen.append(ref)
            target = self._lookup(ref)
            if target is None:
                self.notes.add(f"$ref {clip(ref)} is not a local reference that resolves: not followed")
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
    resolver = Resolver(document)
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


def parameters(resolver: Resolver, op: Operation) -> Iterator[dict[str, Any]]:
    """The parameters of `op` that resolve to an object with a name: the path item's, then the operation's
    (keyed by the caller, so that the operation's win)."""
    for source in (op.path_item.get("parameters"), op.raw.get("parameters")):
        for raw in source if isinstance(source, list) else []:
            param, _ = resolver.deref(raw)
            if isinstance(param, dict) and isinstance(param.get("name"), str):
                yield param


def param_schema(param: Mapping[str, Any]) -> Any:
    if "schema" in param:
        return param["schema"]
    content = param.get("content")
    if isinstance(content, dict):
        for entry in content.values():
            if isinstance(entry, dict) and "schema" in entry:
                return entry["schema"]
    return {}


def clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _items(value: Any) -> Iterator[tuple[Any, Any]]:
    return iter(value.items()) if isinstance(value, dict) else iter(())
