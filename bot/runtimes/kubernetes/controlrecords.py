"""A control's record: the ConfigMap that says sandbox `owner` has control `key`, made before any
object of the control exists and deleted after the last (DESIGN "Control and candidate"). Teardown reads
it to find an owner's controls; gc removes a control whose record is gone or expired."""

from __future__ import annotations

from datetime import datetime

from bot.runtimes.kubernetes import names
from bot.runtimes.kubernetes.client import CONFIG_MAP, MANAGED, Kube, Obj

CONTROL_ROLE = "control"


def control_record(*, owner: str, key: str, namespace: str, expires_at: str) -> Obj:
    """The ConfigMap that says sandbox `owner` has control `key`: made before the control has anything,
    gone after it has nothing."""
    labels = names.labels(owner, CONTROL_ROLE)
    labels[names.CONTROL_LABEL] = key
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": names.control_record_name(owner, key),
            "namespace": namespace,
            "labels": labels,
            "annotations": {names.EXPIRES_AT: expires_at},
        },
        "data": {"control": key, "control-of": owner},
    }


def record_selector(owner: str | None = None) -> str:
    """Control records: every one loopgate made, or `owner`'s."""
    selector = f"{MANAGED},{names.ROLE_LABEL}={CONTROL_ROLE}"
    return selector + (f",{names.SANDBOX_LABEL}={owner}" if owner is not None else "")


def recorded_controls(kube: Kube, namespace: str, owner: str) -> list[str]:
    """The routing keys of `owner`'s controls, as their records in `namespace` say (one list call)."""
    found = []
    for record in kube.list(CONFIG_MAP, namespace, label_selector=record_selector(owner)).items:
        key = str(((record.get("metadata") or {}).get("labels") or {}).get(names.CONTROL_LABEL) or "")
        if names.is_routing_key(key) and key not in found:
            found.append(key)
    return found


def owned_pairs(records: list[Obj], now: datetime) -> set[tuple[str, str]]:
    """(owner, control) of every record not yet expired: the controls whose owner still stands."""
    pairs = set()
    for record in records:
        labels = (record.get("metadata") or {}).get("labels") or {}
        owner, key = labels.get(names.SANDBOX_LABEL), labels.get(names.CONTROL_LABEL)
        stamp = ((record.get("metadata") or {}).get("annotations") or {}).get(names.EXPIRES_AT)
        until = names.parse_expires_at(str(stamp)) if stamp else None
        if owner and key and (until is None or until > now):
            pairs.add((str(owner), str(key)))
    return pairs
