"""What the comparison rules see of one schema: a View, with refs, `allOf` and the nullable forms reduced.

Views are built from hostile documents: every one counts against the comparison budget (`tick`), and a
schema that contains itself (`A: {anyOf: [A, ...]}`) is entered once per chain of refs, never forever.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bot.verify.openapi.document import Resolver


@dataclass
class View:
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


def build_view(
    resolver: Resolver, raw: Any, tick: Callable[[], None], entered: frozenset[str] = frozenset()
) -> View:
    """`entered`: the refs this view is being built inside (`A: {anyOf: [A, ...]}` would never end)."""
    tick()
    node, ref = resolver.deref(raw)
    if ref is not None:
        if ref in entered:
            return View(types=None, nullable=False, node={}, ref=ref)
        entered = entered | {ref}
    if not isinstance(node, dict):
        return View(types=None, nullable=False, node={}, ref=ref)
    node = _merge_all_of(resolver, node)
    nulls: list[Any] = []
    rest: list[Any] = []
    for keyword in ("anyOf", "oneOf"):
        members = node.get(keyword)
        for member in members if isinstance(members, list) else []:
            target, _ = resolver.deref(member)
            (nulls if _is_null(target) else rest).append(member)
    if len(rest) == 1 and "type" not in node:
        inner = build_view(resolver, rest[0], tick, entered)
        inner.nullable = inner.nullable or bool(nulls) or node.get("nullable") is True
        own = {k: v for k, v in node.items() if k not in ("anyOf", "oneOf")}
        inner.node = {**inner.node, **own}
        inner.ref = inner.ref or ref
        return inner
    types, nullable = _types(node)
    if rest and types is None:
        alt_types: set[str] = set()
        for member in rest:
            view = build_view(resolver, member, tick, entered)
            if view.types is None:
                break
            alt_types |= view.types
            nullable = nullable or view.nullable
        else:
            types = frozenset(alt_types)
    properties = node.get("properties")
    required = node.get("required")
    extra = node.get("additionalProperties")
    return View(
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


def _merge_all_of(resolver: Resolver, node: dict[str, Any]) -> dict[str, Any]:
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
