"""Strict validation of Kubernetes objects against published schemas, never against one written here.

- Built-in kinds: the *strict* JSON schemas (unknown fields rejected) that PyPI `kubernetes-validate`
  1.37.0 ships for Kubernetes 1.36 (`kubernetes-json-schema/v1.36.0-local-strict/_definitions.json`, draft
  2020-12). A kind is found by the `x-kubernetes-group-version-kind` of its definition.
- Istio and Gateway API kinds: the AJV validators that npm `@kubernetes-models/istio` and
  `@kubernetes-models/gateway-api` generate from the CRDs, run by one long-lived `node` process
  (`crd_validate.mjs`), which also reports unknown fields (see that file for how).
- A few checks the API server makes beyond the schema, because the code under test must get them right:
  DNS names, label syntax, a Deployment's selector matching its template, a Job's restartPolicy.

Anything else is invalid ("no published schema"): a kind nobody can check is never accepted silently.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.resources
import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.github_fake.contract import CONTRACTS_ENV, CONTRACTS_HOME, contracts_dir, package_dir

K8S_SCHEMA_DIR = "kubernetes-json-schema/v1.36.0-local-strict"
CRD_SCRIPT = Path(__file__).with_name("crd_validate.mjs")

# API group → (npm package, module-name prefix in its `_schemas/`).
CRD_PACKAGES = {
    "networking.istio.io": ("@kubernetes-models/istio", "NetworkingIstioIo"),
    "security.istio.io": ("@kubernetes-models/istio", "SecurityIstioIo"),
    "telemetry.istio.io": ("@kubernetes-models/istio", "TelemetryIstioIo"),
    "gateway.networking.k8s.io": ("@kubernetes-models/gateway-api", "IoK8sSigsGatewayApiApis"),
}

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
# Kinds whose names must be DNS-1035 labels (Services become DNS names) or DNS-1123 labels.
_NAME_1035 = {"Service"}
_NAME_LABEL = {"Namespace", "Job"}  # a Job's name becomes the value of its pods' `job-name` label


def split_api_version(api_version: str) -> tuple[str, str]:
    """`apps/v1` → (`apps`, `v1`); `v1` → (``, `v1`)."""
    group, sep, version = api_version.rpartition("/")
    return (group, version) if sep else ("", api_version)


def validate_object(obj: Any) -> list[str]:
    """Every problem with `obj` as the API server with strict field validation would see it; empty = valid.

    Messages start with the field path: `spec.template.spec.containers[0].bogus: unknown field`."""
    if not isinstance(obj, dict):
        return ["<root>: must be an object"]
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not api_version:
        return ["apiVersion: Required value"]
    if not isinstance(kind, str) or not kind:
        return ["kind: Required value"]
    group, version = split_api_version(api_version)
    if group in CRD_PACKAGES:
        errors = _crd_errors(group, version, kind, obj)
    else:
        validator = _k8s_validator(group, version, kind)
        if validator is None:
            return [f"<root>: no published schema for {api_version}/{kind}"]
        errors = _schema_errors(validator, obj)
    if errors is None:
        return [f"<root>: no published schema for {api_version}/{kind}"]
    return errors + semantic_errors(obj)


# ---- built-in kinds: kubernetes-validate's strict JSON schemas ----


@functools.cache
def _definitions() -> tuple[dict[str, Any], dict[tuple[str, str, str], str]]:
    """The strict `_definitions.json` and an index (group, version, kind) → definition name."""
    ref = importlib.resources.files("kubernetes_validate").joinpath(K8S_SCHEMA_DIR, "_definitions.json")
    document: dict[str, Any] = json.loads(ref.read_text(encoding="utf-8"))
    index: dict[tuple[str, str, str], str] = {}
    for name, definition in document["$defs"].items():
        gvks = definition.get("x-kubernetes-group-version-kind") or []
        if len(gvks) == 1:  # shared types (DeleteOptions, WatchEvent) list many; no top-level kind is one
            gvk = gvks[0]
            index[(gvk.get("group", ""), gvk["version"], gvk["kind"])] = name
    return document, index


@functools.cache
def _k8s_validator(group: str, version: str, kind: str) -> Draft202012Validator | None:
    document, index = _definitions()
    name = index.get((group, version, kind))
    if name is None:
        return None
    base = document.get("$id") or "urn:kubernetes-definitions"
    registry: Registry[Any] = Registry().with_resource(base, Resource(document, specification=DRAFT202012))
    return Draft202012Validator({"$ref": f"{base}#/$defs/{name}"}, registry=registry)


def _schema_errors(validator: Draft202012Validator, obj: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for error in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
        out.extend(_describe(error))
    return out


def _describe(error: ValidationError) -> list[str]:
    path = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        extra = [key for key in error.instance if key not in known]
        if extra:
            return [f"{dotted([*path, key])}: unknown field" for key in extra]
    return [f"{dotted(path)}: {error.message}"]


def dotted(path: list[Any]) -> str:
    """`['spec', 'containers', 0, 'x']` → `spec.containers[0].x` (the API server's field paths)."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


def _pointer_to_dotted(pointer: str) -> str:
    parts: list[Any] = []
    for raw in pointer.split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        parts.append(int(part) if part.isdigit() else part)
    return dotted(parts)


# ---- custom resources: the CRD validators of @kubernetes-models, run by node ----


def _crd_module(group: str, version: str, kind: str) -> Path | None:
    package, prefix = CRD_PACKAGES[group]
    module = package_dir(package) / "_schemas" / f"{prefix}{version[:1].upper()}{version[1:]}{kind}.js"
    return module if module.is_file() else None


def _crd_errors(group: str, version: str, kind: str, obj: dict[str, Any]) -> list[str] | None:
    module = _crd_module(group, version, kind)
    if module is None:
        return None
    answer = CRD_VALIDATOR.check(module, obj)
    return [f"{_pointer_to_dotted(e['path'])}: {e['message']}" for e in answer]


class CrdValidator:
    """One `node crd_validate.mjs` for the whole process, started on first use, restarted if it died.

    Requests are serialised by a lock: the process answers one JSON line per request line, in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._next_id = 0

    def _start(self) -> subprocess.Popen[str]:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not on PATH: the CRD validators need it (run `make contracts`)")
        modules = contracts_dir()
        if not (modules / "@kubernetes-models").is_dir():
            raise FileNotFoundError(
                f"@kubernetes-models/* is not installed in {modules}: run `make contracts` (npm ci in"
                f" {CONTRACTS_HOME}), or point ${CONTRACTS_ENV} at a node_modules that has it"
            )
        return subprocess.Popen(
            [node, str(CRD_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            bufsize=1,
            cwd=str(modules),
            env={**os.environ, "NODE_NO_WARNINGS": "1"},
        )

    def check(self, module: Path, obj: dict[str, Any]) -> list[dict[str, str]]:
        """The validator's errors for `obj` (`path` a JSON pointer, `message`)."""
        with self._lock:
            for attempt in (1, 2):
                if self._proc is None or self._proc.poll() is not None:
                    self._proc = self._start()
                self._next_id += 1
                line = json.dumps({"id": self._next_id, "module": str(module), "object": obj})
                try:
                    assert self._proc.stdin is not None and self._proc.stdout is not None
                    self._proc.stdin.write(line + "\n")
                    self._proc.stdin.flush()
                    reply = self._proc.stdout.readline()
                except (BrokenPipeError, OSError):
                    reply = ""
                if not reply:
                    self._kill()
                    if attempt == 2:
                        raise RuntimeError("the CRD validator (node crd_validate.mjs) died twice")
                    continue
                answer = json.loads(reply)
                if answer.get("fatal"):
                    raise RuntimeError(f"the CRD validator failed on {module.name}: {answer['fatal']}")
                errors: list[dict[str, str]] = answer["errors"]
                return errors
        raise AssertionError("unreachable")

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None

    def close(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.stdin is not None:
                self._proc.stdin.close()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=5)
            self._kill()


CRD_VALIDATOR = CrdValidator()
atexit.register(CRD_VALIDATOR.close)


# ---- what the API server checks beyond the schema ----


def semantic_errors(obj: dict[str, Any]) -> list[str]:
    """Names, labels and the few cross-field rules of the real API server that the schema cannot say."""
    out: list[str] = []
    kind = obj.get("kind")
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return ["metadata: Required value"]
    name = meta.get("name")
    if isinstance(name, str) and name:
        out.extend(_name_errors(str(kind), name))
    elif not meta.get("generateName"):
        out.append("metadata.name: Required value: name or generateName is required")
    out.extend(_label_errors("metadata.labels", meta.get("labels")))
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    if kind == "Deployment" and isinstance(spec, dict):
        out.extend(_selector_errors(spec))
    template = spec.get("template") if isinstance(spec, dict) else None
    if isinstance(template, dict):
        tmeta = template.get("metadata") or {}
        out.extend(_label_errors("spec.template.metadata.labels", tmeta.get("labels")))
        pod_spec = template.get("spec") or {}
        policy = pod_spec.get("restartPolicy") if isinstance(pod_spec, dict) else None
        if kind == "Job" and policy not in ("OnFailure", "Never"):
            out.append(
                "spec.template.spec.restartPolicy: Unsupported value:"
                f' {policy!r}: supported values: "OnFailure", "Never"'
            )
        if kind == "Deployment" and policy not in (None, "Always"):
            out.append(
                f'spec.template.spec.restartPolicy: Unsupported value: "{policy}": supported values: "Always"'
            )
    return out


def _name_errors(kind: str, name: str) -> list[str]:
    if kind in _NAME_1035:
        ok, limit, what = bool(_DNS_1035.match(name)), 63, "a DNS-1035 label"
    elif kind in _NAME_LABEL:
        ok, limit, what = bool(_DNS_LABEL.match(name)), 63, "a DNS-1123 label"
    else:
        ok, limit, what = bool(_DNS_SUBDOMAIN.match(name)), 253, "a lowercase RFC 1123 subdomain"
    out = []
    if not ok:
        out.append(f'metadata.name: Invalid value: "{name}": must be {what}')
    if len(name) > limit:
        out.append(f'metadata.name: Invalid value: "{name}": must be no more than {limit} characters')
    return out


def _label_errors(where: str, labels: Any) -> list[str]:
    if not isinstance(labels, dict):
        return []
    out = []
    for key, value in labels.items():
        prefix, _, name = str(key).rpartition("/")
        if (
            (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)))
            or len(name) > 63
            or not (_LABEL_NAME.match(name))
        ):
            out.append(
                f'{where}: Invalid value: "{key}": name part must consist of alphanumerics, "-", "_" or "."'
            )
        if isinstance(value, str) and value and (len(value) > 63 or not _LABEL_NAME.match(value)):
            out.append(
                f'{where}: Invalid value: "{value}": a valid label value must be 63 characters or less'
            )
    return out


def _selector_errors(spec: dict[str, Any]) -> list[str]:
    selector = spec.get("selector")
    template = spec.get("template")
    if not isinstance(selector, dict) or not isinstance(template, dict):
        return []
    labels = (template.get("metadata") or {}).get("labels") or {}
    match = selector.get("matchLabels") or {}
    if not match and not selector.get("matchExpressions"):
        return ["spec.selector: Invalid value: empty selector is invalid for deployment"]
    if any(labels.get(k) != v for k, v in match.items()):
        return ["spec.template.metadata.labels: Invalid value: `selector` does not match template `labels`"]
    return []
