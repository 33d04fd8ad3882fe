"""The Helm chart (deploy/helm/loopgate), linted and rendered by real Helm, and every object it renders
validated strictly against the published Kubernetes schemas.

Helm is PyPI `helm-python-sdk` (pinned in pyproject's `dev` extra): its wheel bundles `libhelm_c`, a C ABI
over Helm's own Go SDK (v4), so `lint` and `render` (`helm template`) run Helm's code offline, with no
`helm` binary and nothing downloaded at run time. `render` validates values against values.schema.json as
`helm template` does.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from bot.config.settings import AppSettings
from tests.conftest import ROOT
from tests.kube_fake.validate import validate_object

CHART = ROOT / "deploy" / "helm" / "loopgate"
RELEASE, NAMESPACE = "lg", "loopgate"
SECRET_VALUES = {
    "githubPrivateKey": "-----BEGIN RSA PRIVATE KEY-----\nsentinel-key-7f3a\n-----END RSA PRIVATE KEY-----",
    "webhookSecret": "sentinel-webhook-secret-91c2",
    "apiToken": "sentinel-api-token-55d0",
    "databaseUrl": "postgresql://loopgate:sentinel-db-password-0b7e@postgres.db:5432/loopgate",
}
# What the Kubernetes runtime does, verb by verb (docs/kubernetes.md explains each). Nothing else, no `*`.
MANAGED = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]
CORE_RULES = {
    ("apps", "deployments"): MANAGED,
    ("", "services"): MANAGED,
    ("batch", "jobs"): MANAGED,
    ("", "pods"): ["get", "list", "watch", "delete"],
    ("", "pods/log"): ["get"],
    ("", "services/proxy"): ["get", "create", "update", "patch", "delete"],
    ("", "events"): ["get", "list", "watch"],
    ("", "configmaps"): ["get", "list", "create", "delete"],
    ("", "secrets"): ["create", "delete"],
}
# VirtualServices are shared with the team's own routes: loopgate edits them, never deletes them in bulk.
ISTIO_RULE = {("networking.istio.io", "virtualservices"): MANAGED[:-1]}
GATEWAY_API_RULE = {
    ("gateway.networking.k8s.io", "httproutes"): MANAGED,
    ("gateway.networking.k8s.io", "grpcroutes"): [
        "get",
        "list",
        "create",
        "update",
        "delete",
        "deletecollection",
    ],
    ("gateway.networking.k8s.io", "referencegrants"): ["get", "list", "create", "delete", "deletecollection"],
}
# The chart sets these itself; the rest of the container's LOOPGATE_* variables come from values.
CHART_SET = {"LOOPGATE_RUNTIME": "kubernetes", "LOOPGATE_STATE_DIR": "/var/lib/loopgate"}


def render_text(values: dict[str, Any] | None = None) -> dict[str, str]:
    """`helm template lg deploy/helm/loopgate -n loopgate -f <values>`: template path → rendered text."""
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE)


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The rendered Kubernetes objects (NOTES.txt is text for the user, not an object)."""
    objects: list[dict[str, Any]] = []
    for path, text in sorted(render_text(values).items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    found: dict[str, Any] = containers[0]
    return found


def env_of(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container(objects)["env"]}


def granted(role: dict[str, Any]) -> dict[tuple[str, str], list[str]]:
    """(apiGroup, resource) → verbs, for one Role or ClusterRole."""
    grants: dict[tuple[str, str], list[str]] = {}
    for rule in role["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                key = (group, resource)
                assert key not in grants, f"{key} granted twice"
                grants[key] = list(rule["verbs"])
    return grants


def assert_valid(objects: list[dict[str, Any]]) -> None:
    """Strict validation (unknown fields rejected) against the published schemas. The ServiceMonitor is the
    Prometheus Operator's CRD, for which no published schema is installed here: it is checked field by field
    in its own test instead, never against a schema written here."""
    problems = {
        f"{obj['kind']}/{obj['metadata']['name']}": errors
        for obj in objects
        if obj["kind"] != "ServiceMonitor"
        for errors in [validate_object(obj)]
        if errors
    }
    assert not problems, json.dumps(problems, indent=2)


# ---- lint ----


def lint_problems(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """`helm lint --strict`: warnings and errors (severity 2, 3); info ("icon is recommended") passes."""
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
    assert report["total_charts_linted"] == 1
    return [m for m in report["messages"] if m["severity"] >= 2] + [{"error": e} for e in report["errors"]]


def test_helm_lint_strict_passes() -> None:
    assert lint_problems() == []
    assert lint_problems({"routing": "gateway-api", "rbac": {"namespaces": ["shop"]}}) == []


def test_chart_metadata_matches_the_package() -> None:
    with helm.Chart.load(CHART) as chart:
        metadata = chart.metadata
    assert metadata["apiVersion"] == "v2"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert metadata["appVersion"] == project["version"]
    rendered = render()
    assert container(rendered)["image"] == f"loopgate:{project['version']}"
    for obj in rendered:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "loopgate"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == project["version"]


# ---- default values ----


def test_default_values_render_valid_objects() -> None:
    objects = render()
    assert sorted(obj["kind"] for obj in objects) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
        "ServiceAccount",
    ]
    assert_valid(objects)


def test_the_app_runs_the_kubernetes_runtime_non_root_on_a_read_only_root() -> None:
    objects = render()
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    app = container(objects)
    env = env_of(objects)
    for name, value in CHART_SET.items():
        assert env[name]["value"] == value
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's numeric user
    assert app["securityContext"]["readOnlyRootFilesystem"] is True
    assert app["securityContext"]["allowPrivilegeEscalation"] is False
    assert app["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]
    # The state dir is writable: an emptyDir mounted where LOOPGATE_STATE_DIR points.
    mounts = {m["mountPath"]: m["name"] for m in app["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts[env["LOOPGATE_STATE_DIR"]["value"]]]
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert app["resources"]["requests"] and app["resources"]["limits"]


def test_probes_hit_healthz_and_readyz_on_the_served_port() -> None:
    objects = render()
    app = container(objects)
    ports = {p["name"]: p["containerPort"] for p in app["ports"]}
    assert app["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert app["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    # The port the probes name is the one `loopgate serve` listens on, and the one the Service targets.
    assert str(ports["http"]) == app["command"][app["command"].index("--port") + 1]
    service = one(objects, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    template_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= template_labels.items()


def test_every_loopgate_variable_is_a_setting_the_app_reads() -> None:
    values = {
        "github": {"appId": 123456},
        "publicUrl": "https://loopgate.example.com",
        "apiToken": {"existingSecret": "loopgate-api", "key": "token"},
        "database": {"existingSecret": "loopgate-db", "key": "url"},
        "settings": {"workers": 0, "heartbeat_s": 2.5, "github_throttle": False, "outbox_backoff_max_s": 60},
    }
    env = env_of(render(values))
    fields = set(AppSettings.model_fields)
    unknown = [name for name in env if name.removeprefix("LOOPGATE_").lower() not in fields]
    assert not unknown, f"variables the App never reads: {unknown}"
    assert env["LOOPGATE_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "loopgate-db", "key": "url"}
    assert env["LOOPGATE_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "loopgate-api", "key": "token"}
    # The App accepts what the chart sets: plain values as rendered, secret references filled in.
    plain = {name: item["value"] for name, item in env.items() if "value" in item}
    secrets = {name: "from-a-secret" for name, item in env.items() if "valueFrom" in item}
    given = {**plain, **secrets}
    settings = AppSettings(**{name.removeprefix("LOOPGATE_").lower(): v for name, v in given.items()})
    assert settings.runtime == "kubernetes"
    assert settings.workers == 0 and settings.heartbeat_s == 2.5 and settings.github_throttle is False
    assert settings.github_app_id == 123456 and settings.public_url == "https://loopgate.example.com"
    assert str(settings.github_private_key_path) == "/etc/loopgate/github/private-key.pem"


# ---- RBAC ----


def test_default_rbac_is_a_cluster_role_with_exactly_the_runtime_verbs() -> None:
    objects = render()
    role = one(objects, "ClusterRole")
    assert granted(role) == {**CORE_RULES, **ISTIO_RULE}
    binding = one(objects, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    account = one(objects, "ServiceAccount")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    assert not of_kind(objects, "Role") and not of_kind(objects, "RoleBinding")


def test_per_namespace_roles_with_istio() -> None:
    objects = render({"routing": "istio", "rbac": {"namespaces": ["shop", "sandboxes"]}})
    assert_valid(objects)
    assert not of_kind(objects, "ClusterRole") and not of_kind(objects, "ClusterRoleBinding")
    roles = {role["metadata"]["namespace"]: role for role in of_kind(objects, "Role")}
    bindings = {b["metadata"]["namespace"]: b for b in of_kind(objects, "RoleBinding")}
    assert sorted(roles) == sorted(bindings) == ["sandboxes", "shop"]
    account = one(objects, "ServiceAccount")["metadata"]["name"]
    for namespace, role in roles.items():
        assert granted(role) == {**CORE_RULES, **ISTIO_RULE}
        binding = bindings[namespace]
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }
        # The App's ServiceAccount lives in the release's namespace, not in the one it is granted.
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]


def test_gateway_api_with_a_service_monitor() -> None:
    objects = render({"routing": "gateway-api", "metrics": {"serviceMonitor": {"enabled": True}}})
    assert_valid(objects)
    grants = granted(one(objects, "ClusterRole"))
    assert grants == {**CORE_RULES, **GATEWAY_API_RULE}
    assert not any(group == "networking.istio.io" for group, _ in grants)


def test_routing_none_grants_no_routing_objects() -> None:
    assert granted(one(render({"routing": "none"}), "ClusterRole")) == CORE_RULES


@pytest.mark.parametrize("routing", ["istio", "gateway-api", "none"])
def test_no_wildcards_and_secrets_never_read(routing: str) -> None:
    """Secrets: loopgate creates and deletes its copies' logins, and reads none (no get, list, watch)."""
    for role in of_kind(render({"routing": routing}), "ClusterRole"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], rule
            if "secrets" in rule["resources"]:
                assert rule["resources"] == ["secrets"] and sorted(rule["verbs"]) == ["create", "delete"]


def test_service_monitor_renders_the_expected_fields() -> None:
    """No published schema for monitoring.coreos.com/v1 ServiceMonitor is available here (it is the Prometheus
    Operator's CRD): assert the fields it must carry instead of inventing a schema."""
    objects = render(
        {"metrics": {"serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}}}}
    )
    monitor = one(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == NAMESPACE
    assert monitor["metadata"]["labels"]["release"] == "prom"
    service = one(objects, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    port = service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["endpoints"] == [
        {"port": port, "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}
    ]
    assert not of_kind(render(), "ServiceMonitor")


def test_pod_disruption_budget_is_off_by_default_and_valid_when_on() -> None:
    assert not of_kind(render(), "PodDisruptionBudget")
    database = {"existingSecret": "db", "key": "url"}
    objects = render({"replicaCount": 2, "database": database, "podDisruptionBudget": {"enabled": True}})
    assert_valid(objects)
    budget = one(objects, "PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"] == one(objects, "Deployment")["spec"]["selector"]


# ---- secrets ----


def test_existing_secrets_are_referenced_and_no_value_is_rendered() -> None:
    """Secret values given while `secrets.create` is off never reach the rendered output."""
    values = {
        "github": {
            "appId": 1,
            "privateKey": {"existingSecret": "gh-app", "key": "key.pem"},
            "webhookSecret": {"existingSecret": "gh-hook", "key": "secret"},
        },
        "database": {"existingSecret": "db", "key": "url"},
        "apiToken": {"existingSecret": "api", "key": "token"},
        "secrets": {"create": False, **SECRET_VALUES},
    }
    texts = render_text(values)
    whole = "\n".join(texts.values())
    for value in SECRET_VALUES.values():
        assert value.strip() not in whole
        assert "sentinel" not in whole
    objects = render(values)
    assert not of_kind(objects, "Secret")
    assert_valid(objects)
    env = env_of(objects)
    assert env["LOOPGATE_WEBHOOK_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "gh-hook", "key": "secret"}
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    key_volume = next(v for v in pod["volumes"] if "secret" in v)
    assert key_volume["secret"]["secretName"] == "gh-app"
    assert key_volume["secret"]["items"] == [{"key": "key.pem", "path": "private-key.pem"}]
    for variable in ("LOOPGATE_WEBHOOK_SECRET", "LOOPGATE_DATABASE_URL", "LOOPGATE_API_TOKEN"):
        assert "value" not in env[variable] and "secretKeyRef" in env[variable]["valueFrom"]


def test_values_schema_has_no_place_for_a_secret_outside_secrets() -> None:
    """values.yaml holds Secret names and keys only: a secret value put where a name goes is refused."""
    with pytest.raises(helm.HelmValuesError, match="webhookSecret"):
        render({"github": {"webhookSecret": "plain-secret"}})


def test_secrets_create_for_trying_it_out() -> None:
    objects = render({"secrets": {"create": True, **SECRET_VALUES}})
    assert_valid(objects)
    secret = one(objects, "Secret")
    assert secret["type"] == "Opaque"
    assert sorted(secret["data"]) == ["api-token", "database-url", "private-key.pem", "webhook-secret"]
    name = secret["metadata"]["name"]
    env = env_of(objects)
    for variable, key in [
        ("LOOPGATE_WEBHOOK_SECRET", "webhook-secret"),
        ("LOOPGATE_API_TOKEN", "api-token"),
        ("LOOPGATE_DATABASE_URL", "database-url"),
    ]:
        assert env[variable]["valueFrom"]["secretKeyRef"] == {"name": name, "key": key}
    # Only base64 in the Secret: no value in plain text anywhere, and the pods roll when it changes.
    whole = "\n".join(render_text({"secrets": {"create": True, **SECRET_VALUES}}).values())
    assert "sentinel" not in whole
    annotations = one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/secret"])


# ---- values that must fail, with a message that says why ----


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"rbac": {"namespace": ["shop"]}}, "at '/rbac': additional properties 'namespace' not allowed"),
        ({"replicas": 2}, "additional properties 'replicas' not allowed"),
        ({"routing": "linkerd"}, "at '/routing': value must be one of 'istio', 'gateway-api', 'none'"),
        ({"settings": {"worker": 4}}, "at '/settings': additional properties 'worker' not allowed"),
        ({"metrics": {"serviceMonitor": {"enable": True}}}, "additional properties 'enable' not allowed"),
    ],
)
def test_a_values_typo_fails_template_and_lint(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError) as failed:
        render(values)
    assert "values don't meet the specifications of the schema" in str(failed.value)
    assert message in str(failed.value)
    assert any(message in problem["error"] for problem in lint_problems(values))


def test_replicas_without_postgres_fail_with_a_clear_message() -> None:
    with pytest.raises(helm.HelmRenderError, match="replicaCount > 1 needs a PostgreSQL database"):
        render({"replicaCount": 3})


def test_a_missing_private_key_fails_with_a_clear_message() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"key is missing: set github.privateKey.existingSecret"):
        render({"github": {"privateKey": {"existingSecret": "", "key": "private-key.pem"}}})


# ---- values.yaml and its schema agree, and every value is documented ----


def closed_paths(schema: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every key path the schema defines under objects closed with `additionalProperties: false`."""
    for key, sub in schema.get("properties", {}).items():
        path = (*prefix, key)
        yield path
        if sub.get("additionalProperties") is False:
            yield from closed_paths(sub, path)


def value_paths(
    values: dict[str, Any], schema: dict[str, Any], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[str, ...]]:
    for key, value in values.items():
        path = (*prefix, key)
        yield path
        sub = schema.get("properties", {}).get(key, {})
        if isinstance(value, dict) and sub.get("additionalProperties") is False:
            yield from value_paths(value, sub, path)


def test_values_yaml_and_schema_agree_and_every_value_is_documented() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    text = (CHART / "values.yaml").read_text(encoding="utf-8")
    values = yaml.safe_load(text)
    defined = set(closed_paths(schema)) - {("global",)}
    assert set(value_paths(values, schema)) == defined
    # helm-docs style: each leaf value has a `# --` description in the comment block right above it.
    lines = text.splitlines()
    stack: list[tuple[int, str]] = []
    undocumented = []
    for number, line in enumerate(lines):
        found = re.match(r"^( *)([A-Za-z_][A-Za-z0-9_]*):(.*)$", line)
        if not found:
            continue
        indent, key, rest = len(found[1]), found[2], found[3].strip()
        stack = [(i, k) for i, k in stack if i < indent]
        path = (*(k for _, k in stack), key)
        stack.append((indent, key))
        if path not in defined or (rest == "" and _is_closed(schema, path)):
            continue
        above = number - 1
        block = []
        while above >= 0 and lines[above].strip().startswith("#"):
            block.append(lines[above].strip())
            above -= 1
        if not any(comment.startswith("# --") for comment in block):
            undocumented.append(".".join(path))
    assert not undocumented, f"values without a `# --` description: {undocumented}"


def _is_closed(schema: dict[str, Any], path: tuple[str, ...]) -> bool:
    node = schema
    for key in path:
        node = node["properties"][key]
    return node.get("additionalProperties") is False


def test_notes_tell_the_user_what_is_missing() -> None:
    notes = render_text()[f"{CHART.name}/templates/NOTES.txt"]
    assert "create secret generic loopgate-github" in notes
    assert "github.appId is not set" in notes
    assert "No database is configured" in notes
    values = {
        "github": {"appId": 7},
        "publicUrl": "https://lg.example.com",
        "database": {"existingSecret": "db", "key": "u"},
    }
    configured = render_text(values)[f"{CHART.name}/templates/NOTES.txt"]
    assert "not set" not in configured and "No database" not in configured


def test_chart_files_are_the_ones_shipped(tmp_path: Path) -> None:
    """`helm package` takes the chart as it is; the archive holds the schema and NOTES."""
    archive = helm.package(CHART, destination=tmp_path)
    with helm.Chart.load(archive) as packaged:
        assert packaged.schema is not None
        names = {t["name"] for t in packaged.templates}
    assert "templates/NOTES.txt" in names and "templates/rbac.yaml" in names


# ---- docs/kubernetes.md: its examples are what the code accepts ----

DOCS = ROOT / "docs" / "kubernetes.md"


def yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)


def test_the_docs_shop_config_and_runtime_keys_are_valid() -> None:
    from bot.config.loader import parse_config

    blocks = yaml_blocks()
    shop = next(block for block in blocks if block.startswith("version: 1"))
    config = parse_config(shop, "docs/kubernetes.md")
    assert config.runtime.kind == "kubernetes"
    assert sorted(config.services) == ["gateway", "inventory", "orders", "payments"]
    assert all(service.kubernetes is not None for service in config.services.values())
    # The block listing every runtime key, on top of the shop's services and suites.
    runtime = next(block for block in blocks if block.startswith("runtime:"))
    full = yaml.safe_load(shop) | yaml.safe_load(runtime)
    assert parse_config(yaml.safe_dump(full)).runtime.kind == "kubernetes"


def test_the_docs_mesh_config_has_the_access_log_format_the_runtime_parses() -> None:
    mesh = next(block for block in yaml_blocks() if "IstioOperator" in block)
    config = yaml.safe_load(mesh)["spec"]["meshConfig"]
    assert config["accessLogFile"] == "/dev/stdout"
    assert config["accessLogEncoding"] == "JSON"
    fields = json.loads(config["accessLogFormat"])
    assert fields == {
        "start_time": "%START_TIME%",
        "method": "%REQ(:METHOD)%",
        "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
        "response_code": "%RESPONSE_CODE%",
        "duration": "%DURATION%",
        "baggage": "%REQ(BAGGAGE)%",
        "traceparent": "%REQ(TRACEPARENT)%",
        "x_loopgate_sandbox": "%REQ(X-LOOPGATE-SANDBOX)%",
        "upstream_cluster": "%UPSTREAM_CLUSTER%",
    }


def test_the_docs_rbac_table_matches_the_chart() -> None:
    """The docs' RBAC table explains every resource the chart grants, with exactly its verbs."""
    text = DOCS.read_text(encoding="utf-8")
    table = text[text.index("## RBAC, verb by verb") : text.index("## Security")]
    documented: dict[tuple[str, str], list[str]] = {}
    current: tuple[str, str] | None = None
    for line in table.splitlines():
        row = re.match(r"^\| (?:`([a-z/]+)` \(([a-z0-9.]+)\)[^|]*)?\| ([^|]+) \|", line)
        if not row:
            continue
        if row[1]:
            current = ("" if row[2] == "core" else row[2], row[1])
        assert current is not None
        verbs = row[3].strip()
        listed = MANAGED if verbs.startswith("the same eight") else [v.strip() for v in verbs.split(",")]
        documented.setdefault(current, []).extend(listed)
    assert documented == {**CORE_RULES, **ISTIO_RULE, **GATEWAY_API_RULE}


def test_every_settings_value_is_a_setting_the_app_reads() -> None:
    """`settings.<key>` becomes `LOOPGATE_<KEY>`: each key the schema allows must be an App setting."""
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    allowed = set(schema["properties"]["settings"]["properties"])
    assert allowed <= set(AppSettings.model_fields), allowed - set(AppSettings.model_fields)
    every = {key: None for key in allowed}
    env = env_of(render({"settings": {**every, "workers": 3, "gc_every_s": 60}}))
    assert env["LOOPGATE_WORKERS"]["value"] == "3" and env["LOOPGATE_GC_EVERY_S"]["value"] == "60"


def merge(into: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value
    return into


def test_the_docs_helm_install_renders_what_it_promises() -> None:
    """The `helm install` in the docs, its `--set`s parsed by Helm's own parser, renders valid objects with
    a Role in `shop` only, the database from its Secret and the image from the registry."""
    text = DOCS.read_text(encoding="utf-8")
    command = text[text.index("helm install loopgate") :].split("```")[0]
    values: dict[str, Any] = {}
    for setting in re.findall(r"--set '?([^' \\\n]+)'?", command):
        merge(values, helm.parse_set_string(setting))
    objects = render(values)
    assert_valid(objects)
    assert [role["metadata"]["namespace"] for role in of_kind(objects, "Role")] == ["shop"]
    assert not of_kind(objects, "ClusterRole")
    env = env_of(objects)
    assert env["LOOPGATE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "loopgate-db"
    assert env["LOOPGATE_GITHUB_APP_ID"]["value"] == "123456"
    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    assert container(objects)["image"] == f"registry.example/loopgate:{version}"
    # The Secret the docs create holds the keys the chart reads by default.
    assert "--from-file=private-key.pem=" in text and '--from-literal=webhook-secret="' in text


def test_extra_env_cannot_override_what_the_chart_sets() -> None:
    with pytest.raises(helm.HelmValuesError, match="extraEnv"):
        render({"extraEnv": [{"name": "LOOPGATE_RUNTIME", "value": "local"}]})
    env = env_of(render({"extraEnv": [{"name": "LOOPGATE_KUBE_CONTEXT", "value": "prod"}]}))
    assert env["LOOPGATE_KUBE_CONTEXT"]["value"] == "prod"
