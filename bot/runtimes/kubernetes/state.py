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
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bot.config import InfrastructureError
from bot.config.kubernetes import KubernetesPostgres
from bot.runtimes.kubernetes import jobs, objects
from bot.runtimes.kubernetes.client import CONFIG_MAP, SECRET, Kube, NotFound

Obj = dict[str, Any]

STATE_ROLE = "state"
SNAPSHOT_WAIT_SLACK_S = 60.0
"""Beyond the copy Job's own timeout: the records and Secrets made before it, the Job's scheduling."""
SNAPSHOT_DIR = "/var/lib/loopgate-snapshot"
"""Where the copy Job keeps its one dump (an emptyDir: the pod's own, gone with it)."""
COPY_SCRIPT = """\
set -eu
for i in $LOOPGATE_COPIES; do
  eval "role=\\$LOOPGATE_COPY_ROLE_$i db=\\$LOOPGATE_COPY_DB_$i pw=\\$LOOPGATE_COPY_PASSWORD_$i"
  psql -X -q -v ON_ERROR_STOP=1 -v role="$role" -v db="$db" -v pw="$pw" -d "$LOOPGATE_MAINTENANCE_DB" <<'SQL'
CREATE ROLE :"role" LOGIN PASSWORD :'pw';
GRANT :"role" TO CURRENT_USER;
CREATE DATABASE :"db" OWNER :"role";
REVOKE CONNECT ON DATABASE :"db" FROM PUBLIC;
SQL
done
pg_dump --format=custom --no-owner --no-privileges -d "$LOOPGATE_BASE_DB" -f "$LOOPGATE_SNAPSHOT"
for i in $LOOPGATE_COPIES; do
  eval "role=\\$LOOPGATE_COPY_ROLE_$i db=\\$LOOPGATE_COPY_DB_$i"
  pg_restore --no-owner --no-privileges --role="$role" -d "$db" "$LOOPGATE_SNAPSHOT"
done
"""
"""Every copy's role first, then the database it owns; then ONE dump of the baseline's database,
restored into each: a candidate and its controls start from the same snapshot, so what differs between
them later is the code's doing, not the moment each copy was taken. `--role` makes every restored object
the copy's, so a fork's login reaches its copy and nothing else. (No `$(`: Kubernetes would expand it.)"""

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
    owner: str | None = None
    """The sandbox whose control this copy's sandbox is (None for a candidate's own copy)."""
    recorded_at: datetime | None = field(default=None, compare=False)
    """When its record was made (read back from the cluster; None for a copy not yet recorded)."""

    def being_made(self, now: datetime) -> bool:
        """Whether the copy may still be in the making: its record is younger than the copy Job may take
        (plus the moments around it), so its sandbox's fork may not exist yet. gc leaves such a copy."""
        if self.recorded_at is None:
            return False
        return (now - self.recorded_at).total_seconds() < self.server.timeout + SNAPSHOT_WAIT_SLACK_S

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


@dataclass
class Snapshot:
    """The one dump a sandbox and its controls copy from, per service: the first side whose fork needs
    it makes every side's copy; the others wait here for that to end."""

    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None

    def wait(self, copy: Copy) -> None:
        """Until the copies are made; InfrastructureError with the maker's words when they were not."""
        if not self.done.wait(copy.server.timeout + SNAPSHOT_WAIT_SLACK_S):
            raise InfrastructureError(
                f"copying database {copy.base_database} for the {copy.service} fork: the shared snapshot"
                f" was not ready within {copy.server.timeout + SNAPSHOT_WAIT_SLACK_S:g}s"
            )
        if self.error is not None:
            raise InfrastructureError(self.error)


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


def copy_job(group: Sequence[Copy], expires_at: str) -> Obj:
    """One Job that makes every copy of `group` from one dump: the sandbox's own copy first (the Job is
    named and labelled after it, so its teardown finds it), then its controls'. Every copy is of the same
    database on the same server."""
    first = group[0]
    same = (first.service, first.base_database, first.server)
    if any((c.service, c.base_database, c.server) != same for c in group):
        raise ValueError("the copies of one snapshot are of one service's database on one server")
    env: list[Obj] = [{"name": "LOOPGATE_COPIES", "value": " ".join(str(i) for i in range(len(group)))}]
    env.append({"name": "LOOPGATE_SNAPSHOT", "value": f"{SNAPSHOT_DIR}/base.dump"})
    for index, copy in enumerate(group):
        secret_ref = {"secretKeyRef": {"name": copy.name, "key": "password"}}
        env += [
            {"name": f"LOOPGATE_COPY_DB_{index}", "value": copy.database},
            {"name": f"LOOPGATE_COPY_ROLE_{index}", "value": copy.role},
            {"name": f"LOOPGATE_COPY_PASSWORD_{index}", "valueFrom": secret_ref},
        ]
    job = _job(first, "copy", COPY_SCRIPT, expires_at, env)
    pod = job["spec"]["template"]["spec"]
    pod["volumes"] = [{"name": "snapshot", "emptyDir": {}}]
    pod["containers"][0]["volumeMounts"] = [{"name": "snapshot", "mountPath": SNAPSHOT_DIR}]
    return job


def drop_job(copy: Copy, expires_at: str) -> Obj:
    env = [
        {"name": "LOOPGATE_COPY_DB", "value": copy.database},
        {"name": "LOOPGATE_COPY_ROLE", "value": copy.role},
    ]
    return _job(copy, "drop", DROP_SCRIPT, expires_at, env)


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
    owner = labels.get(objects.CONTROL_OF_LABEL)
    namespace = str(metadata.get("namespace") or "")
    stamp = metadata.get("creationTimestamp")
    made = datetime.fromisoformat(str(stamp).replace("Z", "+00:00")) if stamp else None
    return Copy(str(key), str(service), namespace, base, server, str(owner) if owner else None, made)


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
    labels = objects.labels(copy.key, STATE_ROLE, copy.service)
    if copy.owner is not None:
        labels[objects.CONTROL_OF_LABEL] = copy.owner
    return {
        "name": copy.name,
        "namespace": copy.namespace,
        "labels": labels,
        "annotations": {objects.EXPIRES_AT: expires_at},
    }


def _job(copy: Copy, verb: str, script: str, expires_at: str, copy_env: list[Obj]) -> Obj:
    server = copy.server
    env: list[Obj] = [
        {"name": "PGHOST", "value": server.host},
        {"name": "PGPORT", "value": str(server.port)},
        {"name": "PGUSER", "valueFrom": {"secretKeyRef": {"name": server.secret, "key": "username"}}},
        {"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": server.secret, "key": "password"}}},
        {"name": "LOOPGATE_MAINTENANCE_DB", "value": server.maintenance_database},
        {"name": "LOOPGATE_BASE_DB", "value": copy.base_database},
        *copy_env,
    ]
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


def make_copies(kube: Kube, api: Any, group: Sequence[Copy], expires_at: str) -> None:
    """Each copy's record and password, then the one copy Job (`copy_job`); InfrastructureError (the
    server's or the cluster's fault, not the change's) when the copies cannot be made. The records stay
    for teardown or gc to drop."""
    for copy in group:
        kube.create(record(copy, expires_at))
        kube.create(password_secret(copy, new_password(), expires_at))
    first = group[0]
    outcome = jobs.run_job(
        api, copy_job(group, expires_at), timeout_s=first.server.timeout, should_stop=None, nonce=None
    )
    if outcome.exit_code != 0:
        why = outcome.reason or f"exit {outcome.exit_code}"
        raise InfrastructureError(
            f"copying database {first.base_database} for the {first.service} fork failed ({why}):"
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


def recorded_copies(kube: Kube, keys: Sequence[str] | None = None) -> list[Copy]:
    """Every copy recorded cluster-wide (one list call), or those of the sandboxes `keys`."""
    selector = f"{objects.MANAGED_BY_LABEL}={objects.MANAGED_BY},{objects.ROLE_LABEL}={STATE_ROLE}"
    if keys is not None:
        selector += f",{objects.SANDBOX_LABEL} in ({','.join(sorted(set(keys)))})"
    found = (copy_from_record(item) for item in kube.list(CONFIG_MAP, None, label_selector=selector).items)
    return [copy for copy in found if copy is not None]
