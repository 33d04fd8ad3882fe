"""Controls in a cluster (DESIGN "Control and candidate"): beside a sandbox's forks, sandboxes of their
own routing keys whose forks run the base commit's image on copies of the data made from the same
snapshot as the sandbox's own (`state.copy_job`: one dump, restored into every side's database).

A control is a sandbox like any other to every selector (its own `loopgate.dev/sandbox` key), and it
belongs to its owner, so that nothing of it can outlive the owner unnoticed:
- a record (a ConfigMap, role `control`, labelled with the owner's key and naming the control) is made
  before any object of the control exists;
- every object the control makes carries `loopgate.dev/control-of: <owner>`.
The owner's teardown removes its controls first, then their records; gc removes a control whose record
is gone or expired, as it removes anything past its expires-at.
"""

from __future__ import annotations

from datetime import UTC, datetime

from bot.runtimes.kubernetes import objects
from bot.runtimes.kubernetes.controlrecords import control_record, recorded_controls
from bot.runtimes.kubernetes.core import infrastructure, new_routing_key
from bot.runtimes.kubernetes.sandboxes import Sandboxes, SandboxState
from bot.runtimes.protocol import Sandbox, Source


class ControlSandboxes(Sandboxes):
    """The `Controls` protocol: making a sandbox's controls and knowing them again at teardown."""

    @infrastructure
    def new_control(self, sandbox: Sandbox, base: Source) -> Sandbox:
        """A control of `sandbox`: recorded in the cluster before it exists, with its owner's expiry (they
        go together); its forks run `base`, its suites are its owner's (the same tests on every side)."""
        owner = self._state(sandbox)
        if owner.control_of is not None:
            raise ValueError(f"sandbox {owner.key} is itself a control of {owner.control_of}")
        key = new_routing_key()
        namespace = objects.jobs_namespace(sandbox.config)
        self.kube.create(
            control_record(owner=owner.key, key=key, namespace=namespace, expires_at=owner.expires_at)
        )
        state = SandboxState(
            key=key,
            created=datetime.now(UTC),
            expires_at=owner.expires_at,
            head_sha=owner.head_sha,
            merge_sha=owner.merge_sha,
            base_sha=base.sha,
            control_of=owner.key,
        )
        with self._lock:
            owner.controls.append(key)
            self._sandboxes[key] = state
        return Sandbox(routing_key=key, baseline=sandbox.baseline, config=sandbox.config)

    def _controls_of(self, sandbox: Sandbox) -> list[str]:
        """The controls this process made for `sandbox` and every one the cluster records for it (another
        process may have made them)."""
        with self._lock:
            state = self._sandboxes.get(sandbox.routing_key)
            known = list(state.controls) if state is not None else []
        namespace = objects.jobs_namespace(sandbox.config)
        recorded = recorded_controls(self.kube, namespace, sandbox.routing_key)
        return known + [key for key in recorded if key not in known]

    def _forget(self, key: str, controls: list[str]) -> None:
        """This process's memory of a sandbox, its controls, their shared snapshots and base builds."""
        with self._lock:
            for each in (key, *controls):
                self._sandboxes.pop(each, None)
            for pair in [p for p in self._snapshots if p[0] == key]:
                self._snapshots.pop(pair, None)
            for pair in [p for p in self._base_builds if p[0] == key]:
                self._base_builds.pop(pair, None)
