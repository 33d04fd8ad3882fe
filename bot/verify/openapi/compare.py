"""Base document against head document, operation by operation: what a caller relying on the base
contract would trip over.

An operation matches by method and path template (path parameters' names aside). A removed operation, a
removed, renamed or moved parameter, a new required parameter, an optional parameter becoming required, a
newly required request body, a removed media type and a removed success status are breaking; the schemas
under them are compared by the rules of `rules.py`. New operations and new optional parameters are
reported, not breaking.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from bot.evidence import DiffResult, Finding
from bot.verify.openapi.document import (
    PARAM,
    Document,
    Operation,
    Resolver,
    operations,
    param_schema,
    parameters,
)
from bot.verify.openapi.rules import MAX_STEPS, Budget, Out, SchemaRules, ptr

MAX_ADDED_LISTED: Final = 20  # new operations listed one by one; the rest are counted


def compare_documents(
    base: Document, head: Document, service: str, *, max_steps: int = MAX_STEPS
) -> tuple[list[DiffResult], list[str]]:
    """One DiffResult per operation with findings (request `OpenAPI GET /items/{sku}`), and notes.

    Pointers are relative to the operation: `/parameters/query/limit`, `/requestBody/items/*/sku`,
    `/responses/200/total`; "" is the operation itself.
    """
    comparer = _Comparer(Resolver(base), Resolver(head), max_steps)
    head_ops = {op.key: op for op in operations(head)}
    base_ops = operations(base)
    results: list[DiffResult] = []
    notes: list[str] = []
    base_keys = set()
    try:
        for op in base_ops:
            base_keys.add(op.key)
            out = Out()
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
    except Budget:
        comparer.out.add(
            "truncated", "", None, f"over {max_steps:,} schema comparisons: stopped here", breaking=False
        )
        if comparer.out.findings:
            results.append(
                DiffResult(request=f"OpenAPI {op.label}", service=service, findings=comparer.out.result())
            )
        notes.append(
            f"the OpenAPI descriptions need over {max_steps:,} schema comparisons: compared up to {op.label}"
        )
    for side, resolver in (("base", comparer.base), ("head", comparer.head)):
        notes.extend(f"{side} OpenAPI description: {note}" for note in sorted(resolver.notes)[:5])
    return results, notes


class _Comparer(SchemaRules):
    """The schema rules, and the operation's own: parameters, request body, responses."""

    def operation(self, b: Operation, h: Operation) -> None:
        self._done = set()
        self._parameters(b, h)
        self._request_body(b.raw.get("requestBody"), h.raw.get("requestBody"))
        self._responses(b.raw.get("responses"), h.raw.get("responses"))

    def _params(self, resolver: Resolver, op: Operation) -> dict[tuple[str, str], dict[str, Any]]:
        """(in, name) → parameter; path parameters by position (`#0`), header names lower-cased."""
        found: dict[tuple[str, str], dict[str, Any]] = {}
        positions = {name: i for i, name in enumerate(PARAM.findall(op.template))}
        for param in parameters(resolver, op):  # the operation's win
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
                    "parameter_location_changed", ptr("parameters", *key), key[0], moved[0], breaking=True
                )
        for where in sorted({k[0] for k in removed}):  # one gone and one new in the same place: renamed
            gone = [k for k in removed if k[0] == where]
            new = [k for k in added if k[0] == where]
            if len(gone) == 1 and len(new) == 1:
                removed.remove(gone[0])
                added.remove(new[0])
                detail = _param_label(h_params[new[0]])
                self.out.add(
                    "parameter_renamed", ptr("parameters", *gone[0]), gone[0][1], detail, breaking=True
                )
        for key in removed:
            self.out.add(
                "parameter_removed",
                ptr("parameters", *key),
                _param_label(b_params[key]),
                None,
                breaking=True,
            )
        for key in added:
            param = h_params[key]
            required = param.get("required") is True
            self.out.add(
                "parameter_added", ptr("parameters", *key), None, _param_label(param), breaking=required
            )
        for key, b_param in b_params.items():
            twin = h_params.get(key)
            if twin is None:
                continue
            h_param = twin
            pointer = ("parameters", key[0], b_param["name"] if key[0] == "path" else key[1])
            if h_param.get("required") is True and b_param.get("required") is not True:
                self.out.add("parameter_required", ptr(*pointer), "optional", "required", breaking=True)
            self.schema(param_schema(b_param), param_schema(h_param), pointer, request=True)

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
                    ptr(*where),
                    str(media),
                    ", ".join(map(str, h_media)) or None,
                    breaking=True,
                )
                continue
            b_entry, _ = self.base.deref(b_entry)
            h_entry, _ = self.head.deref(h_media[media])
            if isinstance(b_entry, dict) and isinstance(h_entry, dict) and "schema" in b_entry:
                self.schema(b_entry.get("schema"), h_entry.get("schema", {}), where, request=request)


def _param_label(param: Mapping[str, Any]) -> str:
    return f"{param.get('name')} ({'required' if param.get('required') is True else 'optional'})"


def _success(code: str) -> bool:
    return len(code) == 3 and code[0] == "2"
