"""`.loopgate.yml`: what a user sees when the file is wrong, and that the published schema is current."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.config import ConfigError, load_config, parse_config
from bot.config.jsonschema import config_schema

ROOT = Path(__file__).resolve().parents[1]


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
            "version: 1\nverify:\n  suites:\n    - name: e2e\n      run: x\n      timeout: soon\n",
            ".loopgate.yml:6 verify.suites[0].timeout: expected a number of seconds",
        ),
        (
            "version: 1\nservices:\n  Orders_1:\n    paths: [a]\n    local: {run: 'x {port}'}\n",
            ".loopgate.yml:2 services: service name 'Orders_1' must be a DNS-1123 label",
        ),
        ("version: 1\nruntime: {kind: nomad}\n", ".loopgate.yml:2 runtime: "),
        ("version: 1\nrouting: {header: X Bad}\n", ".loopgate.yml:2 routing.header: "),
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
        parse_config("version: 1\nbogus: 1\nother: 2\n")


def test_example_shop_config_loads() -> None:
    config = load_config(ROOT / "examples" / "shop" / ".loopgate.yml")
    assert set(config.services) == {"gateway", "orders", "inventory", "payments"}
    orders = config.services["orders"]
    assert orders.state is not None and orders.state.sqlite == "orders.db"
    assert config.routing.baggage_member == "loopgate-sandbox"
    assert config.runtime.kind == "local"


def test_kubernetes_runtime_shape_is_reserved() -> None:
    assert parse_config("version: 1\nruntime: {kind: kubernetes}\n").runtime.kind == "kubernetes"


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
