"""Validation of REST requests and responses against GitHub's published OpenAPI subset.

The description is OpenAPI 3.0.3: its schemas are JSON Schema draft 4 plus `nullable`, `discriminator` and a
few annotations. They are converted once (``nullable`` becomes a ``null`` alternative, annotations dropped),
the whole converted document is put in a ``referencing.Registry`` so that ``#/components/...`` refs resolve,
and every schema is checked with ``Draft4Validator`` and an RFC 3339 ``date-time`` format check.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft4Validator, FormatChecker
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

CONTRACTS_ENV = "LOOPGATE_CONTRACTS_DIR"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
DOC_URI = "urn:github-openapi"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

# Keywords of OpenAPI's schema object that JSON Schema draft 4 does not know (or that only annotate).
_DROP = {
    "nullable",
    "discriminator",
    "readOnly",
    "writeOnly",
    "xml",
    "externalDocs",
    "example",
    "examples",
    "deprecated",
}
_SCHEMA_MAPS = {"properties", "patternProperties", "definitions"}
_SCHEMA_ONE = {"items", "additionalProperties", "not"}
_SCHEMA_LISTS = {"allOf", "oneOf", "anyOf"}

_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$",
)


def contracts_dir() -> Path:
    """`$LOOPGATE_CONTRACTS_DIR`, else `../shared/contracts` relative to the project root."""
    env = os.environ.get(CONTRACTS_ENV)
    if env:
        return Path(env)
    return (PROJECT_ROOT / ".." / "shared" / "contracts").resolve()


def openapi_path() -> Path:
    return contracts_dir() / "github" / "openapi" / "subset.json"


def _format_checker() -> FormatChecker:
    def date_time(value: object) -> bool:
        return not isinstance(value, str) or bool(_RFC3339.match(value))

    checker = FormatChecker(formats=())
    checker.checkers["date-time"] = (date_time, ())
    return checker


FORMAT_CHECKER = _format_checker()


def convert_schema(schema: Any) -> Any:
    """One OpenAPI 3.0 schema object as JSON Schema draft 4."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: convert_schema(sub) for name, sub in value.items()}
        elif key in _SCHEMA_ONE:
            out[key] = convert_schema(value)
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [convert_schema(sub) for sub in value]
        elif key in _DROP or key.startswith("x-"):
            continue
        else:
            out[key] = value
    if schema.get("nullable") is True:
        if any(k in out for k in ("$ref", "allOf", "oneOf", "anyOf")):
            return {"anyOf": [{"type": "null"}, out]}
        if "type" in out:
            types = out["type"] if isinstance(out["type"], list) else [out["type"]]
            out["type"] = [*types, "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    return out


def _convert_document(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    components = doc.get("components", {})
    components["schemas"] = {name: convert_schema(s) for name, s in components.get("schemas", {}).items()}

    def walk(node: Any, skip_schemas: bool) -> None:
        if isinstance(node, dict):
            for key, value in list(node.items()):
                if key == "schema":
                    node[key] = convert_schema(value)
                elif skip_schemas and key == "schemas":
                    continue
                else:
                    walk(value, False)
        elif isinstance(node, list):
            for item in node:
                walk(item, False)

    walk(doc.get("paths", {}), False)
    for key, value in components.items():
        if key != "schemas":
            walk(value, False)
    doc["x-fake-schemas"] = {}
    return doc


def format_error(error: ValidationError) -> str:
    where = "/".join(str(p) for p in error.absolute_path) or "<root>"
    message = error.message
    if error.context:
        best = best_match(error.context)
        inner = "/".join(str(p) for p in best.absolute_path) or "<root>"
        message += f" (e.g. {inner}: {best.message})"
    if len(message) > 400:
        message = message[:400] + "..."
    return f"{where}: {message}"


@dataclass(frozen=True)
class Parameter:
    name: str
    location: str
    required: bool
    schema: dict[str, Any]
    multi_segment: bool
    key: str


@dataclass
class Operation:
    method: str
    template: str
    operation_id: str
    spec: dict[str, Any]
    parameters: dict[tuple[str, str], Parameter]
    regex: re.Pattern[str]
    literal_weight: int
    request_schema_key: str | None = None
    request_required: bool = False
    request_content_types: tuple[str, ...] = ()
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)
    response_keys: dict[str, str] = field(default_factory=dict)


class OpenAPIContract:
    """The operations of `subset.json`, matched by method and path template, with their schemas."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or openapi_path()
        raw = json.loads(self.path.read_text())
        self.doc = _convert_document(raw)
        self._extra: dict[str, Any] = self.doc["x-fake-schemas"]
        self.operations: list[Operation] = []
        for template, item in self.doc.get("paths", {}).items():
            common = item.get("parameters", [])
            for method, spec in item.items():
                if method not in METHODS:
                    continue
                self.operations.append(self._operation(method.upper(), template, spec, common))
        # A template with more literal text wins over a looser one (`commits/{ref}/check-runs` over
        # `commits/{ref}`, whose `ref` may span several segments).
        self.operations.sort(key=lambda op: -op.literal_weight)
        registry: Registry[Any] = Registry()
        self.registry = registry.with_resource(
            DOC_URI, Resource.from_contents(self.doc, default_specification=DRAFT4)
        )
        self._validators: dict[str, Draft4Validator] = {}

    # -- building -------------------------------------------------------------------------------------

    def _resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            ref = node["$ref"]
            if not ref.startswith("#/"):
                raise ValueError(f"external ref {ref} in {self.path}")
            target: Any = self.doc
            for part in ref[2:].split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            node = target
        return node

    def _schema_key(self, schema: dict[str, Any], hint: str) -> str:
        key = f"s{len(self._extra)}-{re.sub(r'[^A-Za-z0-9_-]', '_', hint)}"
        self._extra[key] = schema
        return key

    def _operation(
        self, method: str, template: str, spec: dict[str, Any], common: list[dict[str, Any]]
    ) -> Operation:
        params: dict[tuple[str, str], Parameter] = {}
        for raw in [*common, *spec.get("parameters", [])]:
            p = self._resolve(raw)
            schema = p.get("schema", {})
            params[(p["in"], p["name"])] = Parameter(
                name=p["name"],
                location=p["in"],
                required=bool(p.get("required", False)),
                schema=schema,
                multi_segment=bool(p.get("x-multi-segment") or raw.get("x-multi-segment")),
                key=self._schema_key(schema, f"{spec.get('operationId')}-{p['name']}"),
            )
        pattern = "^"
        literal = 0
        for piece in re.split(r"(\{[^}]+\})", template):
            if piece.startswith("{") and piece.endswith("}"):
                name = piece[1:-1]
                param = params.get(("path", name))
                multi = param.multi_segment if param else False
                pattern += f"(?P<{name}>.+)" if multi else f"(?P<{name}>[^/]+)"
            else:
                pattern += re.escape(piece)
                literal += len(piece)
        pattern += "$"
        op_id = spec.get("operationId", f"{method} {template}")
        op = Operation(
            method=method,
            template=template,
            operation_id=op_id,
            spec=spec,
            parameters=params,
            regex=re.compile(pattern),
            literal_weight=literal,
        )
        body = spec.get("requestBody")
        if body:
            body = self._resolve(body)
            op.request_required = bool(body.get("required", False))
            content = body.get("content", {})
            op.request_content_types = tuple(content)
            json_media = next((m for ct, m in content.items() if "json" in ct), None)
            if json_media and "schema" in json_media:
                op.request_schema_key = self._schema_key(json_media["schema"], f"{op_id}-request")
        for status, response in spec.get("responses", {}).items():
            resolved = self._resolve(response)
            op.responses[str(status)] = resolved
            content = resolved.get("content") or {}
            media = content.get("application/json") or next(
                (m for ct, m in content.items() if "json" in ct), None
            )
            if media is not None and "schema" in media:
                op.response_keys[str(status)] = self._schema_key(media["schema"], f"{op_id}-{status}")
        return op

    # -- matching -------------------------------------------------------------------------------------

    def match(self, method: str, raw_path: str) -> tuple[Operation, dict[str, str]] | None:
        """The operation for a method and a raw (still percent-encoded) path, and its decoded path params."""
        for op in self.operations:
            if op.method != method.upper():
                continue
            m = op.regex.match(raw_path)
            if m:
                return op, {k: urllib.parse.unquote(v) for k, v in m.groupdict().items()}
        return None

    def operation(self, operation_id: str) -> Operation:
        for op in self.operations:
            if op.operation_id == operation_id:
                return op
        raise KeyError(operation_id)

    # -- validating -----------------------------------------------------------------------------------

    def validator(self, key: str) -> Draft4Validator:
        found = self._validators.get(key)
        if found is None:
            ref = f"{DOC_URI}#/x-fake-schemas/{key}"
            found = Draft4Validator({"$ref": ref}, registry=self.registry, format_checker=FORMAT_CHECKER)
            self._validators[key] = found
        return found

    def schema_validator(self, component: str) -> Draft4Validator:
        """A validator for `#/components/schemas/<component>`."""
        key = f"component-{component}"
        found = self._validators.get(key)
        if found is None:
            ref = f"{DOC_URI}#/components/schemas/{component}"
            found = Draft4Validator({"$ref": ref}, registry=self.registry, format_checker=FORMAT_CHECKER)
            self._validators[key] = found
        return found

    def errors(self, key: str, instance: Any) -> list[str]:
        return [format_error(e) for e in sorted(self.validator(key).iter_errors(instance), key=str)][:10]

    def validate_request(
        self,
        op: Operation,
        path_params: Mapping[str, str],
        query: Mapping[str, list[str]],
        body: bytes,
        content_type: str | None,
    ) -> tuple[list[str], dict[str, Any], Any]:
        """Problems with a request, its coerced path and query params, and its parsed JSON body."""
        problems: list[str] = []
        values: dict[str, Any] = {}
        for name, raw in path_params.items():
            param = op.parameters.get(("path", name))
            if param is None:
                problems.append(f"path parameter {name!r} is not declared")
                continue
            values[name] = self._param_value(param, [raw], problems)
        declared_query = {p.name: p for p in op.parameters.values() if p.location == "query"}
        for name, raws in query.items():
            param = declared_query.get(name)
            if param is None:
                problems.append(f"query parameter {name!r} is not declared for {op.operation_id}")
                continue
            values[name] = self._param_value(param, raws, problems)
        for name, param in declared_query.items():
            if param.required and name not in query:
                problems.append(f"required query parameter {name!r} is missing")
        parsed: Any = None
        if body:
            if not op.request_content_types:
                problems.append(f"{op.method} {op.template} takes no request body")
            elif content_type is None or "json" not in content_type.lower():
                problems.append(f"request body content type {content_type!r} is not JSON")
            try:
                parsed = json.loads(body)
            except ValueError as exc:
                problems.append(f"request body is not JSON: {exc}")
                return problems, values, None
            if op.request_schema_key is not None:
                problems.extend(f"body {e}" for e in self.errors(op.request_schema_key, parsed))
        elif op.request_required:
            problems.append("request body is required")
        return problems, values, parsed

    def _param_value(self, param: Parameter, raws: list[str], problems: list[str]) -> Any:
        schema = param.schema
        kind = schema.get("type")
        value: Any
        if kind == "array":
            value = [v for raw in raws for v in raw.split(",")]
        else:
            if len(raws) > 1:
                problems.append(f"parameter {param.name!r} given {len(raws)} times")
            raw = raws[0]
            if kind == "integer":
                if not re.fullmatch(r"-?\d+", raw):
                    problems.append(f"parameter {param.name!r}={raw!r} is not an integer")
                    return raw
                value = int(raw)
            elif kind == "number":
                try:
                    value = float(raw)
                except ValueError:
                    problems.append(f"parameter {param.name!r}={raw!r} is not a number")
                    return raw
            elif kind == "boolean":
                if raw not in ("true", "false"):
                    problems.append(f"parameter {param.name!r}={raw!r} is not true/false")
                    return raw
                value = raw == "true"
            else:
                value = raw
        problems.extend(f"parameter {param.name!r}: {e}" for e in self.errors(param.key, value))
        return value

    def response_status_key(self, op: Operation, status: int) -> str | None:
        for key in (str(status), f"{status // 100}XX", "default"):
            if key in op.responses:
                return key
        return None

    def validate_response(self, op: Operation, status: int, body: Any, has_body: bool) -> list[str]:
        """Problems with a response: its status must be declared (an undeclared 4xx must look like
        GitHub's `basic-error`) and its JSON body must match the status's schema."""
        status_key = self.response_status_key(op, status)
        if status_key is None:
            if 400 <= status < 500:
                return [f"error body {e}" for e in self.component_errors("basic-error", body)]
            return [f"status {status} is not declared for {op.operation_id}"]
        if not op.responses[status_key].get("content"):
            return [f"status {status} has no body in the contract"] if has_body else []
        key = op.response_keys.get(status_key)
        if key is None:
            return []
        if not has_body:
            return [f"status {status} needs a JSON body"]
        return [f"response {e}" for e in self.errors(key, body)]

    def component_errors(self, component: str, instance: Any) -> list[str]:
        """Problems of an instance against `#/components/schemas/<component>`."""
        validator = self.schema_validator(component)
        return [format_error(e) for e in sorted(validator.iter_errors(instance), key=str)][:10]


@functools.cache
def load_contract(path: str | None = None) -> OpenAPIContract:
    """The contract, parsed once per process (and per path)."""
    return OpenAPIContract(Path(path) if path else None)


def operation_ids(contract: OpenAPIContract) -> Iterable[str]:
    return (op.operation_id for op in contract.operations)
