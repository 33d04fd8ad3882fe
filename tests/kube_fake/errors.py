"""The API server's errors, each able to render itself as the `Status` object a real server answers with.

The official client parses an error's body as a `Status` (kind, reason, code, details.causes), and code
under test branches on `reason`/`status` (409 Conflict → retry, 404 → create, 422 → a bug), so the fake
answers exactly that shape. The Store raises these; the HTTP server turns them into responses.
"""

from __future__ import annotations

from typing import Any


class KubeError(Exception):
    """An API error: HTTP `code`, machine `reason`, human `message`, optional `details`."""

    code = 500
    reason = "InternalError"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def status(self) -> dict[str, Any]:
        """The `Status` object (meta/v1) for this error."""
        out: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            out["details"] = self.details
        return out


def _details(resource: str | None, name: str | None) -> dict[str, Any]:
    """`details` names the resource as the server does: `kind` is the plural, `group` the API group."""
    details: dict[str, Any] = {}
    if name:
        details["name"] = name
    if resource:
        plural, _, group = resource.partition(".")
        if group:
            details["group"] = group
        details["kind"] = plural
    return details


class NotFound(KubeError):
    code = 404
    reason = "NotFound"

    def __init__(self, resource: str, name: str) -> None:
        super().__init__(f'{resource} "{name}" not found', details=_details(resource, name))
        self.resource = resource
        self.name = name


class AlreadyExists(KubeError):
    code = 409
    reason = "AlreadyExists"

    def __init__(self, resource: str, name: str) -> None:
        super().__init__(f'{resource} "{name}" already exists', details=_details(resource, name))


class Conflict(KubeError):
    code = 409
    reason = "Conflict"

    def __init__(self, resource: str, name: str, why: str | None = None) -> None:
        why = (
            why
            or "the object has been modified; please apply your changes to the latest version and try again"
        )
        super().__init__(
            f'Operation cannot be fulfilled on {resource} "{name}": {why}', details=_details(resource, name)
        )


class Invalid(KubeError):
    """A body the schema (or the server's own checks) rejects: one message per problem, each starting
    with the field path (`spec.template.spec.containers[0].bogus: unknown field`)."""

    code = 422
    reason = "Invalid"

    def __init__(
        self, messages: list[str], *, kind: str = "", name: str = "", resource: str | None = None
    ) -> None:
        self.messages = list(messages)
        label = f'{kind} "{name}"' if kind else "object"
        super().__init__(f"{label} is invalid: [{', '.join(self.messages)}]")
        details = _details(resource, name)
        details["causes"] = [_cause(m) for m in self.messages]
        self.details = details


def _cause(message: str) -> dict[str, str]:
    field, sep, text = message.partition(": ")
    if not sep:
        return {"reason": "FieldValueInvalid", "message": message}
    reason = "FieldValueNotFound" if "unknown field" in text else "FieldValueInvalid"
    return {"reason": reason, "message": text, "field": field}


class BadRequest(KubeError):
    code = 400
    reason = "BadRequest"


class Gone(KubeError):
    """A watch asked for a resourceVersion older than the history the server keeps."""

    code = 410
    reason = "Expired"


class MethodNotAllowed(KubeError):
    code = 405
    reason = "MethodNotAllowed"


class ServiceUnavailable(KubeError):
    code = 503
    reason = "ServiceUnavailable"


class UnsupportedMediaType(KubeError):
    code = 415
    reason = "UnsupportedMediaType"
