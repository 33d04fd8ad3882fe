"""What the largest hostile inputs cost, beside an ordinary input to the same parser.

    .venv/bin/python -m bench.hostile_inputs --rounds 3

Every parser of untrusted input has a bound (steps, values, bytes) that the tests check by counting;
this measures what reaching that bound costs in CPU, so a bound can be judged against the run it sits
in. Each case runs a hostile input and an ordinary one in alternation, round after round, in this
process: CPU time (`time.process_time`), which other processes on a shared machine do not inflate.
Exits 0: a measurement.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bot.cli.output import EXAMPLES
from bot.config import ConfigError
from bot.config.loader import parse_config
from bot.config.schema import Diff
from bot.verify.compare import Response
from bot.verify.diff import Pair, Probe, run_control_diff
from bot.verify.junit import parse_junit
from bot.verify.openapi import MAX_STEPS, compare_documents, parse_document

Json = dict[str, Any]


@dataclass(frozen=True)
class Case:
    name: str
    hostile: Callable[[], object]
    ordinary: Callable[[], object]
    what: str


def _obj(**properties: Json) -> Json:
    return {"type": "object", "properties": properties}


def _openapi(paths: dict[str, Json], schemas: Json | None = None) -> bytes:
    raw: Json = {"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": paths}
    if schemas:
        raw["components"] = {"schemas": schemas}
    return json.dumps(raw).encode()


def _get(schema: Json) -> Json:
    ok = {"description": "ok", "content": {"application/json": {"schema": schema}}}
    return {"get": {"responses": {"200": ok}}}


def _compared(document: bytes) -> Callable[[], object]:
    def run() -> object:
        parsed = parse_document(document)
        return compare_documents(parsed, parsed, "svc")

    return run


def openapi_cases() -> list[Case]:
    widest = _obj(**{f"f{i}": {"type": "integer", "maximum": i} for i in range(MAX_STEPS)})
    ordinary = _openapi(
        {f"/items{i}": _get(_obj(sku={"type": "string"}, price={"type": "integer"})) for i in range(50)}
    )
    twice = [{"$ref": f"#/components/schemas/L{i + 1}"} for i in range(40)]
    bomb = {f"L{i}": _obj(a=twice[i], b=twice[i]) for i in range(40)}  # each level names the next twice
    bomb["L40"] = _obj(x={"type": "string"})
    return [
        Case(
            "openapi: the largest description",
            _compared(_openapi({"/a": _get(widest)})),
            _compared(ordinary),
            f"{MAX_STEPS:,} schema comparisons (the bound), ~10 MB vs 50 operations",
        ),
        Case(
            "openapi: a $ref bomb",
            _compared(_openapi({"/a": _get({"$ref": "#/components/schemas/L0"})}, bomb)),
            _compared(ordinary),
            "2^40 paths through 41 schemas vs 50 operations",
        ),
    ]


def _laughs(levels: int, width: int) -> str:
    lines = ["version: 1", "services:", "  api: {paths: [a], local: {run: 'x {port}'}}", "verify:", "  diff:"]
    lines.append("    headers: &l0 [lol]")
    for level in range(1, levels + 1):
        aliases = ", ".join([f"*l{level - 1}"] * width)
        key = "ignore" if level == 1 else f"x{level}"
        lines.append(f"    {key}: &l{level} [{aliases}]")
    return "\n".join(lines) + "\n"


def _parsed(parse: Callable[[Any], object], data: object) -> Callable[[], object]:
    """`parse(data)`, a refusal (the config's ConfigError, the report's ValueError) counted as an outcome."""

    def run() -> object:
        try:
            return parse(data)
        except (ConfigError, ValueError) as exc:
            return str(exc)

    return run


def config_case() -> Case:
    shop = (EXAMPLES / ".loopgate.yml").read_text()
    return Case(
        "config: an alias bomb",
        _parsed(parse_config, _laughs(9, 9)),
        _parsed(parse_config, shop),
        "9^9 values in 1 KB, refused at the bound vs the shop's .loopgate.yml",
    )


def junit_case() -> Case:
    entities = "".join(f'<!ENTITY a{i} "{f"&a{i - 1};" * 10}">' for i in range(1, 10))
    laughs = f'<!DOCTYPE t [<!ENTITY a0 "lol">{entities}]><testsuite><testcase name="&a9;"/></testsuite>'
    cases = "".join(f'<testcase classname="c" name="t{i}"/>' for i in range(1_000))
    return Case(
        "junit: billion laughs",
        _parsed(parse_junit, laughs.encode()),
        _parsed(parse_junit, f"<testsuite>{cases}</testsuite>".encode()),
        "refused at its DTD vs a report of 1,000 tests",
    )


def _diffed(size: int) -> Callable[[], object]:
    def side(prefix: str) -> Response:
        body = {"orders": [{"id": f"{prefix}{i}", "qty": i % 3} for i in range(size)]}
        return Response(200, {"content-type": "application/json"}, json.dumps(body).encode())

    sides = {"primary": side("a"), "secondary": side("b"), "candidate": side("c")}
    probe = Probe("svc", "GET", "/orders")

    def run() -> object:
        return run_control_diff(Diff(), [Pair(probe, (probe, probe))], lambda _, name: sides[name])

    return run


def diff_case() -> Case:
    return Case(
        "control diff: noise in a long list",
        _diffed(6_000),
        _diffed(60),
        "6,000 orders with a fresh id each vs 60",
    )


def cpu_ms(run: Callable[[], object]) -> float:
    started = time.process_time()
    run()
    return (time.process_time() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each side")
    opts = parser.parse_args()
    cases = [*openapi_cases(), config_case(), junit_case(), diff_case()]
    print(f"{'case':38} {'hostile ms':>11} {'ordinary ms':>12} {'ratio':>8}  what")
    for case in cases:
        hostile, ordinary = [], []
        for _ in range(opts.rounds):
            hostile.append(cpu_ms(case.hostile))
            ordinary.append(cpu_ms(case.ordinary))
        h, o = statistics.median(hostile), statistics.median(ordinary)
        ratio = h / o if o > 0 else float("inf")
        print(f"{case.name:38} {h:11.1f} {o:12.1f} {ratio:7.1f}x  {case.what}")


if __name__ == "__main__":
    main()
