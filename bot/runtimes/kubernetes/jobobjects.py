"""Suites and builds as run-once Jobs, built as plain data, and the protocol by which a suite's JUnit
report comes back: base64 in the pod's log, between delimiter lines only this run's nonce can write.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import secrets
from collections.abc import Mapping
from typing import Any

from bot.config.kubernetes import KubernetesBuild
from bot.config.schema import Config
from bot.runtimes.kubernetes.names import (
    Obj,
    _metadata,
    _require_key,
    baseline_service_name,
    env_name,
    labels,
    service_host,
)
from bot.runtimes.protocol import JUNIT_MAX_BYTES

NONCE_RE = re.compile(r"[A-Za-z0-9]{8,64}")
JUNIT_DIR = "/tmp/loopgate"
JUNIT_PATH = f"{JUNIT_DIR}/junit.xml"
KANIKO_IMAGE = "gcr.io/kaniko-project/executor:v1.23.2"
JOB_TTL_S = 300
"""Finished Jobs stay this long for people to read; the runtime deletes them itself when done."""


def suite_env(
    config: Config, key: str | None, service_names: Mapping[str, str] | None = None
) -> dict[str, str]:
    """What a suite Job is told: routing key and baggage (none for a baseline-targeted, untagged run),
    every service's in-cluster URL (the mesh routes the tagged request), and where to write JUnit.

    `service_names` maps a service to its baseline Service's name when the runtime knows it."""
    env: dict[str, str] = {}
    if key is not None:
        _require_key(key)
        env["LOOPGATE_ROUTING_KEY"] = key
        env["LOOPGATE_BAGGAGE"] = f"{config.routing.baggage_member}={key}"
    for name, service in sorted(config.services.items()):
        spec = service.kubernetes
        if spec is None:
            continue
        svc = (service_names or {}).get(name) or baseline_service_name(name, spec)
        env[env_name(name)] = f"http://{service_host(svc, spec.namespace)}:{spec.port}"
    env["LOOPGATE_JUNIT_XML"] = JUNIT_PATH
    return env


def new_nonce() -> str:
    """Random per run: test output cannot know it, so it cannot forge the JUnit delimiters."""
    return secrets.token_hex(16)


def junit_begin(nonce: str) -> str:
    return f"----- loopgate junit begin {nonce} -----"


def junit_end(nonce: str) -> str:
    return f"----- loopgate junit end {nonce} -----"


def suite_script(nonce: str) -> str:
    """The `sh -c` wrapper of a suite's command (given as "$@"): run it, print the JUnit file base64
    between the nonce's delimiter lines (after a newline, in case the output did not end with one),
    ask an Istio sidecar to quit so the Job can complete, and exit with the suite's own code.

    Needs only `sh` and `base64`; `mkdir`, `curl` and `wget` are used when present. No `$(` or `$$`:
    Kubernetes expands those in a container's command."""
    if NONCE_RE.fullmatch(nonce) is None:
        raise ValueError("nonce must be 8-64 letters or digits")
    return "\n".join(
        [
            'dir="${LOOPGATE_JUNIT_XML%/*}"',
            '[ -d "$dir" ] || mkdir -p "$dir" 2>/dev/null',
            '"$@"',
            "code=$?",
            'if [ -s "$LOOPGATE_JUNIT_XML" ]; then',
            f"  printf '\\n%s\\n' '{junit_begin(nonce)}'",
            '  base64 "$LOOPGATE_JUNIT_XML"',
            f"  printf '%s\\n' '{junit_end(nonce)}'",
            "fi",
            "quit=http://127.0.0.1:15020/quitquitquit",
            "if command -v curl >/dev/null 2>&1; then curl -fsS -m 2 -X POST $quit >/dev/null 2>&1",
            "elif command -v wget >/dev/null 2>&1; then wget -q -T 2 --post-data= -O /dev/null $quit"
            " >/dev/null 2>&1",
            "fi",
            "exit $code",
        ]
    )


def _job(
    *,
    name: str,
    namespace: str,
    label_set: Mapping[str, str],
    expires: str,
    timeout_s: float,
    pod_spec: Obj,
    pod_annotations: Mapping[str, str] | None = None,
    pod_labels: Mapping[str, str] | None = None,
) -> Obj:
    """A run-once Job: no retry (a second attempt would hide the first one's failure), killed at the
    timeout, kept a while after it ends; no service account token: suites and builds need no API."""
    template_meta: Obj = {"labels": {**label_set, **(pod_labels or {})}}
    if pod_annotations:
        template_meta["annotations"] = dict(pod_annotations)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(name, namespace, label_set, expires),
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": max(1, math.ceil(timeout_s)),
            "ttlSecondsAfterFinished": JOB_TTL_S,
            "template": {
                "metadata": template_meta,
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    **pod_spec,
                },
            },
        },
    }


def suite_job(
    *,
    name: str,
    namespace: str,
    key: str,
    suite_name: str,
    image: str,
    command: list[str],
    env: Mapping[str, str],
    timeout_s: float,
    nonce: str,
    expires_at: str,
) -> dict[str, Any]:
    """A suite as a Job: its command wrapped by `suite_script` so the JUnit report comes back in the log.

    The pod joins the mesh (its requests must be routed by the sandbox's routes), and waits for the
    sidecar before starting; `/tmp/loopgate` is an emptyDir, writable even on a read-only root."""
    full_env = dict(env)
    full_env.setdefault("LOOPGATE_JUNIT_XML", JUNIT_PATH)
    container = {
        "name": "suite",
        "image": image,
        "command": ["sh", "-c", suite_script(nonce), "loopgate-suite", *command],
        "env": [{"name": k, "value": v} for k, v in full_env.items()],
        "volumeMounts": [{"name": "loopgate", "mountPath": JUNIT_DIR}],
    }
    pod_spec = {"containers": [container], "volumes": [{"name": "loopgate", "emptyDir": {}}]}
    return _job(
        name=name,
        namespace=namespace,
        label_set=labels(key, "suite"),
        expires=expires_at,
        timeout_s=timeout_s,
        pod_spec=pod_spec,
        pod_annotations={
            "proxy.istio.io/config": '{"holdApplicationUntilProxyStarts": true}',
            "loopgate.dev/suite": suite_name,
        },
    )


def build_job(
    *,
    name: str,
    namespace: str,
    key: str,
    service: str,
    build: KubernetesBuild,
    git_context: str,
    destination: str,
    expires_at: str,
) -> dict[str, Any]:
    """A Kaniko build of the service's image from the git context at the merge commit, pushed to
    `destination`; the registry Secret (`.dockerconfigjson`) becomes Kaniko's `config.json`. No mesh
    sidecar: a sidecar that never exits would keep the Job from completing."""
    args = [f"--context={git_context}", f"--dockerfile={build.dockerfile}", f"--destination={destination}"]
    if build.context not in ("", "."):
        args.append(f"--context-sub-path={build.context}")
    container: Obj = {"name": "kaniko", "image": KANIKO_IMAGE, "args": args}
    pod_spec: Obj = {"containers": [container]}
    if build.secret:
        container["volumeMounts"] = [{"name": "registry", "mountPath": "/kaniko/.docker", "readOnly": True}]
        pod_spec["volumes"] = [
            {
                "name": "registry",
                "secret": {
                    "secretName": build.secret,
                    "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
                },
            }
        ]
    return _job(
        name=name,
        namespace=namespace,
        label_set=labels(key, "build", service),
        expires=expires_at,
        timeout_s=build.timeout,
        pod_spec=pod_spec,
        pod_labels={"sidecar.istio.io/inject": "false"},
    )


def junit_from_log(log: str, nonce: str) -> tuple[bytes | None, str]:
    """The JUnit report the wrapper printed (None when none, or when it does not decode, or exceeds
    JUNIT_MAX_BYTES) and the log without the block. Only delimiters with this run's nonce count, and the
    last complete block wins; a begin line must start a line."""
    begin, end = junit_begin(nonce), junit_end(nonce)
    start = log.rfind(begin + "\n")
    while start > 0 and log[start - 1] != "\n":
        start = log.rfind(begin + "\n", 0, start)
    if start < 0:
        return None, log
    payload_at = start + len(begin) + 1
    stop = log.find("\n" + end, payload_at - 1)
    if stop < 0:
        return None, log
    after = stop + 1 + len(end)
    if after < len(log) and log[after] == "\n":
        after += 1
    try:
        report = base64.b64decode("".join(log[payload_at:stop].split()), validate=True)
    except (binascii.Error, ValueError):
        return None, log
    cut = start - 1 if start > 0 else 0  # the newline the wrapper printed before `begin`
    rest = log[:cut] + log[after:]
    return (report if len(report) <= JUNIT_MAX_BYTES else None), rest
