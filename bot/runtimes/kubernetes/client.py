"""The cluster as loopgate talks to it: an ApiClient from a kubeconfig or the pod's service account, and
`Kube`, a small typed layer of plain-dict REST calls over it.

The official client is untyped; `Any` stays in this module. Objects go in and come out as the JSON the
API server speaks (no generated models: a model drops fields it does not know, and a fork must copy
the baseline's pod template exactly). Errors become loopgate's: `NotFound` and `Conflict` for the
callers that act on them, `InfrastructureError` (one line, naming the cause) for the rest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from bot.config import InfrastructureError
from bot.runtimes.kubernetes import names
from bot.runtimes.kubernetes.kinds import CONFIG_MAP as CONFIG_MAP
from bot.runtimes.kubernetes.kinds import DEPLOYMENT as DEPLOYMENT
from bot.runtimes.kubernetes.kinds import EVENT as EVENT
from bot.runtimes.kubernetes.kinds import HTTP_ROUTE as HTTP_ROUTE
from bot.runtimes.kubernetes.kinds import JOB as JOB
from bot.runtimes.kubernetes.kinds import KINDS as KINDS
from bot.runtimes.kubernetes.kinds import POD as POD
from bot.runtimes.kubernetes.kinds import REFERENCE_GRANT as REFERENCE_GRANT
from bot.runtimes.kubernetes.kinds import SECRET as SECRET
from bot.runtimes.kubernetes.kinds import SERVICE as SERVICE
from bot.runtimes.kubernetes.kinds import VIRTUAL_SERVICE as VIRTUAL_SERVICE
from bot.runtimes.kubernetes.kinds import Kind as Kind
from bot.runtimes.kubernetes.names import EXPIRES_AT as EXPIRES_AT
from bot.runtimes.kubernetes.names import ROLE_LABEL as ROLE_LABEL
from bot.runtimes.kubernetes.names import SANDBOX_LABEL as SANDBOX_LABEL
from bot.runtimes.kubernetes.names import SERVICE_LABEL as SERVICE_LABEL

Obj = dict[str, Any]
"""A Kubernetes object as JSON."""


MANAGED_BY = names.MANAGED_BY_LABEL
MANAGED = f"{names.MANAGED_BY_LABEL}={names.MANAGED_BY}"


class NotFound(Exception):
    """404: the object (or the kind: a CRD that is not installed) is not there."""


class MethodNotAllowed(Exception):
    """405: the server does not offer this verb on this resource (e.g. deletecollection on an old one)."""


class Forbidden(InfrastructureError):
    """401/403: the ServiceAccount may not do this (an infrastructure error wherever it is not caught)."""


class Conflict(Exception):
    """409: a stale resourceVersion on replace, or a name that already exists on create."""

    def __init__(self, message: str, *, exists: bool) -> None:
        super().__init__(message)
        self.exists = exists


@dataclass(frozen=True)
class Listed:
    items: list[Obj]
    resource_version: str


def kubeconfig_path(kubeconfig: Path | None) -> str | None:
    """`LOOPGATE_KUBECONFIG` (the settings'), else `KUBECONFIG`, else `~/.kube/config` when it exists."""
    if kubeconfig is not None:
        return str(kubeconfig)
    if os.environ.get("KUBECONFIG"):
        return os.environ["KUBECONFIG"]
    default = Path.home() / ".kube" / "config"
    return str(default) if default.exists() else None


def api_client(kubeconfig: Path | None = None, context: str | None = None) -> Any:
    """An ApiClient from the kubeconfig (`kubeconfig_path`, with `context`, default its current one),
    else the pod's service account; InfrastructureError, one line, when neither works."""
    from kubernetes import client, config  # untyped; imported here so `bot` loads without it

    path = kubeconfig_path(kubeconfig)
    try:
        if path is not None:
            return config.new_client_from_config(config_file=path, context=context, persist_config=False)
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration=configuration)
    except Exception as exc:
        where = path or "the in-cluster service account (no kubeconfig found)"
        cause = " ".join(str(exc).split()) or type(exc).__name__
        raise InfrastructureError(f"cannot load the cluster's credentials from {where}: {cause}") from None


def context_name(kubeconfig: Path | None = None, context: str | None = None) -> str:
    """The kubeconfig context loopgate uses (the current one when `context` is None), or `in-cluster`."""
    if context is not None:
        return context
    from kubernetes import config

    path = kubeconfig_path(kubeconfig)
    if path is None:
        return "in-cluster"
    try:
        _, current = config.list_kube_config_contexts(config_file=path)
        return str(current["name"])
    except Exception:
        return "default"


def _message(exc: Any) -> str:
    """The API server's own message for a failed call (its Status `message`), one line."""
    body = getattr(exc, "body", None)
    try:
        status = json.loads(body) if body else {}
        message = status.get("message") if isinstance(status, dict) else None
    except (ValueError, TypeError):
        message = None
    if not message:
        message = f"{getattr(exc, 'status', '?')} {getattr(exc, 'reason', '') or ''}".strip()
        if body:
            message += f": {body if isinstance(body, str) else body[:300]!r}"
    return " ".join(str(message).split())


class Kube:
    """Plain-dict REST calls through the official client's ApiClient (auth, TLS, proxies as configured)."""

    def __init__(self, api: Any, *, request_timeout: float = 30.0) -> None:
        self.api = api
        self.request_timeout = request_timeout

    @property
    def host(self) -> str:
        return str(self.api.configuration.host)

    def call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | bool] | None = None,
        body: object = None,
        timeout: float | None = None,
        stream: bool = False,
    ) -> Any:
        """One request; the urllib3 response. ApiException is left to the caller (see `_raise`)."""
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.call_api(
                path,
                method,
                query_params=[(k, _query_value(v)) for k, v in (query or {}).items()],
                header_params={"Accept": "application/json", "Content-Type": "application/json"},
                body=body,
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _preload_content=False,
                _request_timeout=timeout or self.request_timeout,
            )
        except ApiException:
            raise
        except Exception as exc:
            cause = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise InfrastructureError(f"the Kubernetes API at {self.host} did not answer: {cause}") from None

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | bool] | None = None,
        body: object = None,
        what: str,
    ) -> Obj:
        """A JSON request; its JSON answer. 404 → NotFound, 409 → Conflict, others InfrastructureError."""
        from kubernetes.client.exceptions import ApiException

        try:
            response = self.call(method, path, query=query, body=body)
        except ApiException as exc:
            raise _translate(exc, what) from None
        try:
            data = response.data
        finally:
            response.release_conn()
        try:
            return cast(Obj, json.loads(data)) if data else {}
        except ValueError:
            raise InfrastructureError(f"{what}: the API server answered with something not JSON") from None

    # -- verbs -------------------------------------------------------------------------------------

    def get(self, kind: Kind, namespace: str | None, name: str) -> Obj:
        return self.request("GET", kind.path(namespace, name), what=f"get {kind.kind} {namespace}/{name}")

    def find(self, kind: Kind, namespace: str | None, name: str) -> Obj | None:
        try:
            return self.get(kind, namespace, name)
        except NotFound:
            return None

    def list(
        self,
        kind: Kind,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> Listed:
        """One list call (cluster-wide when `namespace` is None); NotFound when the kind is not served."""
        query: dict[str, str | int | bool] = {}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        where = f"in {namespace}" if namespace else "cluster-wide"
        answer = self.request("GET", kind.path(namespace), query=query, what=f"list {kind.plural} {where}")
        items = answer.get("items") or []
        for item in items:  # a list's items carry no kind; callers (and replace) want whole objects
            item.setdefault("kind", kind.kind)
            item.setdefault("apiVersion", kind.api_version)
        return Listed(items, str((answer.get("metadata") or {}).get("resourceVersion") or ""))

    def create(self, obj: Obj) -> Obj:
        kind, namespace, name = _identity(obj)
        return self.request(
            "POST", kind.path(namespace), body=obj, what=f"create {kind.kind} {namespace}/{name}"
        )

    def replace(self, obj: Obj) -> Obj:
        kind, namespace, name = _identity(obj)
        return self.request(
            "PUT", kind.path(namespace, name), body=obj, what=f"replace {kind.kind} {namespace}/{name}"
        )

    def delete(
        self,
        kind: Kind,
        namespace: str | None,
        name: str,
        *,
        resource_version: str | None = None,
        propagation: str = "Background",
    ) -> bool:
        """False when it was already gone; Conflict when `resource_version` no longer holds."""
        options: Obj = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation}
        if resource_version is not None:
            options["preconditions"] = {"resourceVersion": resource_version}
        try:
            self.request(
                "DELETE",
                kind.path(namespace, name),
                body=options,
                what=f"delete {kind.kind} {namespace}/{name}",
            )
        except NotFound:
            return False
        return True

    def delete_collection(self, kind: Kind, namespace: str, label_selector: str) -> None:
        """Everything of `kind` in `namespace` the selector matches (Background propagation); nothing
        when the kind is not served; one by one where the server has no deletecollection for it."""
        options: Obj = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        try:
            self.request(
                "DELETE",
                kind.path(namespace),
                query={"labelSelector": label_selector},
                body=options,
                what=f"delete {kind.plural} in {namespace} ({label_selector})",
            )
        except NotFound:
            pass
        except MethodNotAllowed:
            for item in self.list(kind, namespace, label_selector=label_selector).items:
                self.delete(kind, namespace, str(item["metadata"]["name"]))

    def watch(
        self,
        kind: Kind,
        namespace: str,
        *,
        field_selector: str,
        resource_version: str,
        timeout_s: float,
    ) -> Iterator[tuple[str, Obj]]:
        """(type, object) events from `resource_version` on, for at most `timeout_s` (server side, with a
        client-side read timeout a little longer). A 410 Gone raises Conflict(exists=False): re-list."""
        from kubernetes.client.exceptions import ApiException
        from kubernetes.watch.watch import iter_resp_lines

        seconds = max(1, int(timeout_s + 0.999))
        query: dict[str, str | int | bool] = {
            "watch": True,
            "fieldSelector": field_selector,
            "resourceVersion": resource_version,
            "timeoutSeconds": seconds,
            "allowWatchBookmarks": False,
        }
        try:
            response = self.call("GET", kind.path(namespace), query=query, timeout=seconds + 5)
        except ApiException as exc:
            raise _translate(exc, f"watch {kind.plural} in {namespace}") from None
        try:
            for line in iter_resp_lines(response):
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    if obj.get("code") == 410:
                        raise Conflict(str(obj.get("message") or "watch expired"), exists=False)
                    raise InfrastructureError(
                        f"watch {kind.plural} in {namespace}: {obj.get('message') or obj}"
                    )
                yield str(event.get("type")), obj
        except (Conflict, InfrastructureError):
            raise
        except Exception:
            return  # the stream ended or timed out on our side: the caller re-lists
        finally:
            # Closed, not only released: a watch left early still has its stream unread, and a
            # connection handed back so would fail the next request made on it.
            response.close()
            response.release_conn()

    def log(
        self,
        namespace: str,
        pod: str,
        container: str | None,
        *,
        tail_lines: int | None = None,
        previous: bool = False,
        since_seconds: int | None = None,
    ) -> str:
        """A container's log ('' when there is none yet, e.g. a container that never started)."""
        from kubernetes.client.exceptions import ApiException

        query: dict[str, str | int | bool] = {}
        if container:
            query["container"] = container
        if tail_lines is not None:
            query["tailLines"] = tail_lines
        if previous:
            query["previous"] = True
        if since_seconds is not None:
            query["sinceSeconds"] = since_seconds
        try:
            response = self.call("GET", POD.path(namespace, pod, "log"), query=query)
        except ApiException as exc:
            if exc.status in (400, 404):
                return ""
            raise _translate(exc, f"read the log of {namespace}/{pod}") from None
        try:
            data = response.data
        finally:
            response.release_conn()
        return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data or "")


def _query_value(value: str | int | bool) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _identity(obj: Obj) -> tuple[Kind, str | None, str]:
    kind = KINDS.get(str(obj.get("kind")))
    if kind is None:
        raise InfrastructureError(f"loopgate does not manage objects of kind {obj.get('kind')}")
    api_version = str(obj.get("apiVersion") or kind.api_version)
    group, _, version = api_version.rpartition("/")
    served = Kind(kind.kind, group, version, kind.plural, kind.namespaced)
    metadata = obj.get("metadata") or {}
    return served, metadata.get("namespace"), str(metadata.get("name"))


def _reason(exc: Any) -> str | None:
    try:
        status = json.loads(getattr(exc, "body", None) or "{}")
    except (ValueError, TypeError):
        return None
    return str(status.get("reason")) if isinstance(status, dict) and status.get("reason") else None


def _translate(exc: Any, what: str) -> Exception:
    status = getattr(exc, "status", None)
    message = _message(exc)
    if status == 404:
        return NotFound(f"{what}: {message}")
    if status == 409:
        exists = _reason(exc) == "AlreadyExists" or "already exists" in message.lower()
        return Conflict(f"{what}: {message}", exists=exists)
    if status == 410:
        return Conflict(f"{what}: {message}", exists=False)
    if status == 405:
        return MethodNotAllowed(f"{what}: {message}")
    if status == 422:
        return InfrastructureError(f"{what}: the API server refused it as invalid: {message}")
    if status in (401, 403):
        return Forbidden(f"{what}: loopgate is not allowed to ({status}): {message}")
    return InfrastructureError(f"{what}: {message}")


def selector_string(selector: Mapping[str, Any] | None) -> str:
    """A LabelSelector object (matchLabels + matchExpressions) as a label selector query string."""
    if not selector:
        return ""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expression in selector.get("matchExpressions") or []:
        key, op, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(str(key))
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)
