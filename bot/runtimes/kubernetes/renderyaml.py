"""How `loopgate render` prints: the comment that says what the documents are and what offline rendering
could not know, then the objects as multi-document YAML people can read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml


def header(
    *,
    key: str,
    routing: str,
    services: Sequence[str],
    head_sha: str,
    base_sha: str,
    controls: Sequence[str] = (),
) -> str:
    """The YAML comment that says what the documents are, and what offline rendering could not know."""
    lines = [
        f"loopgate render: the objects the Kubernetes runtime would create or patch for sandbox {key}",
        f"(routing {routing}; forked services {', '.join(services)}; head {head_sha}, base {base_sha}).",
    ]
    if controls:
        lines += [
            f"With its controls {', '.join(controls)} (verify.diff.control): each forks the same services",
            "at the base commit under its own key, its data copies come from the sandbox's copy Job (one",
            "dump), and its objects carry loopgate.dev/control-of. The runtime draws control keys at random.",
        ]
    lines += [
        "Rendered offline: each baseline Deployment is a SKELETON made from .loopgate.yml (one container,",
        "the configured port, pods labelled app=<deployment>, a Service named like the service); the runtime",
        "copies the real pod template and rewrites the labels the real Services select by.",
    ]
    if routing == "istio":
        lines += [
            "Istio: where the service already has a VirtualService the runtime adds its loopgate-<key> route",
            "to it; the loopgate-owned VirtualService shown here is what it creates where none exists.",
        ]
    if routing == "none":
        lines.append(
            "Routing none: no routes; the mesh must send tagged requests to the fork Services itself."
        )
    lines += [
        "Suite Jobs carry a random nonce per run. Check against your cluster:",
        "  loopgate render ... | kubectl apply --dry-run=server -f -",
    ]
    return "".join(f"# {line}\n" for line in lines)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the suite wrapper script) as literal blocks, so people can read them."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(documents: Sequence[dict[str, Any]], comment: str = "") -> str:
    """Multi-document YAML (`---` before each object), keys in the builders' order, after `comment`."""
    body = yaml.dump_all(
        documents, Dumper=_Dumper, sort_keys=False, explicit_start=True, width=4096, allow_unicode=True
    )
    return comment + body
