"""The fake cluster's controllers and node: Deployments and Jobs become Pods, Pods become local processes.

Code under test waits for what a real cluster reports -- a Deployment's `Available` condition, a pod's
`ImagePullBackOff`, a Job's `Complete`/`Failed` condition and its pod's log -- and sends traffic to
what really runs. So this module does, on loopback only, what kube-controller-manager (Deployment and
Job controllers) and a kubelet do, and reports it in the same fields, reasons and event wordings:

- `Deployment` → `spec.replicas` Pods (rolling update on a template change: new pods first, old ones
  removed once the new are ready, so a fork that never starts leaves the old pods serving);
- `Job` → a Pod per attempt, `backoffLimit`, `activeDeadlineSeconds`, `ttlSecondsAfterFinished`;
- `Pod` → its first container runs as a local process group (others, such as `istio-proxy`, are only
  log sinks): image from `ImageSpec`, env (with `$(VAR)` expansion and cluster DNS), volumes as
  per-pod directories (`PodVolumes`), readiness probed over loopback for as long as it runs, restarts
  with back-off, stdout+stderr into the Store's log.

Where it knowingly differs from a cluster: init containers are not run and non-first containers never
run (they report Running); a Job's pod completes with its first container even if a sidecar is
declared; one loopback port is bound per pod (the first containerPort); Deployments own their pods
directly (no ReplicaSets; `pod-template-hash` still tells template versions apart).

Everything is level-triggered: a Store event only queues the object's key, and one worker thread
reconciles from what the Store holds now (plus a periodic resync), so missed or repeated events are
harmless and no Store call is made from inside the Store's callback.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import heapq
import http.client
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from .errors import AlreadyExists, NotFound
from .images import ImageSpec

PORTS_ANNOTATION = "fake.loopgate.test/ports"
NODE_NAME = "fake-node"
LOOPBACK = "127.0.0.1"
KILL_GRACE_S = 2.0
RESYNC_S = 1.0
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 8.0
BACKOFF_RESET_AFTER_S = 10.0
PROBE_INTERVAL_S = 0.1
# The characters Kubernetes uses for generated name suffixes (no vowels, no look-alikes).
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
# The environment every process starts from: enough to find an interpreter, nothing of the test's own.
_PASSED_ENV = ("HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ")
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")

Obj = dict[str, Any]
Key = tuple[str, str, str]


class Resolver(Protocol):
    """Cluster DNS as the fake emulates it: rewrites Service addresses in an env value (see Mesh.dns)."""

    def __call__(self, value: str, namespace: str) -> str: ...


def now_rfc3339() -> str:
    """Kubernetes timestamps: RFC 3339, UTC, whole seconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(value: str) -> float:
    return datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()


def random_suffix(length: int = 5) -> str:
    return "".join(random.choice(_SUFFIX_ALPHABET) for _ in range(length))


def owner_reference(owner: Obj) -> Obj:
    """The controller ownerReference a controller puts on what it creates (garbage collection follows it)."""
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owned_by(obj: Obj, owner: Obj) -> bool:
    uid = owner["metadata"]["uid"]
    return any(ref.get("uid") == uid for ref in obj["metadata"].get("ownerReferences") or [])


def selector_matches(selector: Mapping[str, str] | None, labels: Mapping[str, str] | None) -> bool:
    """Equality-based selector (a Service's `spec.selector`); an empty selector selects nothing."""
    if not selector:
        return False
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


def pod_is_ready(pod: Obj) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def pod_ports(pod: Obj) -> dict[str, int]:
    """The `fake.loopgate.test/ports` annotation: containerPort (as a string) → loopback port."""
    raw = (pod["metadata"].get("annotations") or {}).get(PORTS_ANNOTATION)
    return {str(k): int(v) for k, v in json.loads(raw).items()} if raw else {}


def free_port() -> int:
    """A loopback port nobody listens on right now (the process binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _condition(
    old: list[Obj],
    type_: str,
    status: str,
    reason: str | None = None,
    message: str | None = None,
    *,
    update_time: bool = False,
) -> Obj:
    """A condition whose lastTransitionTime moves only when its status does (and, for Deployments,
    lastUpdateTime only when its reason or message does), as controllers keep them."""
    previous = next((c for c in old if c.get("type") == type_), None) or {}
    stamp = now_rfc3339()
    same = previous.get("status") == status
    out: Obj = {"type": type_, "status": status}
    if update_time:
        unchanged = same and previous.get("reason") == reason and previous.get("message") == message
        out["lastUpdateTime"] = previous.get("lastUpdateTime", stamp) if unchanged else stamp
    out["lastTransitionTime"] = previous.get("lastTransitionTime", stamp) if same else stamp
    if reason:
        out["reason"] = reason
    if message:
        out["message"] = message
    return out


def _strip_times(value: Any) -> Any:
    """A status without its timestamps: what decides whether anything changed at all."""
    if isinstance(value, dict):
        return {k: _strip_times(v) for k, v in value.items() if not k.endswith(("Time", "At"))}
    if isinstance(value, list):
        return [_strip_times(v) for v in value]
    return value


def _omit_zero(status: Obj, *fields: str) -> Obj:
    """Counts the API server leaves out when zero (`omitempty`): clients must cope with their absence."""
    for name in fields:
        if not status.get(name):
            status.pop(name, None)
    return status


class WorkQueue:
    """Keys to reconcile, each at most once in the queue, some only after a delay."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._ready: list[Key] = []
        self._queued: set[Key] = set()
        self._later: list[tuple[float, int, Key]] = []
        self._seq = 0
        self._closed = False

    def add(self, key: Key) -> None:
        with self._cond:
            if key not in self._queued:
                self._queued.add(key)
                self._ready.append(key)
                self._cond.notify()

    def add_after(self, key: Key, delay: float) -> None:
        with self._cond:
            self._seq += 1
            heapq.heappush(self._later, (time.monotonic() + max(0.0, delay), self._seq, key))
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def get(self) -> Key | None:
        """The next key, waiting as long as needed; None once closed."""
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                while self._later and self._later[0][0] <= now:
                    _, _, key = heapq.heappop(self._later)
                    if key not in self._queued:
                        self._queued.add(key)
                        self._ready.append(key)
                if self._ready:
                    key = self._ready.pop(0)
                    self._queued.discard(key)
                    return key
                timeout = self._later[0][0] - now if self._later else None
                self._cond.wait(timeout)
            return None


# --------------------------------------------------------------------------------------------- pods


class ConfigError(Exception):
    """The container cannot be configured (a missing Secret/ConfigMap key): CreateContainerConfigError."""


def expand_refs(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion in env values, command and args: defined names are replaced, `$$`
    is an escaped `$`, anything else is left as written."""

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _VAR_REF.sub(repl, value)


def _field_ref(pod: Obj, path: str) -> str:
    meta, spec = pod["metadata"], pod["spec"]
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", NODE_NAME),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": LOOPBACK,
        "status.hostIP": LOOPBACK,
    }
    if path in simple:
        return str(simple[path])
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    raise ConfigError(f"unsupported fieldRef {path!r}")


def _key_ref(store: Any, namespace: str, kind: str, ref: Obj) -> str | None:
    try:
        obj = store.get(kind, namespace, ref["name"])
    except NotFound:
        if ref.get("optional"):
            return None
        raise ConfigError(f'{kind.lower()} "{ref["name"]}" not found') from None
    if kind == "Secret":
        data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        data.update(obj.get("stringData") or {})
    else:
        data = dict(obj.get("data") or {})
    if ref["key"] not in data:
        if ref.get("optional"):
            return None
        raise ConfigError(f"couldn't find key {ref['key']} in {kind} {namespace}/{ref['name']}")
    return str(data[ref["key"]])


def container_env(
    store: Any, pod: Obj, container: Obj, image: ImageSpec, port: int, dns: Resolver
) -> dict[str, str]:
    """The process environment: a minimal host base, the image's ENV, the pod's identity, then the
    container's `envFrom`/`env` in order (with `$(VAR)` expansion), Service addresses rewritten by the
    cluster DNS emulation, and `PORT` last: the process must listen where the pod's ports point."""
    namespace = pod["metadata"]["namespace"]
    interpreter_bin = str(Path(sys.executable).parent)
    env = {k: os.environ[k] for k in _PASSED_ENV if k in os.environ}
    env["PATH"] = interpreter_bin + os.pathsep + os.environ.get("PATH", os.defpath)
    env.update(image.env)
    env["HOSTNAME"] = pod["metadata"]["name"]
    env["PORT"] = str(port)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, field in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            ref = source.get(field)
            if not ref:
                continue
            try:
                obj = store.get(kind, namespace, ref["name"])
            except NotFound:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'{kind.lower()} "{ref["name"]}" not found') from None
            for k in obj.get("data") or {}:
                found = _key_ref(store, namespace, kind, {"name": ref["name"], "key": k})
                if found is not None:
                    env[prefix + k] = dns(found, namespace)
    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" in item:
            source = item["valueFrom"]
            value: str | None
            if "fieldRef" in source:
                value = _field_ref(pod, source["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in source:
                value = _key_ref(store, namespace, "Secret", source["secretKeyRef"])
            elif "configMapKeyRef" in source:
                value = _key_ref(store, namespace, "ConfigMap", source["configMapKeyRef"])
            else:
                raise ConfigError(f"unsupported valueFrom for {name}: {sorted(source)}")
            if value is None:
                continue
        else:
            value = expand_refs(str(item.get("value", "")), env)
        env[name] = dns(value, namespace)
    env["PORT"] = str(port)
    return env


def container_argv(
    container: Obj, image: ImageSpec, port: int, env: Mapping[str, str], remap: Callable[[str], str] = str
) -> list[str]:
    """`command` + `args` when the container has a command, else the image's argv + `args`; `remap`
    applies to what the pod spec wrote, never to the image's own argv."""
    args = [remap(expand_refs(a, env)) for a in container.get("args") or []]
    if container.get("command"):
        return [remap(expand_refs(c, env)) for c in container["command"]] + args
    return image.entrypoint(port) + args


class MountError(Exception):
    """A volume cannot be set up (its Secret or ConfigMap is missing): FailedMount, ContainerCreating."""


class PodVolumes:
    """A pod's volumes as host directories, and the container's paths mapped onto them.

    A process on the fake node sees the host's filesystem, so an `emptyDir` mounted at `/tmp/loopgate`
    would be one directory shared by every pod (and keep a previous run's files). Instead each volume is
    a fresh directory of its own pod, Secret and ConfigMap volumes hold their keys as files, and every
    mountPath written in the container's env, command or args is rewritten to its directory: a path the
    pod names explicitly resolves to the pod's own copy, as inside a container."""

    def __init__(self, root: Path, store: Any, pod: Obj) -> None:
        self.dir = root / str(pod["metadata"].get("uid") or pod["metadata"]["name"])
        self._store = store
        self._pod = pod
        self._mounts: list[tuple[str, Path]] = []

    def mount(self, container: Obj) -> None:
        """Create the container's mounted volumes; MountError when a source object is missing."""
        namespace = self._pod["metadata"]["namespace"]
        volumes = {v["name"]: v for v in self._pod["spec"].get("volumes") or []}
        mounts = []
        for mount in container.get("volumeMounts") or []:
            volume = volumes.get(mount["name"], {"name": mount["name"]})
            host = self.dir / "volumes" / mount["name"]
            if not host.exists():
                self._fill(host, volume, namespace)
            target = host / mount["subPath"] if mount.get("subPath") else host
            mounts.append((mount["mountPath"].rstrip("/") or "/", target))
        self._mounts = sorted(mounts, key=lambda m: -len(m[0]))

    def _fill(self, host: Path, volume: Obj, namespace: str) -> None:
        files: dict[str, bytes] = {}
        for kind, field, name_key in (("Secret", "secret", "secretName"), ("ConfigMap", "configMap", "name")):
            source = volume.get(field)
            if source is None:
                continue
            try:
                obj = self._store.get(kind, namespace, source[name_key])
            except NotFound:
                if source.get("optional"):
                    break
                raise MountError(
                    f'MountVolume.SetUp failed for volume "{volume["name"]}" : '
                    f'{kind.lower()} "{source[name_key]}" not found'
                ) from None
            data = (
                {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
                if kind == "Secret"
                else {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
            )
            items = source.get("items")
            files = {i["path"]: data[i["key"]] for i in items if i["key"] in data} if items else data
        host.mkdir(parents=True, exist_ok=True)
        for path, content in files.items():
            (host / path).parent.mkdir(parents=True, exist_ok=True)
            (host / path).write_bytes(content)

    def remap(self, value: str) -> str:
        """`value` with each mountPath (at a path boundary) replaced by its host directory."""
        for mount_path, host in self._mounts:
            pattern = rf"(?<![\w./-]){re.escape(mount_path)}(?=/|$|[^\w.-])"
            value = re.sub(pattern, str(host).replace("\\", "\\\\"), value)
        return value

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class ContainerProcess:
    """One run of a container: a process group whose stdout+stderr go line by line into the Store's log."""

    def __init__(
        self, argv: list[str], cwd: Path, env: Mapping[str, str], sink: Callable[[str], None]
    ) -> None:
        self.started_at = now_rfc3339()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._pump = threading.Thread(target=self._copy, args=(sink,), daemon=True, name="fake-kubelet-log")
        self._pump.start()

    def _copy(self, sink: Callable[[str], None]) -> None:
        assert self.proc.stdout is not None
        for line in iter(self.proc.stdout.readline, b""):
            with contextlib.suppress(Exception):
                sink(line.decode("utf-8", "replace"))
        self.proc.stdout.close()

    def exit_code(self) -> int | None:
        """The exit code as a container runtime reports it (killed by signal N → 128+N), None if running."""
        code = self.proc.poll()
        if code is None:
            return None
        return 128 - code if code < 0 else code

    def kill(self, grace: float = KILL_GRACE_S) -> None:
        """SIGTERM to the whole group, SIGKILL after `grace` seconds; the log pump is drained."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(wait)
        # Children that outlived the leader still hold the group id: take them down too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.join()

    def join(self) -> None:
        self._pump.join(timeout=5.0)


class PodRunner:
    """One pod's life on the fake node, in its own thread: pull (or fail to), configure, start, probe,
    restart with back-off per restartPolicy, and report every step as a kubelet does in `status`."""

    def __init__(
        self, store: Any, images: Mapping[str, ImageSpec], dns: Resolver, pod: Obj, root: Path
    ) -> None:
        self._store = store
        self._volumes = PodVolumes(root, store, pod)
        self._images = images
        self._dns = dns
        self._pod = pod
        self._ns = pod["metadata"]["namespace"]
        self._name = pod["metadata"]["name"]
        self._uid: str = str(pod["metadata"].get("uid", ""))
        self._main = pod["spec"]["containers"][0]
        self._stopping = threading.Event()
        self._gone = False
        self._process: ContainerProcess | None = None
        self._phase = "Pending"
        self._ready = False
        self._started_at = now_rfc3339()
        self._restarts = 0
        self._state: Obj = {"waiting": {"reason": "ContainerCreating"}}
        self._last_state: Obj = {}
        self._container_id = ""
        self._conditions: list[Obj] = []
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"fake-kubelet-{self._name}")

    @property
    def uid(self) -> str:
        return self._uid

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the pod's thread to kill its process group and finish (returns at once)."""
        self._stopping.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    # -- reporting

    def _event(self, reason: str, message: str, type_: str = "Normal") -> None:
        with contextlib.suppress(Exception):
            self._store.add_event(self._ns, self._pod, reason, message, type_)

    def _log(self, text: str) -> None:
        self._store.append_log(self._ns, self._name, self._main["name"], text)

    def _publish(self) -> None:
        """Write the pod's status; a pod deleted meanwhile ends this runner."""
        main_ready = self._ready and "running" in self._state
        ids = {"image": self._main.get("image", ""), "imageID": self._image_id()}
        statuses = [
            {
                "name": self._main["name"],
                **ids,
                "ready": main_ready,
                "started": "running" in self._state,
                "restartCount": self._restarts,
                "state": self._state,
                "lastState": self._last_state,
                **({"containerID": self._container_id} if self._container_id else {}),
            }
        ]
        terminal = self._phase in ("Succeeded", "Failed")
        for sidecar in self._pod["spec"]["containers"][1:]:
            # Containers start independently: the sidecar runs even while the app cannot be pulled.
            running = not terminal
            state: Obj = (
                {"running": {"startedAt": self._started_at}}
                if running
                else {
                    "terminated": {
                        "exitCode": 0,
                        "reason": "Completed",
                        "startedAt": self._started_at,
                        "finishedAt": now_rfc3339(),
                    }
                }
            )
            statuses.append(
                {
                    "name": sidecar["name"],
                    "image": sidecar.get("image", ""),
                    "imageID": f"fake.loopgate.test/{sidecar.get('image', '')}",
                    "ready": running,
                    "started": running,
                    "restartCount": 0,
                    "state": state,
                    "lastState": {},
                    "containerID": f"fake://{self._uid}/{sidecar['name']}",
                }
            )
        not_ready = [s["name"] for s in statuses if not s["ready"]]
        ready = "True" if not not_ready else "False"
        why = None if not not_ready else ("PodCompleted" if terminal else "ContainersNotReady")
        unready = " ".join(not_ready)
        msg = None if not not_ready or terminal else f"containers with unready status: [{unready}]"
        old = self._conditions
        self._conditions = [
            _condition(old, "PodReadyToStartContainers", "True"),
            _condition(old, "Initialized", "True"),
            _condition(old, "Ready", ready, why, msg),
            _condition(old, "ContainersReady", ready, why, msg),
            _condition(old, "PodScheduled", "True"),
        ]
        status = {
            "phase": self._phase,
            "conditions": self._conditions,
            "hostIP": LOOPBACK,
            "hostIPs": [{"ip": LOOPBACK}],
            "podIP": LOOPBACK,
            "podIPs": [{"ip": LOOPBACK}],
            "startTime": self._started_at,
            "containerStatuses": statuses,
            "qosClass": "BestEffort",
        }
        try:
            self._store.set_status("Pod", self._ns, self._name, status)
        except NotFound:
            self._gone = True
            self._stopping.set()

    def _image_id(self) -> str:
        image = self._main.get("image", "")
        return f"fake.loopgate.test/{image}" if image in self._images else ""

    def _sleep(self, seconds: float) -> bool:
        """Wait, unless asked to stop; True when it is time to stop."""
        return self._stopping.wait(seconds)

    # -- the pod's life

    def _run(self) -> None:
        try:
            self._live()
        finally:
            if self._process is not None:
                self._process.kill(self._grace())
                if not self._gone:
                    self._event("Killing", f"Stopping container {self._main['name']}")
            self._volumes.remove()

    def _grace(self) -> float:
        return min(float(self._pod["spec"].get("terminationGracePeriodSeconds", KILL_GRACE_S)), KILL_GRACE_S)

    def _live(self) -> None:
        self._event("Scheduled", f"Successfully assigned {self._ns}/{self._name} to {NODE_NAME}")
        self._publish()
        image = self._pull()
        if image is None:
            return
        if not self._mount():
            return
        port = free_port()
        env = self._configure(image, port)
        if env is None:
            return
        declared = self._main.get("ports") or []
        ports = {str(declared[0]["containerPort"]): port} if declared else {}
        try:
            self._store.set_annotations("Pod", self._ns, self._name, {PORTS_ANNOTATION: json.dumps(ports)})
        except NotFound:
            return
        backoff = BACKOFF_START_S
        while not self._stopping.is_set():
            code, ran_for = self._run_once(image, port, env)
            if code is None:
                return
            policy = self._pod["spec"].get("restartPolicy", "Always")
            if policy == "Never" or (policy == "OnFailure" and code == 0):
                self._phase = "Succeeded" if code == 0 else "Failed"
                self._publish()
                return
            if ran_for >= BACKOFF_RESET_AFTER_S:
                backoff = BACKOFF_START_S
            self._last_state = {"terminated": self._state["terminated"]}
            self._restarts += 1
            self._ready = False
            label = f"{self._main['name']} pod={self._name}_{self._ns}({self._uid})"
            message = f"back-off {backoff:g}s restarting failed container={label}"
            self._state = {"waiting": {"reason": "CrashLoopBackOff", "message": message}}
            self._event(
                "BackOff",
                f"Back-off restarting failed container {self._main['name']} in pod "
                f"{self._name}_{self._ns}({self._uid})",
                "Warning",
            )
            self._publish()
            if self._sleep(backoff):
                return
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _pull(self) -> ImageSpec | None:
        """The image's spec, or ErrImagePull / ImagePullBackOff (with their events) until stopped."""
        ref = self._main.get("image", "")
        backoff = BACKOFF_START_S
        while not self._stopping.is_set():
            image = self._images.get(ref)
            if image is not None:
                self._event("Pulled", f'Container image "{ref}" already present on machine')
                return image
            failure = f'Failed to pull image "{ref}": not found'
            self._state = {"waiting": {"reason": "ErrImagePull", "message": failure}}
            self._event("Failed", failure, "Warning")
            self._event("Failed", "Error: ErrImagePull", "Warning")
            self._publish()
            if self._sleep(min(backoff, 0.3)):
                return None
            self._state = {
                "waiting": {
                    "reason": "ImagePullBackOff",
                    "message": f'Back-off pulling image "{ref}": ErrImagePull: not found',
                }
            }
            self._event("BackOff", f'Back-off pulling image "{ref}"')
            self._event("Failed", "Error: ImagePullBackOff", "Warning")
            self._publish()
            if self._sleep(backoff):
                return None
            backoff = min(backoff * 2, BACKOFF_MAX_S)
        return None

    def _mount(self) -> bool:
        """Set up the volumes, or stay ContainerCreating with FailedMount events until stopped."""
        while not self._stopping.is_set():
            try:
                self._volumes.mount(self._main)
                return True
            except MountError as exc:
                self._state = {"waiting": {"reason": "ContainerCreating"}}
                self._event("FailedMount", str(exc), "Warning")
                self._publish()
                if self._sleep(1.0):
                    return False
        return False

    def _configure(self, image: ImageSpec, port: int) -> dict[str, str] | None:
        """The container's env, or CreateContainerConfigError until its Secret/ConfigMap appears."""
        while not self._stopping.is_set():
            try:
                env = container_env(self._store, self._pod, self._main, image, port, self._dns)
                return {k: self._volumes.remap(v) for k, v in env.items()}
            except ConfigError as exc:
                self._state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}}
                self._event("Failed", f"Error: {exc}", "Warning")
                self._publish()
                if self._sleep(1.0):
                    return None
        return None

    def _run_once(self, image: ImageSpec, port: int, env: dict[str, str]) -> tuple[int | None, float]:
        """Start the container, probe it ready, wait for its exit: (exit code or None if stopped, seconds)."""
        name = self._main["name"]
        argv = container_argv(self._main, image, port, env, self._volumes.remap)
        working_dir = self._volumes.remap(self._main.get("workingDir", ""))
        cwd = Path(working_dir) if working_dir and Path(working_dir).is_dir() else image.cwd
        self._container_id = f"fake://{self._uid}/{name}/{self._restarts}"
        self._event("Created", f"Created container: {name}")
        try:
            self._process = ContainerProcess(argv, cwd, env, self._log)
        except OSError as exc:
            stamp = now_rfc3339()
            message = f"failed to start container {name!r}: exec: {argv[0]!r}: {exc.strerror}"
            with contextlib.suppress(Exception):
                self._log(message + "\n")
            self._state = {
                "terminated": {
                    "exitCode": 128,
                    "reason": "StartError",
                    "message": message,
                    "startedAt": stamp,
                    "finishedAt": stamp,
                    "containerID": self._container_id,
                }
            }
            self._event("Failed", f"Error: {message}", "Warning")
            return 128, 0.0
        process = self._process
        self._event("Started", f"Started container {name}")
        self._phase = "Running"
        self._state = {"running": {"startedAt": process.started_at}}
        self._publish()
        probe = self._probe(port)
        spec = self._main.get("readinessProbe") or {}
        # Once ready, probed every periodSeconds (at most 1 s here) and unready after failureThreshold misses.
        period = min(float(spec.get("periodSeconds", 10)), 1.0)
        threshold = int(spec.get("failureThreshold", 3))
        misses, next_probe = 0, 0.0
        while not self._stopping.is_set():
            code = process.exit_code()
            if code is not None:
                break
            if time.monotonic() >= next_probe:
                ok = probe()
                misses = 0 if ok else misses + 1
                if ok != self._ready and (ok or misses >= threshold):
                    self._ready = ok
                    self._publish()
                next_probe = time.monotonic() + (period if self._ready else PROBE_INTERVAL_S)
            self._sleep(PROBE_INTERVAL_S)
        else:
            return None, 0.0
        # A container's main process exiting ends its PID namespace: whatever it left in the background
        # (a suite's `sleep &`) dies with it, as on a real node.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.proc.pid, signal.SIGKILL)
        process.join()
        self._process = None
        self._ready = False
        reason = "Completed" if code == 0 else "OOMKilled" if code == 137 else "Error"
        self._state = {
            "terminated": {
                "exitCode": code,
                "reason": reason,
                "startedAt": process.started_at,
                "finishedAt": now_rfc3339(),
                "containerID": self._container_id,
            }
        }
        return code, time.monotonic() - process.started

    def _probe(self, port: int) -> Callable[[], bool]:
        """The readiness check: the readinessProbe's httpGet, else a TCP connect to the container's port
        (a process that declares no port is ready once started)."""
        spec = self._main.get("readinessProbe") or {}
        http_get = spec.get("httpGet")
        if http_get:
            path = http_get.get("path", "/")
            headers = {h["name"]: h["value"] for h in http_get.get("httpHeaders") or []}

            def http_ok() -> bool:
                conn = http.client.HTTPConnection(LOOPBACK, port, timeout=1.0)
                try:
                    conn.request("GET", path, headers=headers)
                    return 200 <= conn.getresponse().status < 400
                except OSError:
                    return False
                finally:
                    conn.close()

            return http_ok
        if not (self._main.get("ports") or spec.get("tcpSocket")):
            return lambda: True

        def tcp_ok() -> bool:
            try:
                with socket.create_connection((LOOPBACK, port), timeout=1.0):
                    return True
            except OSError:
                return False

        return tcp_ok


# ------------------------------------------------------------------------------------- controllers


def _set_status(store: Any, obj: Obj, status: Obj) -> None:
    """Write `status` only when it changed beyond timestamps, so a controller's own write does not
    wake it into writing again."""
    if _strip_times(obj.get("status") or {}) == _strip_times(status):
        return
    with contextlib.suppress(NotFound):
        store.set_status(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"], status)


def _create_pod(store: Any, owner: Obj, template: Obj, labels: Mapping[str, str]) -> Obj:
    """A pod from `template`, owned by `owner`, named `<owner>-<5 random>`."""
    meta = template.get("metadata") or {}
    spec = copy.deepcopy(template["spec"])
    spec.setdefault("nodeName", NODE_NAME)
    for _ in range(10):
        pod: Obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{owner['metadata']['name'][:57]}-{random_suffix()}",
                "namespace": owner["metadata"]["namespace"],
                "labels": {**(meta.get("labels") or {}), **labels},
                "ownerReferences": [owner_reference(owner)],
            },
            "spec": spec,
        }
        if meta.get("annotations"):
            pod["metadata"]["annotations"] = dict(meta["annotations"])
        try:
            return dict(store.create(pod))
        except AlreadyExists:
            continue
    raise RuntimeError(f"no free pod name for {owner['metadata']['name']}")


def _delete(store: Any, pod: Obj) -> None:
    with contextlib.suppress(NotFound):
        store.delete("Pod", pod["metadata"]["namespace"], pod["metadata"]["name"])


def _percent_or_int(value: Any, total: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        exact = total * int(value[:-1]) / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(value)


class DeploymentController:
    """Deployment → Pods and the Deployment's status, as kube-controller-manager reports them (without
    ReplicaSets: pods carry the template hash in `pod-template-hash`, which is how a template change is
    seen)."""

    def __init__(self, store: Any, queue: WorkQueue) -> None:
        self._store = store
        self._queue = queue
        self._progress: dict[str, tuple[str, float]] = {}  # uid → (template hash, monotonic time of progress)

    def reconcile(self, namespace: str, name: str) -> None:
        try:
            deploy = self._store.get("Deployment", namespace, name)
        except NotFound:
            return
        spec = deploy["spec"]
        template = spec["template"]
        want = int(spec.get("replicas", 1))
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        pods = [
            p
            for p in self._store.list("Pod", namespace)
            if owned_by(p, deploy) and not p["metadata"].get("deletionTimestamp")
        ]
        for pod in pods:
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                _delete(self._store, pod)
        pods = [p for p in pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
        new = [p for p in pods if p["metadata"].get("labels", {}).get("pod-template-hash") == digest]
        old = [p for p in pods if p not in new]
        if not spec.get("paused"):
            new, old = self._roll(deploy, template, digest, want, new, old)
        self._report(deploy, digest, want, new, old)

    def _roll(
        self, deploy: Obj, template: Obj, digest: str, want: int, new: list[Obj], old: list[Obj]
    ) -> tuple[list[Obj], list[Obj]]:
        recreate = (deploy["spec"].get("strategy") or {}).get("type") == "Recreate"
        if recreate and old:
            for pod in old:
                _delete(self._store, pod)
            return new, []
        new.sort(key=pod_is_ready)
        while len(new) > want:
            _delete(self._store, new.pop(0))
        while len(new) < want:
            new.append(_create_pod(self._store, deploy, template, {"pod-template-hash": digest}))
        ready_new = sum(pod_is_ready(p) for p in new)
        old.sort(key=pod_is_ready)
        while old and len(old) > max(0, want - ready_new):
            _delete(self._store, old.pop(0))
        return new, old

    def _report(self, deploy: Obj, digest: str, want: int, new: list[Obj], old: list[Obj]) -> None:
        spec, uid = deploy["spec"], deploy["metadata"]["uid"]
        ready = sum(pod_is_ready(p) for p in new + old)
        rolling = (spec.get("strategy") or {}).get("rollingUpdate") or {}
        max_unavailable = _percent_or_int(rolling.get("maxUnavailable", "25%"), want, False)
        if (spec.get("strategy") or {}).get("type") == "Recreate":
            max_unavailable = 0
        previous = (deploy.get("status") or {}).get("conditions") or []
        available = ready >= want - max_unavailable
        rs_name = f"{deploy['metadata']['name']}-{digest}"
        complete = len(new) == want and sum(pod_is_ready(p) for p in new) == want and not old
        now = time.monotonic()
        last = self._progress.get(uid)
        if last is None or last[0] != digest or complete:
            self._progress[uid] = (digest, now)
            last = self._progress[uid]
        deadline = float(spec.get("progressDeadlineSeconds", 600))
        rs = f'ReplicaSet "{rs_name}"'
        if complete:
            progressing = ("True", "NewReplicaSetAvailable", f"{rs} has successfully progressed.")
        elif now - last[1] > deadline:
            progressing = ("False", "ProgressDeadlineExceeded", f"{rs} has timed out progressing.")
        else:
            progressing = ("True", "ReplicaSetUpdated", f"{rs} is progressing.")
            self._queue.add_after(
                ("Deployment", deploy["metadata"]["namespace"], deploy["metadata"]["name"]),
                deadline - (now - last[1]) + 0.05,
            )
        status: Obj = {
            "observedGeneration": deploy["metadata"].get("generation", 1),
            "replicas": len(new) + len(old),
            "updatedReplicas": len(new),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": max(0, want - ready),
            "conditions": [
                _condition(
                    previous,
                    "Available",
                    "True" if available else "False",
                    "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                    "Deployment has minimum availability."
                    if available
                    else "Deployment does not have minimum availability.",
                    update_time=True,
                ),
                _condition(previous, "Progressing", *progressing, update_time=True),
            ],
        }
        _omit_zero(
            status, "replicas", "updatedReplicas", "readyReplicas", "availableReplicas", "unavailableReplicas"
        )
        _set_status(self._store, deploy, status)


class JobController:
    """Job → one Pod per attempt and the Job's status: counts, start/completion time, and the
    `Complete` / `Failed` (BackoffLimitExceeded, DeadlineExceeded) conditions; finished Jobs are
    deleted `ttlSecondsAfterFinished` later."""

    def __init__(self, store: Any, queue: WorkQueue) -> None:
        self._store = store
        self._queue = queue
        self._counted: dict[str, dict[str, str]] = {}  # job uid → pod uid → "succeeded" | "failed"
        self._last_failure: dict[str, float] = {}

    def reconcile(self, namespace: str, name: str) -> None:
        try:
            job = self._store.get("Job", namespace, name)
        except NotFound:
            return
        key: Key = ("Job", namespace, name)
        spec, status = job["spec"], dict(job.get("status") or {})
        conditions = list(status.get("conditions") or [])
        finished = next(
            (c for c in conditions if c["type"] in ("Complete", "Failed") and c["status"] == "True"), None
        )
        if finished is not None:
            self._expire(job, finished, key)
            return
        if spec.get("suspend"):
            return
        uid = job["metadata"]["uid"]
        status.setdefault("startTime", now_rfc3339())
        pods = [p for p in self._store.list("Pod", namespace) if owned_by(p, job)]
        counted = self._counted.setdefault(uid, {})
        for pod in pods:
            phase = (pod.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed") and pod["metadata"]["uid"] not in counted:
                counted[pod["metadata"]["uid"]] = phase.lower()
                if phase == "Failed":
                    self._last_failure[uid] = time.monotonic()
        active = [
            p
            for p in pods
            if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            and not p["metadata"].get("deletionTimestamp")
        ]
        succeeded = sum(v == "succeeded" for v in counted.values())
        failed = sum(v == "failed" for v in counted.values())
        restarts = sum(
            s.get("restartCount", 0)
            for p in active
            for s in (p.get("status") or {}).get("containerStatuses") or []
        )
        backoff_limit = int(spec.get("backoffLimit", 6))
        elapsed = time.time() - parse_rfc3339(status["startTime"])
        deadline = spec.get("activeDeadlineSeconds")
        outcome: tuple[str, str, str] | None = None
        if succeeded >= int(spec.get("completions", 1)):
            outcome = ("Complete", "CompletionsReached", "Reached expected number of succeeded pods")
        elif deadline is not None and elapsed >= float(deadline):
            outcome = ("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
        elif failed + restarts > backoff_limit:
            outcome = ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
        if outcome is not None:
            for pod in active:
                _delete(self._store, pod)
            if outcome[0] == "Failed":
                failed += len(active)
            stamp = now_rfc3339()
            conditions.append(
                {
                    "type": outcome[0],
                    "status": "True",
                    "reason": outcome[1],
                    "message": outcome[2],
                    "lastProbeTime": stamp,
                    "lastTransitionTime": stamp,
                }
            )
            status.update(conditions=conditions, active=0, ready=0, succeeded=succeeded, failed=failed)
            if outcome[0] == "Complete":
                status["completionTime"] = stamp
            _set_status(self._store, job, self._shape(status))
            if outcome[0] == "Complete":
                self._event(job, "Completed", "Job completed", "Normal")
            else:
                self._event(job, outcome[1], outcome[2], "Warning")
            self._queue.add(key)
            return
        if not active:
            wait = self._retry_delay(uid, failed)
            if wait > 0:
                self._queue.add_after(key, wait)
            else:
                # The API server already put these on the template (with the selector's uid): keep those.
                template_labels = (spec["template"].get("metadata") or {}).get("labels") or {}
                wanted = {
                    "batch.kubernetes.io/controller-uid": uid,
                    "batch.kubernetes.io/job-name": name,
                    "controller-uid": uid,
                    "job-name": name,
                }
                labels = {k: v for k, v in wanted.items() if k not in template_labels}
                pod = _create_pod(self._store, job, spec["template"], labels)
                active.append(pod)
                self._event(job, "SuccessfulCreate", f"Created pod: {pod['metadata']['name']}", "Normal")
        status.update(
            active=len(active), ready=sum(pod_is_ready(p) for p in active), succeeded=succeeded, failed=failed
        )
        _set_status(self._store, job, self._shape(status))
        if deadline is not None:
            self._queue.add_after(key, float(deadline) - elapsed + 0.05)

    def _event(self, job: Obj, reason: str, message: str, type_: str) -> None:
        with contextlib.suppress(Exception):
            self._store.add_event(
                job["metadata"]["namespace"], job, reason, message, type_, component="job-controller"
            )

    def _retry_delay(self, uid: str, failed: int) -> float:
        """Seconds to wait before the next attempt: exponential back-off after each failure (short here)."""
        if not failed or uid not in self._last_failure:
            return 0.0
        delay = min(BACKOFF_START_S * 2.0 ** (failed - 1), BACKOFF_MAX_S)
        return float(self._last_failure[uid] + delay - time.monotonic())

    @staticmethod
    def _shape(status: Obj) -> Obj:
        status.setdefault("uncountedTerminatedPods", {})
        return _omit_zero(status, "active", "succeeded", "failed")

    def _expire(self, job: Obj, finished: Obj, key: Key) -> None:
        ttl = job["spec"].get("ttlSecondsAfterFinished")
        if ttl is None:
            return
        at = parse_rfc3339(finished["lastTransitionTime"]) + float(ttl)
        if time.time() >= at:
            self._counted.pop(job["metadata"]["uid"], None)
            with contextlib.suppress(NotFound):
                self._store.delete(
                    "Job", job["metadata"]["namespace"], job["metadata"]["name"], propagation="Background"
                )
        else:
            self._queue.add_after(key, at - time.time() + 0.05)


# ----------------------------------------------------------------------------------------- kubelet


def _identity_dns(value: str, namespace: str) -> str:
    return value


class Kubelet:
    """The fake node plus the two workload controllers, driven by Store events.

    `dns(value, namespace)` rewrites Service addresses in env values (the Mesh's `dns`); without it
    values pass unchanged. `stop()` kills every process group it started and joins every thread."""

    def __init__(self, store: Any, images: Mapping[str, ImageSpec], dns: Resolver | None = None) -> None:
        self._store = store
        self._images = dict(images)
        self._dns: Resolver = dns or _identity_dns
        self._root = Path(tempfile.mkdtemp(prefix="kube-fake-node-"))
        self._queue = WorkQueue()
        self._deployments = DeploymentController(store, self._queue)
        self._jobs = JobController(store, self._queue)
        self._runners: dict[str, PodRunner] = {}
        self._lock = threading.Lock()
        self._unsubscribe: Callable[[], None] | None = None
        self._worker = threading.Thread(target=self._work, daemon=True, name="fake-kubelet")
        self._resync_stop = threading.Event()
        self._resyncer = threading.Thread(target=self._resync_loop, daemon=True, name="fake-kubelet-resync")

    def start(self) -> None:
        self._unsubscribe = self._store.subscribe(self._on_event)
        self._worker.start()
        self._resyncer.start()

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._resync_stop.set()
        self._queue.close()
        if self._resyncer.is_alive():
            self._resyncer.join()
        if self._worker.is_alive():
            self._worker.join()
        with self._lock:
            runners = list(self._runners.values())
            self._runners.clear()
        for runner in runners:
            runner.request_stop()
        for runner in runners:
            runner.join()
        shutil.rmtree(self._root, ignore_errors=True)

    # -- events → keys

    def _on_event(self, type_: str, obj: Obj) -> None:
        kind = obj.get("kind")
        meta = obj.get("metadata") or {}
        if kind in ("Deployment", "Job", "Pod"):
            self._queue.add((kind, meta.get("namespace", ""), meta.get("name", "")))
        if kind == "Pod":
            if type_ == "DELETED":
                self._forget(meta.get("uid", ""))
            for ref in meta.get("ownerReferences") or []:
                if ref.get("kind") in ("Deployment", "Job"):
                    self._queue.add((ref["kind"], meta.get("namespace", ""), ref["name"]))

    def _resync_loop(self) -> None:
        while not self._resync_stop.wait(RESYNC_S):
            with contextlib.suppress(Exception):
                self._resync()

    def _resync(self) -> None:
        """Queue every workload and stop runners whose pod is gone: events are hints, the Store is truth."""
        pods = self._store.list("Pod")
        live = {p["metadata"].get("uid") for p in pods}
        with self._lock:
            lost = [uid for uid in self._runners if uid not in live]
        for uid in lost:
            self._forget(uid)
        for kind in ("Deployment", "Job", "Pod"):
            for obj in pods if kind == "Pod" else self._store.list(kind):
                self._queue.add((kind, obj["metadata"]["namespace"], obj["metadata"]["name"]))

    def _forget(self, uid: str) -> None:
        with self._lock:
            runner = self._runners.pop(uid, None)
        if runner is not None:
            runner.request_stop()

    # -- keys → reconciliation

    def _work(self) -> None:
        while (key := self._queue.get()) is not None:
            kind, namespace, name = key
            try:
                if kind == "Deployment":
                    self._deployments.reconcile(namespace, name)
                elif kind == "Job":
                    self._jobs.reconcile(namespace, name)
                else:
                    self._sync_pod(namespace, name)
            except Exception as exc:  # a controller keeps going, as the real ones do; retried later
                sys.stderr.write(f"fake kubelet: {kind} {namespace}/{name}: {exc!r}\n")
                self._queue.add_after(key, 0.5)

    def _sync_pod(self, namespace: str, name: str) -> None:
        try:
            pod = self._store.get("Pod", namespace, name)
        except NotFound:
            return
        uid = pod["metadata"].get("uid", "")
        if pod["metadata"].get("deletionTimestamp"):
            self._forget(uid)
            return
        with self._lock:
            if uid in self._runners or self._queue_closed():
                return
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                return
            runner = PodRunner(self._store, self._images, self._dns, pod, self._root)
            self._runners[uid] = runner
        runner.start()

    def _queue_closed(self) -> bool:
        return self._resync_stop.is_set()
