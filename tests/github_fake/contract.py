"""Validation of REST requests and responses against GitHub's published OpenAPI description.

The contracts come from npm packages pinned in `tests/contracts/package.json` (versions) and its
`package-lock.json` (sha512), which `make contracts` installs into `tests/contracts/node_modules`;
`$LOOPGATE_CONTRACTS_DIR` may name another `node_modules` laid out the same way. The REST description is
the whole of `@octokit/openapi`'s `generated/api.github.com.json`, with the few Octokit changes that alter
what is valid undone (`_undo_octokit`).

The description is OpenAPI 3.0.3: its schemas are JSON Schema draft 4 plus `nullable`, `discriminator` and a
few annotations. Operations are indexed by method and path template when the document loads; a schema is
converted (``nullable`` becomes a ``null`` alternative, annotations dropped) only when a validator first
needs it, together with the components it references, into a document held by a ``referencing.Registry``
so that ``#/components/schemas/...`` refs resolve. Every schema is checked with ``Draft4Validator`` and an
RFC 3339 ``date-time`` format check.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
import urllib.parse
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft4Validator, FormatChecker
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

CONTRACTS_ENV = "LOOPGATE_CONTRACTS_DIR"
# package.json (the pinned versions), package-lock.json (their sha512) and node_modules once installed.
CONTRACTS_HOME = Path(__file__).resolve().parents[1] / "contracts"
OPENAPI_PACKAGE = "@octokit/openapi"
OPENAPI_FILE = "generated/api.github.com.json"
DOC_URI = "urn:github-openapi"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_SCHEMA_REF = "#/components/schemas/"

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
    """The `node_modules` holding the contract packages: `$LOOPGATE_CONTRACTS_DIR`, else the one that
    `make contracts` installs in `tests/contracts/`."""
    env = os.environ.get(CONTRACTS_ENV)
    return Path(env) if env else CONTRACTS_HOME / "node_modules"


@functools.cache
def pinned_versions() -> dict[str, str]:
    """The exact version of each contract package, from `tests/contracts/package.json`."""
    manifest = json.loads((CONTRACTS_HOME / "package.json").read_text(encoding="utf-8"))
    pins: dict[str, str] = manifest["dependencies"]
    return pins


def package_dir(name: str) -> Path:
    """An installed contract package, checked to be the pinned version."""
    pinned = pinned_versions()[name]
    directory = contracts_dir() / name
    manifest = directory / "package.json"
    if not manifest.is_file():
        raise FileNotFoundError(
            f"the contract package {name} {pinned} is not installed in {contracts_dir()}:"
            f" run `make contracts` (npm ci in {CONTRACTS_HOME}), or point ${CONTRACTS_ENV} at a node_modules"
            " that has it"
        )
    version = json.loads(manifest.read_text(encoding="utf-8")).get("version")
    if version != pinned:
        raise RuntimeError(f"{directory} is {name} {version}, the tests pin {pinned}: run `make contracts`")
    return directory


def openapi_path() -> Path:
    return package_dir(OPENAPI_PACKAGE) / OPENAPI_FILE


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


def _refs(node: Any) -> Iterator[str]:
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, dict):
            for key, value in current.items():
                if key == "$ref" and isinstance(value, str):
                    yield value
                else:
                    stack.append(value)
        elif isinstance(current, list):
            stack.extend(current)


# Upstream's rule for POST /repos/{owner}/{repo}/check-runs (github/rest-api-description,
# descriptions/api.github.com/api.github.com.json): a completed run needs a conclusion.
_CHECKS_CREATE_ONE_OF = [
    {
        "properties": {"status": {"enum": ["completed"]}},
        "required": ["status", "conclusion"],
        "additionalProperties": True,
    },
    {"properties": {"status": {"enum": ["queued", "in_progress"]}}, "additionalProperties": True},
]


def _undo_octokit(doc: dict[str, Any]) -> list[str]:
    """Undo, in place, the changes @octokit/openapi makes to GitHub's file that alter what is valid or how
    a request is matched (octokit/openapi scripts/build.mjs and scripts/overrides/); returns notes.

    - It adds `GET /repos/{owner}/{repo}/compare/{base}...{head}` with upstream's operationId
      `repos/compare-commits`, and renames upstream's `GET .../compare/{basehead}` to
      `repos/compare-commits-with-basehead`. The added template has more literal text, so it would win every
      compare request: it is dropped and the upstream name restored. It also adds
      `GET /orgs/{org}/organization-fine-grained-permissions`, dropped too.
    - It replaces upstream's `POST /repos/{owner}/{repo}/check-runs` with a stale 2023 copy
      (scripts/overrides/checks-create.json). What differs: (1) the request body schema lacks upstream's
      `oneOf` (with a `status` discriminator) that requires `conclusion` when `status` is `completed`, so a
      run completed without a conclusion, which GitHub rejects, would pass; (2) its `status` enum lacks
      `waiting`, `requested` and `pending` (only GitHub Actions may set them), which upstream's `oneOf`
      rejects all the same, so validity does not change; (3) descriptions and documentation links. No other
      file of the package (ghec, ghes-3.17 to 3.19, the deref builds) has the upstream operation, so
      upstream's `oneOf` (transcribed above) is put back, only while the schema has none.
    """
    notes: list[str] = []
    paths: dict[str, Any] = doc["paths"]
    for added in (
        "/repos/{owner}/{repo}/compare/{base}...{head}",
        "/orgs/{org}/organization-fine-grained-permissions",
    ):
        if paths.get(added, {}).pop("get", None) is not None:
            notes.append(f"dropped Octokit's GET {added}")
            if not any(m in METHODS for m in paths[added]):
                del paths[added]
    compare = paths.get("/repos/{owner}/{repo}/compare/{basehead}", {}).get("get")
    if compare and compare.get("operationId") == "repos/compare-commits-with-basehead":
        compare["operationId"] = "repos/compare-commits"
        notes.append("restored operationId repos/compare-commits")
    create = paths.get("/repos/{owner}/{repo}/check-runs", {}).get("post")
    if create:
        schema = create["requestBody"]["content"]["application/json"]["schema"]
        if "oneOf" not in schema:
            schema["oneOf"] = _CHECKS_CREATE_ONE_OF
            notes.append("checks/create: put back upstream's oneOf (completed needs a conclusion)")
    return notes


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
    path_groups: dict[str, str] = field(default_factory=dict)  # regex group -> path parameter


class OpenAPIContract:
    """The operations of GitHub's REST description, matched by method and path template, with their
    schemas. `served`, when given, names the operations the fake answers: a request that matches any other
    operation is reported as unknown (`match` returns None) rather than handed to a missing handler."""

    def __init__(self, path: Path | None = None, served: Collection[str] | None = None) -> None:
        self.path = path or openapi_path()
        self.source: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
        self.notes = _undo_octokit(self.source)
        self.served = frozenset(served) if served is not None else None
        # The converted schemas, filled as validators need them: the registry's one resource.
        self.doc: dict[str, Any] = {"components": {"schemas": {}}, "x-fake-schemas": {}}
        self._raw: dict[str, Any] = {}
        self.operations: list[Operation] = []
        for template, item in self.source.get("paths", {}).items():
            common = item.get("parameters", [])
            for method, spec in item.items():
                if method not in METHODS:
                    continue
                self.operations.append(self._operation(method.upper(), template, spec, common))
        # A template with more literal text wins over a looser one (`commits/{ref}/check-runs` over
        # `commits/{ref}`, whose `ref` may span several segments).
        self.operations.sort(key=lambda op: -op.literal_weight)
        self._by_method: dict[str, list[Operation]] = {}
        for op in self.operations:
            self._by_method.setdefault(op.method, []).append(op)
        registry: Registry[Any] = Registry()
        self.registry = registry.with_resource(
            DOC_URI, Resource.from_contents(self.doc, default_specification=DRAFT4)
        )
        self._validators: dict[str, Draft4Validator] = {}
        self._lock = threading.Lock()

    # -- building -------------------------------------------------------------------------------------

    def _resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            ref = node["$ref"]
            if not ref.startswith("#/"):
                raise ValueError(f"external ref {ref} in {self.path}")
            target: Any = self.source
            for part in ref[2:].split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            node = target
        return node

    def _schema_key(self, schema: dict[str, Any], hint: str) -> str:
        key = f"s{len(self._raw)}-{re.sub(r'[^A-Za-z0-9_-]', '_', hint)}"
        self._raw[key] = schema
        return key

    def _include(self, schema: Any) -> Any:
        """A schema converted, after every component it references, transitively, is in `self.doc`."""
        converted = convert_schema(schema)
        components: dict[str, Any] = self.doc["components"]["schemas"]
        pending = list(_refs(converted))
        while pending:
            ref = pending.pop()
            if not ref.startswith(_SCHEMA_REF):
                raise ValueError(f"unsupported $ref {ref} in a schema of {self.path}")
            name = ref[len(_SCHEMA_REF) :].replace("~1", "/").replace("~0", "~")
            if name not in components:
                components[name] = convert_schema(self.source["components"]["schemas"][name])
                pending.extend(_refs(components[name]))
        return converted

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
        groups: dict[str, str] = {}
        for piece in re.split(r"(\{[^}]+\})", template):
            if piece.startswith("{") and piece.endswith("}"):
                name = piece[1:-1]
                param = params.get(("path", name))
                multi = param.multi_segment if param else False
                group = f"p{len(groups)}"  # names such as `enterprise-team` are no regex group names
                groups[group] = name
                pattern += f"(?P<{group}>.+)" if multi else f"(?P<{group}>[^/]+)"
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
            path_groups=groups,
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
        """The operation for a method and a raw (still percent-encoded) path, and its decoded path params;
        None when no operation has that path, or when the best match is not one the fake serves."""
        found = self.lookup(method, raw_path)
        if found is None or (self.served is not None and found[0].operation_id not in self.served):
            return None
        return found

    def lookup(self, method: str, raw_path: str) -> tuple[Operation, dict[str, str]] | None:
        """The operation of GitHub's API for a method and a raw path, served by the fake or not."""
        for op in self._by_method.get(method.upper(), []):
            m = op.regex.match(raw_path)
            if m:
                return op, {op.path_groups[k]: urllib.parse.unquote(v) for k, v in m.groupdict().items()}
        return None

    def operation(self, operation_id: str) -> Operation:
        for op in self.operations:
            if op.operation_id == operation_id:
                return op
        raise KeyError(operation_id)

    # -- validating -----------------------------------------------------------------------------------

    def validator(self, key: str) -> Draft4Validator:
        with self._lock:
            found = self._validators.get(key)
            if found is None:
                self.doc["x-fake-schemas"][key] = self._include(self._raw[key])
                ref = f"{DOC_URI}#/x-fake-schemas/{key}"
                found = Draft4Validator({"$ref": ref}, registry=self.registry, format_checker=FORMAT_CHECKER)
                self._validators[key] = found
            return found

    def schema_validator(self, component: str) -> Draft4Validator:
        """A validator for `#/components/schemas/<component>`."""
        key = f"component-{component}"
        with self._lock:
            found = self._validators.get(key)
            if found is None:
                self._include({"$ref": f"{_SCHEMA_REF}{component}"})
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


def served_operation_ids() -> frozenset[str]:
    """The operations the fake answers: the keys of its handler table."""
    from tests.github_fake.server import GitHubFake  # the server imports this module

    return frozenset(GitHubFake.__new__(GitHubFake).rest_handlers())


@functools.cache
def load_contract(path: str | None = None) -> OpenAPIContract:
    """The contract, parsed once per process (a test session) and per path, limited to the operations the
    fake serves."""
    return OpenAPIContract(Path(path) if path else None, served=served_operation_ids())


def operation_ids(contract: OpenAPIContract) -> Iterable[str]:
    return (op.operation_id for op in contract.operations)
