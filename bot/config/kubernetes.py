"""The Kubernetes runtime's part of `.loopgate.yml`: where each service's baseline runs in the cluster,
how a fork gets its image, suites as Jobs, and `runtime.kubernetes` (routing, namespaces, limits, the
Postgres server forks copy on)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from bot.config.strict import Seconds, Strict

IMAGE_FIELDS = ("sha", "merge_sha", "base_sha", "service")
"""What an image template may name: `registry/app:{sha}`."""

K8S_NAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


class KubernetesBuild(Strict):
    """An in-cluster image build (a Kaniko Job) from the git context at the merge commit."""

    context: str = Field(default=".", description="Directory of the repository to build, from its root.")
    dockerfile: str = Field(default="Dockerfile", description="Relative to `context`.")
    registry: str = Field(
        description="Repository the image is pushed to; the tag is the merge commit's sha.",
        pattern=r"^[a-z0-9][a-z0-9._:/-]{0,254}$",
    )
    secret: str | None = Field(
        default=None,
        pattern=K8S_NAME,
        description="Name of a docker-registry Secret (`.dockerconfigjson`) Kaniko pushes with.",
    )
    timeout: Seconds = Field(default=900, description="Seconds the build Job may take.")

    @field_validator("context", "dockerfile")
    @classmethod
    def _inside_repository(cls, value: str) -> str:
        if value.startswith("/") or ".." in value.split("/") or "\\" in value or "\0" in value:
            raise ValueError(f"{value!r} must be a relative path inside the repository (no '..')")
        return value


class KubernetesService(Strict):
    """Where the service's baseline runs in the cluster and how its fork gets an image."""

    namespace: str = Field(pattern=K8S_NAME)
    workload: str = Field(
        pattern=r"^deployment/[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$",
        description="The baseline workload: `deployment/<name>`.",
    )
    container: str | None = Field(
        default=None, pattern=K8S_NAME, description="The container to replace; default the first."
    )
    port: int = Field(default=80, ge=1, le=65535, description="The Service port callers use.")
    image: str | None = Field(
        default=None,
        description="Image built by the team's CI: a template naming {sha} (head), {merge_sha}, {base_sha},"
        " {service}.",
    )
    build: KubernetesBuild | None = None
    ready_timeout: Seconds | None = Field(
        default=None, description="Seconds for the fork to become Available; default runtime.kubernetes's."
    )
    state_env: str = Field(
        default="LOOPGATE_STATE",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$",
        description="The container's variable holding its database URL: a fork's points at its copy.",
    )

    @property
    def deployment(self) -> str:
        return self.workload.removeprefix("deployment/")

    @field_validator("image")
    @classmethod
    def _image_template(cls, value: str | None) -> str | None:
        if value is None:
            return value
        for name in re.findall(r"{([^{}]*)}", value):
            if name not in IMAGE_FIELDS:
                raise ValueError(f"{{{name}}} is not one of {', '.join('{' + f + '}' for f in IMAGE_FIELDS)}")
        if not re.fullmatch(r"[A-Za-z0-9._:/@{}-]{1,255}", value):
            raise ValueError(f"{value!r} is not an image reference")
        return value

    @model_validator(mode="after")
    def _one_image_source(self) -> KubernetesService:
        if (self.image is None) == (self.build is None):
            raise ValueError("set exactly one of image (built by your CI) or build (built in the cluster)")
        return self


class KubernetesSuite(Strict):
    """A suite run as a Job inside the cluster."""

    image: str = Field(description="Image holding the suite; a template like a service's image.")
    command: list[str] = Field(min_length=1, description="The container's command (no shell).")

    @field_validator("image")
    @classmethod
    def _image_template(cls, value: str) -> str:
        return KubernetesService._image_template(value) or value


class KubernetesPostgres(Strict):
    """The PostgreSQL server that holds services' `state: {postgres}` databases in the cluster: forks get
    copies made there, each owned by a role made for it (DESIGN "Data")."""

    host: str = Field(
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$",
        description="The server's address as pods reach it (e.g. `postgres.db.svc.cluster.local`).",
    )
    port: int = Field(default=5432, ge=1, le=65535)
    secret: str = Field(
        pattern=K8S_NAME,
        description="Secret (in the Jobs' namespace) with `username` and `password` of a role that may"
        " create roles and databases; loopgate never reads it, only its copy Jobs do.",
    )
    maintenance_database: str = Field(default="postgres", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
    image: str = Field(default="postgres:17-alpine", description="Image with psql, pg_dump, pg_restore.")
    timeout: Seconds = Field(default=300, description="Seconds a copy may take.")


class KubernetesSettings(Strict):
    """How the Kubernetes runtime forks, routes and cleans up in the team's cluster."""

    routing: Literal["istio", "gateway-api", "none"] = Field(
        default="istio", description="Who routes tagged requests to forks; `none`: the mesh's own job."
    )
    sandbox_namespace: str | None = Field(
        default=None,
        pattern=K8S_NAME,
        description="Namespace for forks and suite Jobs; default each service's own namespace.",
    )
    max_sandboxes: int = Field(default=20, ge=1, le=10_000, description="Live sandboxes at once.")
    ttl: Seconds = Field(default=3600, description="Seconds after which gc removes a sandbox's objects.")
    ready_timeout: Seconds = Field(default=180, description="Seconds for a fork to become Available.")
    postgres: KubernetesPostgres | None = Field(
        default=None, description="Required when a service declares `state: {postgres}`."
    )
    access_log_container: str | None = Field(
        default="istio-proxy",
        pattern=K8S_NAME,
        description="Container whose log is the mesh's JSON access log (docs/kubernetes.md); null: none.",
    )


class KubernetesRuntime(Strict):
    kind: Literal["kubernetes"]
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)
