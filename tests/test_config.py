"""`.loopgate.yml`: what a user sees when the file is wrong, and that the published schema is current."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from bot.config import ConfigError, load_config, parse_config
from bot.config.jsonschema import config_schema
from bot.config.loader import MAX_ALIASES, MAX_CONFIG_BYTES, MAX_DEPTH, MAX_VALUES

ROOT = Path(__file__).resolve().parents[1]
SERVICES = "services:\n  api: {paths: [a], local: {run: 'x {port}'}}\n"
"""One valid service, appended after the lines a case is about (a config without one is an error)."""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "version: 1\nservices:\n  orders:\n    paths: services/orders\n    local: {run: 'x {port}'}\n",
            ".loopgate.yml:4 services.orders.paths: expected a list",
        ),
        (
            "version: 1\nservices:\n  orders:\n    paths: [a]\n    local:\n"
            "      run: 'x {port}'\n      helth: /h\n",
            ".loopgate.yml:7 services.orders.local.helth: unknown key",
        ),
        (
            "version: 1\nservices:\n  orders:\n    paths: [a]\n    local:\n      run: serve\n",
            ".loopgate.yml:6 services.orders.local.run: must contain {port}: the runtime chooses the port",
        ),
        (
            "version: 1\nverify:\n  suites:\n    - name: e2e\n      run: x\n      timeout: soon\n" + SERVICES,
            ".loopgate.yml:6 verify.suites[0].timeout: expected a number of seconds",
        ),
        (
            "version: 1\nservices:\n  Orders_1:\n    paths: [a]\n    local: {run: 'x {port}'}\n",
            ".loopgate.yml:2 services: service name 'Orders_1' must be a DNS-1123 label",
        ),
        ("version: 1\nruntime: {kind: nomad}\n" + SERVICES, ".loopgate.yml:2 runtime: "),
        ("version: 1\nrouting: {header: X Bad}\n" + SERVICES, ".loopgate.yml:2 routing.header: "),
        ("services: {}\n", ".loopgate.yml:1 version: required"),
        ("version: 1\nservices: [\n", ".loopgate.yml:3 invalid YAML"),
        ("", ".loopgate.yml:1 the file is empty"),
        (
            "version: 1\nservices:\n  orders:\n    paths: [a]\n    local: {run: 'x {port}'}\n"
            "    state: {sqlite: db.sqlite, postgres: {database: orders}}\n",
            ".loopgate.yml:6 services.orders.state: set exactly one of sqlite or postgres",
        ),
    ],
)
def test_bad_config_names_file_line_and_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_unknown_key_among_several_errors_says_how_many_more() -> None:
    with pytest.raises(ConfigError, match=r"\(and 1 more\)$"):
        parse_config("version: 1\nbogus: 1\nother: 2\n" + SERVICES)


def test_example_shop_config_loads() -> None:
    config = load_config(ROOT / "examples" / "shop" / ".loopgate.yml")
    assert set(config.services) == {"gateway", "orders", "inventory", "payments", "pricing"}
    pricing = config.services["pricing"]
    assert pricing.protocol == "grpc" and pricing.grpc is not None
    assert pricing.grpc.protos == ["services/pricing/proto/*.proto"]
    orders = config.services["orders"]
    assert orders.state is not None and orders.state.sqlite == "orders.db"
    assert config.routing.baggage_member == "loopgate-sandbox"
    assert config.runtime.kind == "local"


K8S_SERVICE = (
    "  api:\n    paths: [a]\n"
    "    kubernetes: {namespace: shop, workload: deployment/api, image: 'r/api:{sha}'}\n"
)
K8S = "runtime: {kind: kubernetes}\nservices:\n"


def test_kubernetes_runtime_is_read_with_its_own_sections() -> None:
    config = parse_config("version: 1\n" + K8S + K8S_SERVICE)
    assert config.runtime.kind == "kubernetes" and config.runtime.kubernetes.routing == "istio"
    api = config.services["api"].kubernetes
    assert api is not None and api.deployment == "api" and api.port == 80


@pytest.mark.parametrize(
    ("text", "cause"),
    [
        ("runtime: {kind: kubernetes}\n" + SERVICES, ".loopgate.yml:4 services.api: no `kubernetes:`"),
        ("services:\n" + K8S_SERVICE, ".loopgate.yml:3 services.api: no `local:` section"),
        (
            K8S + K8S_SERVICE + "verify:\n  suites:\n  - {name: e2e, run: x}\n",
            ".loopgate.yml:9 verify.suites[0]: suite 'e2e' has no `kubernetes:`",
        ),
        (
            K8S + K8S_SERVICE.replace("{sha}", "{branch}"),
            "{branch} is not one of {sha}",
        ),
        (
            K8S + K8S_SERVICE.replace("image: 'r/api:{sha}'", "port: 80"),
            "set exactly one of image",
        ),
    ],
)
def test_a_runtime_section_that_is_missing_or_wrong_names_its_line(text: str, cause: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config("version: 1\n" + text)
    assert cause in str(raised.value)


def test_published_config_schema_is_current() -> None:
    published = json.loads((ROOT / "docs" / "config.schema.json").read_text())
    assert published == json.loads(json.dumps(config_schema())), "run: python -m bot.config.jsonschema"


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / ".loopgate.yml")


def test_diff_requests_are_validated() -> None:
    base = "version: 1\nservices:\n  api: {paths: [a], local: {run: 'x {port}'}}\nverify:\n  diff:\n"
    with pytest.raises(ConfigError, match=r"^\.loopgate\.yml:6 verify\.diff\.requests: .*at least 1"):
        parse_config(base + "    requests: []\n")
    with pytest.raises(ConfigError, match=r":7 verify\.diff\.requests\[0\]: POST writes state on both sides"):
        parse_config(base + "    requests:\n      - {service: api, method: POST, path: /orders}\n")
    with pytest.raises(ConfigError, match=r"unknown service 'web'"):
        parse_config(base + "    requests:\n      - {service: web, path: /}\n")
    with pytest.raises(ConfigError, match=r":7 verify\.diff\.ignore: 'id' is not a JSON pointer"):
        parse_config(base + "    requests: [{service: api, path: /}]\n    ignore: [id]\n")
    config = parse_config(base + "    requests: [{service: api, method: POST, path: /o, unsafe: true}]\n")
    assert config.verify.diff.requests is not None and config.verify.diff.requests[0].unsafe


# -- hostile input: a config an agent could write must fail closed, fast, with file:line ------------

ORDERS = "  orders:\n    paths: [a]\n    local: {run: 'x {port}'}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "version: 1\nservices:\n" + ORDERS + ORDERS,
            ".loopgate.yml:6 duplicate key 'orders' (first at line 3)",
        ),
        (
            "version: 1\nservices:\n  orders:\n    paths: [a]\n    local:\n      run: 'x {port}'\n"
            "      run: 'evil {port}'\n",
            ".loopgate.yml:7 duplicate key 'run' (first at line 6)",
        ),
        (
            "version: 1\n" + SERVICES + "version: 1\n",
            ".loopgate.yml:4 duplicate key 'version' (first at line 1)",
        ),
        (
            "version: 1\nservices: {api: {paths: [a], paths: [b], local: {run: 'x {port}'}}}\n",
            ".loopgate.yml:2 duplicate key 'paths' (first at line 2)",
        ),
    ],
)
def test_duplicate_keys_name_both_lines(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("text", "line"),
    [("version: 1\nservices: {}\n", 2), ("version: 1\n", 1), ("version: 1\nverify: {suites: []}\n", 1)],
)
def test_no_service_means_nothing_could_be_verified(text: str, line: int) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert str(caught.value) == (
        f".loopgate.yml:{line} services: declare at least one service;"
        " with none, nothing could ever be verified"
    )


@pytest.mark.parametrize(
    ("cwd", "problem"),
    [
        ("/srv/orders", "'/srv/orders' must be relative to the repository root, not absolute"),
        ("../..", "'../..' must stay inside the repository (no '..')"),
        ("svc/../../etc", "'svc/../../etc' must stay inside the repository (no '..')"),
        ('"svc\\\\..\\\\x"', "'svc\\\\..\\\\x' must not contain a backslash or NUL"),
        ('"svc\\0"', "'svc\\x00' must not contain a backslash or NUL"),
    ],
)
def test_cwd_must_stay_inside_the_repository(cwd: str, problem: str) -> None:
    service = "version: 1\nservices:\n  api:\n    paths: [a]\n    local:\n      run: 'x {port}'\n"
    text = service + f"      cwd: {cwd}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert str(caught.value) == f".loopgate.yml:7 services.api.local.cwd: {problem}"


def test_relative_cwd_inside_the_repository_is_kept() -> None:
    text = "version: 1\nservices:\n  api: {paths: [a], local: {run: 'x {port}', cwd: ./svc/api..v2}}\n"
    assert parse_config(text).services["api"].local.cwd == "./svc/api..v2"


def test_non_utf8_bytes_name_the_line_of_the_first_bad_byte(tmp_path: Path) -> None:
    data = ("version: 1\n" + SERVICES).encode() + b"# caf\xe9\n# \xff\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert str(caught.value) == ".loopgate.yml:4 not valid UTF-8 (byte 0xe9)"
    (tmp_path / ".loopgate.yml").write_bytes(data)
    with pytest.raises(ConfigError, match=r"^\.loopgate\.yml:4 not valid UTF-8 \(byte 0xe9\)$"):
        load_config(tmp_path / ".loopgate.yml")


def test_text_with_a_lone_surrogate_is_not_utf8() -> None:
    with pytest.raises(ConfigError, match=r"^\.loopgate\.yml:2 not valid UTF-8 \(byte 0xed\)$"):
        parse_config("version: 1\n# \udce9\n" + SERVICES)


def test_control_character_is_invalid_yaml_not_a_traceback() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("version: 1\n" + SERVICES + "# \x00\n")
    assert str(caught.value) == ".loopgate.yml:4 invalid YAML: character #x0000 is not allowed"


def test_utf8_text_and_bytes_load_alike() -> None:
    text = "version: 1\n# café ☕\n" + SERVICES
    assert parse_config(text) == parse_config(text.encode())


def test_file_over_the_size_limit_is_refused_before_parsing() -> None:
    line = "# " + "x" * 1021 + "\n"  # 1 KiB a line after 3 short ones: the byte past 1 MiB is on the last
    data = ("version: 1\n" + SERVICES).encode() + line.encode() * 1024
    assert len(data) > MAX_CONFIG_BYTES
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert str(caught.value) == ".loopgate.yml:1027 the file is larger than the limit of 1 MiB"


def test_file_at_the_size_limit_still_loads() -> None:
    head = ("version: 1\n" + SERVICES).encode()
    data = head + b"#" * (MAX_CONFIG_BYTES - len(head) - 1) + b"\n"
    assert len(data) == MAX_CONFIG_BYTES
    assert set(parse_config(data).services) == {"api"}


def test_more_aliases_than_the_limit_names_the_alias_that_crossed_it() -> None:
    lines = ["      - *p" for _ in range(MAX_ALIASES + 1)]
    text = "version: 1\nservices:\n  api:\n    paths: &p [a]\n    local: {run: 'x {port}'}\nverify:\n"
    text += "  diff:\n    ignore:\n" + "\n".join(lines) + "\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert str(caught.value) == f".loopgate.yml:{9 + MAX_ALIASES} more than {MAX_ALIASES} aliases (the limit)"


def test_aliases_within_the_limits_work() -> None:
    text = (
        "version: 1\nservices:\n  api: {paths: &shared [a, b], local: &local {run: 'x {port}', health: /h}}\n"
        "  web: {paths: *shared, local: *local}\n"
    )
    config = parse_config(text)
    assert config.services["web"].paths == ["a", "b"] and config.services["web"].local.health == "/h"


def test_recursive_alias_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("version: 1\n" + SERVICES + "verify: &v {diff: {ignore: [*v]}}\n")
    assert str(caught.value) == ".loopgate.yml:4 alias *v refers to a value that contains it"


def test_nesting_deeper_than_the_limit_is_refused() -> None:
    deep = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
    with pytest.raises(ConfigError) as caught:
        parse_config("version: 1\n" + SERVICES + f"verify: {deep}\n")
    assert str(caught.value) == f".loopgate.yml:4 nested deeper than {MAX_DEPTH} levels (the limit)"


def test_python_tags_are_refused_by_the_safe_loader() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("version: 1\n" + SERVICES + "verify: !!python/object/apply:os.system ['touch /tmp/x']\n")
    assert str(caught.value) == (
        ".loopgate.yml:4 invalid YAML: could not determine a constructor for the tag"
        " 'tag:yaml.org,2002:python/object/apply:os.system'"
    )


def _laughs(levels: int, width: int) -> str:
    """A "billion laughs": each level lists `width` aliases of the one before."""
    lines = ["version: 1", SERVICES.rstrip("\n"), "verify:", "  diff:", "    headers: &l0 [lol]"]
    for level in range(1, levels + 1):
        aliases = ", ".join([f"*l{level - 1}"] * width)
        lines.append(
            f"    ignore: &l{level} [{aliases}]" if level == 1 else f"    x{level}: &l{level} [{aliases}]"
        )
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("levels", "width", "message"),
    [
        # The classic: at level 5 (line 11, 9**5 laughs) the document expands past the limit.
        (9, 9, f".loopgate.yml:11 expands to more than {MAX_VALUES} values (the limit)"),
        # Narrow, to stay under MAX_ALIASES: at level 15 (line 21, 2**15 laughs) it passes the limit.
        (25, 2, f".loopgate.yml:21 expands to more than {MAX_VALUES} values (the limit)"),
    ],
)
def test_alias_bombs_are_refused_small_and_fast(levels: int, width: int, message: str) -> None:
    """An input bound, not a benchmark (bench/hostile_inputs.py times it): far below what expanding
    the bomb takes."""
    bomb = _laughs(levels, width)
    assert len(bomb) < 1024
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError) as caught:
            parse_config(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(caught.value) == message
    assert peak < 10 * 1024 * 1024, peak


def test_docs_state_the_limits() -> None:
    limits = (ROOT / "docs" / "config.md").read_text().split("## Limits", 1)[1]
    for value in ("1 MiB", f"{MAX_ALIASES} aliases", f"{MAX_VALUES:,} values", f"{MAX_DEPTH} levels"):
        assert value in limits, value


def test_config_path_that_is_a_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert str(caught.value) == f"{tmp_path}: Is a directory"
