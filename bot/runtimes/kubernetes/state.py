"""Data copies in a cluster: a fork of a service with `state: {postgres}` gets its own copy of the
baseline's database, made at fork time on the team's server by a Job, owned by a role made for it,
and dropped at teardown (DESIGN "Data").

loopgate never holds the server's admin login: it names the Secret (`runtime.kubernetes.postgres.secret`)
and only the copy and drop Jobs read it. The copy's own password is loopgate's, made per copy and
handed to the fork through a Secret loopgate creates (never in a pod spec). A ConfigMap records each
copy *before* the role and database exist, so `gc` after a crash at any moment drops what was made.
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bot.config import InfrastructureError
from bot.config.kubernetes import KubernetesPostgres
from bot.runtimes.kubernetes import jobs, objects
from bot.runtimes.kubernetes.client import CONFIG_MAP, SECRET, Kube, NotFound

Obj = dict[str, Any]

STATE_ROLE = "state"
COPY_SCRIPT = """\
set -eu
psql -X -q -v ON_ERROR_STOP=1 -v role="$LOOPGATE_COPY_ROLE" -v db="$LOOPGATE_COPY_DB" \\
  -v pw="$LOOPGATE_COPY_PASSWORD" -d "$LOOPGATE_MAINTENANCE_DB" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'pw';
GRANT :"role" TO CURRENT_USER;
CREATE DATABASE :"db" OWNER :"role";
REVOKE CONNECT ON DATABASE :"db" FROM PUBLIC;
SQL
pg_dump --format=custom --no-owner --no-privileges -d "$LOOPGATE_BASE_DB" \\
  | pg_restore --no-owner --no-privileges --role="$LOOPGATE_COPY_ROLE" -d "$LOOPGATE_COPY_DB"
"""
"""Role first, then the database it owns, then the rows: `--role` makes every restored object the
copy's, so the fork's login reaches its copy and nothing else."""

DROP_SCRIPT = """\
set -eu
psql -X -q -v ON_ERROR_STOP=1 -v role="$LOOPGATE_COPY_ROLE" -v db="$LOOPGATE_COPY_DB" \\
  -d "$LOOPGATE_MAINTENANCE_DB" <<'SQL'
DROP DATABASE IF EXISTS :"db" WITH (FORCE);
DROP ROLE IF EXISTS :"role";
SQL
"""


@dataclass(frozen=True)
class Copy:
    """One fork's database copy: what its Jobs create and drop, named from the sandbox's key."""

    key: str
    service: str
    namespace: str
    """Where the record, the password Secret and the Jobs live (the Jobs' namespace)."""
    base_database: str
    server: KubernetesPostgres

    @property
    def database(self) -> str:
        return f"{self.base_database}_lg_{self.key}"

    @property
    def role(self) -> str:
        return self.database

    @property
    def name(self) -> str:
        """The record's and the Secret's name."""
        return objects.bounded_name(f"lg-{self.key}-{self.service}-state")

    def url(self, password: str) -> str:
        return f"postgresql://{self.role}:{password}@{self.server.host}:{self.server.port}/{self.database}"


def new_password() -> str:
    return secrets.token_hex(24)


def record(copy: Copy, expires_at: str) -> Obj:
    """The ConfigMap that says a copy may exist: gc reads it (never a Secret) to drop the copy."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(copy, expires_at),
        "data": {
            "database": copy.database,
            "role": copy.role,
            "service": copy.service,
            # What gc needs to drop the copy with no repository config at hand.
            "server": copy.server.model_dump_json(),
        },
    }


def password_secret(copy: Copy, password: str, expires_at: str) -> Obj:
    """The copy's login, for the copy Job (`password`) and the fork (`url`)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(copy, expires_at),
        "type": "Opaque",
        "stringData": {"password": password, "url": copy.url(password)},
    }


def copy_job(copy: Copy, expires_at: str) -> Obj:
    return _job(copy, "copy", COPY_SCRIPT, expires_at, with_password=True)


def drop_job(copy: Copy, expires_at: str) -> Obj:
    return _job(copy, "drop", DROP_SCRIPT, expires_at, with_password=False)


def copy_from_record(configmap: Obj) -> Copy | None:
    """The copy a record stands for, or None when the record is not a well-formed one of loopgate's."""
    metadata = configmap.get("metadata") or {}
    labels = metadata.get("labels") or {}
    data = configmap.get("data") or {}
    key, service, database = labels.get(objects.SANDBOX_LABEL), data.get("service"), data.get("database")
    if not (key and service and database) or not str(database).endswith(f"_lg_{key}"):
        return None
    try:
        server = KubernetesPostgres.model_validate_json(str(data.get("server") or ""))
    except ValueError:
        return None
    base = str(database)[: -len(f"_lg_{key}")]
    return Copy(str(key), str(service), str(metadata.get("namespace") or ""), base, server)


def point_at_copy(fork: Obj, copy: Copy, container: str, variable: str) -> Obj:
    """The fork Deployment with `variable` of `container` read from the copy's Secret, wherever the
    baseline's pod template had it (a literal, another Secret) or not at all."""
    containers = fork["spec"]["template"]["spec"]["containers"]
    target = next((c for c in containers if c.get("name") == container), containers[0])
    env = [entry for entry in target.get("env") or [] if entry.get("name") != variable]
    env.append({"name": variable, "valueFrom": {"secretKeyRef": {"name": copy.name, "key": "url"}}})
    target["env"] = env
    return fork


def _metadata(copy: Copy, expires_at: str) -> Obj:
    return {
        "name": copy.name,
        "namespace": copy.namespace,
        "labels": objects.labels(copy.key, STATE_ROLE, copy.service),
        "annotations": {objects.EXPIRES_AT: expires_at},
    }


def _job(copy: Copy, verb: str, script: str, expires_at: str, *, with_password: bool) -> Obj:
    server = copy.server
    env: list[Obj] = [
        {"name": "PGHOST", "value": server.host},
        {"name": "PGPORT", "value": str(server.port)},
        {"name": "PGUSER", "valueFrom": {"secretKeyRef": {"name": server.secret, "key": "username"}}},
        {"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": server.secret, "key": "password"}}},
        {"name": "LOOPGATE_MAINTENANCE_DB", "value": server.maintenance_database},
        {"name": "LOOPGATE_BASE_DB", "value": copy.base_database},
        {"name": "LOOPGATE_COPY_DB", "value": copy.database},
        {"name": "LOOPGATE_COPY_ROLE", "value": copy.role},
    ]
    if with_password:
        secret_ref = {"secretKeyRef": {"name": copy.name, "key": "password"}}
        env.append({"name": "LOOPGATE_COPY_PASSWORD", "valueFrom": secret_ref})
    metadata = _metadata(copy, expires_at)
    metadata["name"] = objects.bounded_name(f"lg-{copy.key}-{verb}-{copy.service}")
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": int(server.timeout),
            "ttlSecondsAfterFinished": 300,
            "template": {
                "metadata": {"labels": dict(metadata["labels"])},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "containers": [
                        {"name": verb, "image": server.image, "command": ["sh", "-c", script], "env": env}
                    ],
                },
            },
        },
    }


def make_copy(kube: Kube, api: Any, copy: Copy, expires_at: str) -> None:
    """Record, password, then the copy Job; InfrastructureError (the server's or the cluster's fault,
    not the change's) when the copy cannot be made. The record stays for teardown or gc to drop."""
    kube.create(record(copy, expires_at))
    kube.create(password_secret(copy, new_password(), expires_at))
    outcome = jobs.run_job(
        api, copy_job(copy, expires_at), timeout_s=copy.server.timeout, should_stop=None, nonce=None
    )
    if outcome.exit_code != 0:
        why = outcome.reason or f"exit {outcome.exit_code}"
        raise InfrastructureError(
            f"copying database {copy.base_database} for the {copy.service} fork failed ({why}):"
            f" {jobs.one_line(jobs.tail(outcome.log, lines=5))}"
        )


def drop_copy(kube: Kube, api: Any, copy: Copy) -> None:
    """Drop the database and role, then the Secret and the record; the record goes last so a crash
    in between leaves it for gc."""
    outcome = jobs.run_job(
        api,
        drop_job(copy, objects.expires_at(3600, datetime.now(UTC))),
        timeout_s=copy.server.timeout,
        should_stop=None,
        nonce=None,
    )
    if outcome.exit_code != 0:
        why = outcome.reason or f"exit {outcome.exit_code}"
        last = jobs.one_line(jobs.tail(outcome.log, lines=5))
        raise InfrastructureError(f"dropping database {copy.database} failed ({why}): {last}")
    for kind in (SECRET, CONFIG_MAP):
        with contextlib.suppress(NotFound):
            kube.delete(kind, copy.namespace, copy.name)


def recorded_copies(kube: Kube, key: str | None = None) -> list[Copy]:
    """Every copy recorded cluster-wide (one list call), or the sandbox `key`'s."""
    selector = f"{objects.MANAGED_BY_LABEL}={objects.MANAGED_BY},{objects.ROLE_LABEL}={STATE_ROLE}"
    if key is not None:
        selector += f",{objects.SANDBOX_LABEL}={key}"
    found = (copy_from_record(item) for item in kube.list(CONFIG_MAP, None, label_selector=selector).items)
    return [copy for copy in found if copy is not None]
