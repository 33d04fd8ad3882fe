"""Probes planned from the *base* document: a concrete request for every safe operation (GET, HEAD).

Path and query parameters are filled from values seen in the suites' traffic and from the description
(examples, enums, defaults); an operation without a known value for a required parameter is skipped
rather than sent with an invented one that would only 404. The head document comes from the agent's code
and never decides what is sent.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, quote, urlencode

from bot.config.schema import SAFE_METHODS
from bot.verify.openapi.document import (
    PARAM,
    Document,
    Operation,
    Resolver,
    operations,
    param_schema,
    parameters,
)

MAX_VALUES: Final = 5  # values remembered per parameter from traffic


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


def plan_probes(
    document: Document, seen: Sequence[str], *, limit: int, exclude: Collection[str] = ()
) -> tuple[list[PlannedProbe], list[str]]:
    """One concrete request per safe operation of `document`, at most `limit`, and notes.

    `seen`: the paths (with query strings) of requests the service answered in the suites' traffic,
    mined for real ids; `exclude`: paths the response diff already replays.
    """
    resolver = Resolver(document)
    ops = operations(document)
    harvest = _Harvest([op.template for op in ops], seen)
    planned: list[PlannedProbe] = []
    skipped: list[str] = []
    over = 0
    for op in ops:
        if op.method not in SAFE_METHODS:
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
                    _remember(self.query.setdefault((PARAM.sub("{}", template), name), []), value)
            for name, value in pairs:
                _remember(self.query.setdefault(("", name), []), value)


def _shelf(template: str) -> tuple[int, str | None]:
    """(segments, the first one when it is literal)."""
    segments = template.split("/")[1:]
    first = segments[0] if segments and not PARAM.search(segments[0]) else None
    return len(segments), first


def _remember(values: list[str], value: str) -> None:
    if value and value not in values and len(values) < MAX_VALUES:
        values.append(value)


def _template_pattern(template: str) -> tuple[re.Pattern[str], list[tuple[str, ...]]]:
    """A regex for the concrete paths of `template`, and per parameter its place: the normalized
    segments up to and including it, so `/orders/{id}` and `/orders/{order_id}/items` share ids."""
    regex, places, segments = "", [], []
    for segment in template.split("/")[1:]:
        normal = PARAM.sub("{}", segment)
        segments.append(normal)
        regex += "/"
        last = 0
        for match in PARAM.finditer(segment):
            regex += re.escape(segment[last : match.start()]) + "([^/]+)"
            last = match.end()
            places.append(tuple(segments))
        regex += re.escape(segment[last:])
    return re.compile(regex or "/"), places


def _probe(resolver: Resolver, op: Operation, harvest: _Harvest) -> PlannedProbe | None:
    params: dict[tuple[str, str], dict[str, Any]] = {}
    for param in parameters(resolver, op):
        params[(str(param.get("in")), param["name"])] = param
    body, _ = resolver.deref(op.raw.get("requestBody"))
    if isinstance(body, dict) and body.get("required") is True:
        return None
    from_traffic = False
    _, places = _template_pattern(op.template)
    path = op.template
    for place, name in zip(places, PARAM.findall(op.template), strict=True):
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
    template = PARAM.sub("{}", op.template)
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


def _described(resolver: Resolver, param: Mapping[str, Any]) -> str | None:
    """A value the description gives: an example, an enum's first value, a default; None when none."""
    schema, _ = resolver.deref(param_schema(param))
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
