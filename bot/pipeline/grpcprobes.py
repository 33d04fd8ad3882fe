"""The forked gRPC services' safe methods, probed on every side (the verify stage calls it, after the
proto check).

For every forked, ready service with `protocol: grpc` and `grpc.protos`, the protos of the *base*
commit (what callers were built with) are read from git as the proto check reads them
(`protos.materialise`), compiled into descriptors (`bot.verify.grpc.schema`), and each unary method
marked `NO_SIDE_EFFECTS` is probed by `bot.verify.grpc.probes`: on the primary control, the secondary
control and the candidate, each under its own routing key, or, without controls, on the baseline
(untagged) and the sandbox (tagged). Calls go out through the runtime (`GrpcProbes.probe_grpc`), to the
service's listener, as the HTTP probes do. All services share `verify.diff.max_requests`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from bot.config.schema import Config
from bot.evidence import Evidence
from bot.pipeline.protos import materialise
from bot.runtimes.git import Git
from bot.runtimes.protocol import GrpcProbes, ProbeError, ProbeRequest, Runtime, Sandbox
from bot.verify.compare import ComparePolicy
from bot.verify.diff import NotSent
from bot.verify.grpc.probes import Answer, Call, SendCall, probe_service
from bot.verify.grpc.schema import NoSchema, compile_schema

__all__ = ["add_grpc_probes"]


def add_grpc_probes(
    evidence: Evidence,
    config: Config,
    repo: Path,
    base: str,
    runtime: Runtime,
    sandbox: Sandbox,
    controls: Sequence[Sandbox],
) -> None:
    """Probe each forked gRPC service with protos; results to `Evidence.diff`, notes to its notes."""
    ready = [s.name for s in evidence.forks if s.status == "ready"]
    services = [
        (name, spec.grpc)
        for name in ready
        if (spec := config.services.get(name)) and spec.protocol == "grpc" and spec.grpc
    ]
    if not services:
        return
    if not isinstance(runtime, GrpcProbes):
        evidence.notes.append(f"the {runtime.kind} runtime sends no gRPC probes: gRPC methods not probed")
        return
    settings = config.verify.diff
    policy = ComparePolicy(ignore=settings.ignore)
    budget = settings.max_requests
    send = _sender(runtime, sandbox, controls)
    git = Git(repo)
    with tempfile.TemporaryDirectory(prefix="loopgate-grpc-probes-") as tmp:
        tree = git.tree(base)
        for index, (name, grpc) in enumerate(services):
            if budget <= 0:
                evidence.notes.append(f"{name}: gRPC methods not probed (verify.diff.max_requests spent)")
                continue
            root = materialise(git, base, tree, grpc, Path(tmp) / str(index))
            try:
                if isinstance(root, str):
                    raise NoSchema(root)
                schema = compile_schema(root, grpc.protos, grpc.import_paths)
            except NoSchema as exc:
                evidence.notes.append(f"{name}: gRPC methods not probed: the base protos: {exc}")
                continue
            check = probe_service(
                schema, name, send, controls=len(controls) == 2, budget=budget, policy=policy
            )
            budget -= sum(1 for r in check.diff if r.service == name)
            evidence.diff += check.diff
            evidence.notes += check.notes


def _sender(runtime: GrpcProbes, sandbox: Sandbox, controls: Sequence[Sandbox]) -> SendCall:
    """Sides by name: the controls and the candidate each tagged with their own key; `baseline`
    untagged."""
    boxes = {"candidate": sandbox, "sandbox": sandbox, "baseline": sandbox}
    if len(controls) == 2:
        boxes |= {"primary": controls[0], "secondary": controls[1]}

    def send(call: Call, side: str) -> Answer:
        request = ProbeRequest(call.service, "POST", call.method.path, {}, call.body)
        try:
            answer = runtime.probe_grpc(boxes[side], request, tagged=side != "baseline")
        except ProbeError as exc:
            raise NotSent(str(exc)) from None
        return Answer(answer.code, answer.message, answer.body)

    return send
