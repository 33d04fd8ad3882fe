"""What an image reference means on the fake cluster: a local command to run, not a filesystem to unpack.

A real node pulls `registry.example/orders:abc123` and runs its entrypoint. The fake has no registry and
no container runtime, so a test says, per image reference, which local command stands for the image
(`argv`, its ENTRYPOINT+CMD), in which directory (`cwd`, its WORKDIR: e.g. a worktree of the commit the
image was built from) and with which extra environment (`env`, its ENV). An image the mapping does not
name cannot be pulled, which is how a fork with a wrong image tag fails on the fake as it would for real.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PORT_PLACEHOLDER = "{port}"
"""Stands, in `ImageSpec.argv`, for the loopback port the process must listen on."""


@dataclass(frozen=True)
class ImageSpec:
    """One image as the fake kubelet runs it.

    `argv` is used when the container has no `command` (container `args`, if any, are appended, as
    Docker appends CMD to ENTRYPOINT); `{port}` in it becomes the loopback port bound to the container's
    first containerPort (also given as `PORT`). `cwd` is the working directory of every process started
    from the image, with or without `command`. `env` is added to the container's environment (the
    container's own `env` wins, as a pod spec's env overrides an image's ENV).
    """

    argv: Sequence[str]
    cwd: Path
    env: Mapping[str, str] = field(default_factory=dict)

    def entrypoint(self, port: int) -> list[str]:
        """`argv` with `{port}` replaced by `port`."""
        return [part.replace(PORT_PLACEHOLDER, str(port)) for part in self.argv]
