"""`protocol` and `grpc:` in `.loopgate.yml`: defaults, and errors that name file and line (#14 item 1)."""

from __future__ import annotations

import pytest

from bot.config import ConfigError, parse_config
from bot.config.schema import HealthCheck
from bot.runtimes.local.core import RuntimeCore

GRPC = """\
version: 1
services:
  pricing:
    paths: ["pricing/**"]
    protocol: grpc
    grpc:
      protos: ["proto/**/*.proto", "build/pricing.binpb"]
      import_paths: [proto]
      breaking: wire_json
    local: {run: "python -m pricing --port {port}"}
  web:
    paths: ["web/**"]
    local: {run: "x {port}"}
  edge:
    paths: ["edge/**"]
    protocol: http2
    local: {run: "x {port}", health: {tcp: true}}
"""


def test_grpc_service_reads_with_its_defaults() -> None:
    config = parse_config(GRPC)
    pricing = config.services["pricing"]
    assert pricing.protocol == "grpc"
    assert pricing.grpc is not None and pricing.grpc.breaking == "wire_json"
    assert pricing.grpc.import_paths == ["proto"]
    assert pricing.local_spec.health_check == HealthCheck(grpc="")  # grpc.health.v1, not GET /healthz
    assert pricing.openapi_path is None  # a gRPC server serves no /openapi.json
    assert config.services["web"].protocol == "http"
    assert config.services["web"].local_spec.health_check == HealthCheck(path="/healthz")
    assert config.services["edge"].protocol == "http2"


def test_grpc_section_defaults() -> None:
    config = parse_config(
        "version: 1\nservices:\n  p:\n    paths: [p]\n    protocol: grpc\n"
        "    grpc: {protos: [p.proto]}\n    local: {run: 'x {port}', health: {grpc: shop.P}}\n"
    )
    grpc = config.services["p"].grpc
    assert grpc is not None and grpc.import_paths == ["."] and grpc.breaking == "wire"
    assert config.services["p"].local_spec.health_check.grpc == "shop.P"
    assert "SERVING" in config.services["p"].local_spec.health_check.describe()


def test_the_data_plane_speaks_http2_to_http2_and_grpc_services_only() -> None:
    config = parse_config(GRPC)
    http2 = frozenset(name for name, s in config.services.items() if s.protocol != "http")
    assert http2 == {"pricing", "edge"}
    assert "_spec" in RuntimeCore.__dict__  # where the runtime derives DataPlaneSpec.http2 from this


def _service(*lines: str) -> str:
    body = "".join(f"    {line}\n" for line in lines)
    return f"version: 1\nservices:\n  p:\n    paths: [p]\n{body}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            _service("protocol: grpcs", "local: {run: 'x {port}'}"),
            ".loopgate.yml:5 services.p.protocol: input should be 'http', 'http2' or 'grpc'",
        ),
        (
            _service("grpc: {protos: [a.proto]}", "local: {run: 'x {port}'}"),
            ".loopgate.yml:5 services.p.grpc: a `grpc:` section needs `protocol: grpc`",
        ),
        (
            _service("protocol: grpc", "grpc:", "  protos: []", "local: {run: 'x {port}'}"),
            ".loopgate.yml:7 services.p.grpc.protos: list should have at least 1 item",
        ),
        (
            _service(
                "protocol: grpc", "grpc:", "  protos: [a.proto]", "  breaking: file", "local: {run: 'x'}"
            ),
            ".loopgate.yml:8 services.p.grpc.breaking: input should be 'wire' or 'wire_json'",
        ),
        (
            _service("protocol: grpc", "grpc:", "  protos: [/etc/a.proto]", "local: {run: 'x {port}'}"),
            ".loopgate.yml:7 services.p.grpc.protos: '/etc/a.proto' must be relative",
        ),
        (
            _service("protocol: grpc", "grpc:", "  protos: [a.proto]", "  import_paths: [../up]"),
            ".loopgate.yml:8 services.p.grpc.import_paths: '../up' must stay inside the repository",
        ),
        (
            _service("protocol: grpc", "grpc:", "  protos: [a.proto]", "  imports: [x]"),
            ".loopgate.yml:8 services.p.grpc.imports: unknown key",
        ),
        (
            _service("protocol: grpc", "local:", "  run: 'x {port}'", "  health: /healthz"),
            ".loopgate.yml:8 services.p.local.health: a gRPC server answers no HTTP GET",
        ),
        (
            _service("local:", "  run: 'x {port}'", '  health: {grpc: ""}'),
            ".loopgate.yml:7 services.p.local.health: a gRPC health check needs `protocol: grpc`",
        ),
        (
            _service("protocol: grpc", "local:", "  run: 'x {port}'", '  health: {grpc: "", tcp: true}'),
            ".loopgate.yml:8 services.p.local.health: set exactly one of `tcp: true`, `path` or `grpc`",
        ),
        (
            _service("protocol: grpc", "local:", "  run: 'x {port}'", '  health: {grpc: "a b"}'),
            ".loopgate.yml:8 services.p.local.health: a gRPC health service name has no spaces",
        ),
    ],
)
def test_bad_protocol_or_grpc_section_names_file_and_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(text)
    assert str(raised.value).startswith(message), str(raised.value)
