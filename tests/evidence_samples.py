"""Realistic Evidence records of the example shop, for any test that needs a finished run.

Each factory returns a fresh record with fixed times and SHAs, so rendered output is reproducible.
Verdicts and reasons come from `decide`, as the pipeline would set them, except for the error, which
the pipeline records directly.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

from bot.evidence import (
    Counts,
    DiffResult,
    ErrorKind,
    Evidence,
    Finding,
    GitRef,
    Links,
    Propagation,
    ServiceResult,
    Stage,
    SuiteResult,
    TestFailure,
    Verdict,
    decide,
)
from bot.report import render_check, render_comment, render_pr_body, render_step_summary

STARTED = datetime(2025, 11, 26, 9, 30, 0, tzinfo=UTC)
BASE_SHA = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
HEAD_SHA = "9fceb02d0ae598e95dc970b74767f19372d61af8"
MERGE_SHA = "e83c5163316f89bfbde7d9ab23ca2e25604af290"
REPO = "acme/shop"

FAILING_LOG = """\
============================= test session starts ==============================
collected 6 items

e2e/test_checkout.py F.F...                                              [100%]

=================================== FAILURES ===================================
____________________ test_checkout_in_stock_then_read_order ____________________

gateway = <httpx.Client object at 0x7f3a2c1d5e50>

    def test_checkout_in_stock_then_read_order(gateway: httpx.Client) -> None:
        item = gateway.get(f"/api/items/{IN_STOCK_SKU}")
        assert item.status_code == 200, item.text
        price_cents = item.json()["price_cents"]

        checkout = gateway.post("/api/checkout", json={"sku": IN_STOCK_SKU, "qty": 1, "card": GOOD_CARD})
>       assert checkout.status_code == 201, checkout.text
E       AssertionError: {"error":{"code":"upstream_bad_response","message":"no 'available'"}}
E       assert 502 == 201

e2e/test_checkout.py:43: AssertionError
_______________________ test_checkout_out_of_stock_is_409 ______________________

>       assert response.status_code == 409, response.text
E       AssertionError: {"error":{"code":"upstream_bad_response","message":"no 'available'"}}
E       assert 502 == 409

e2e/test_checkout.py:62: AssertionError
=========================== short test summary info ============================
FAILED e2e/test_checkout.py::test_checkout_in_stock_then_read_order - AssertionError: {"error":...
FAILED e2e/test_checkout.py::test_checkout_out_of_stock_is_409 - AssertionError: {"error":...
========================= 2 failed, 4 passed in 3.21s ==========================
"""


def _at(seconds: float) -> datetime:
    return STARTED + timedelta(seconds=seconds)


Outcome = Literal["ok", "failed", "skipped", "error", "cancelled"]


def _stages(outcomes: dict[str, Outcome] | None = None) -> list[Stage]:
    """The ten stages of the flow with plausible durations; `outcomes` overrides some."""
    timings = [
        ("plan", 40),
        ("build", 8_200),
        ("fork", 2_350),
        ("route", 120),
        ("verify", 14_800),
        ("decide", 2),
        ("report", 35),
        ("gate", 610),
        ("teardown", 900),
    ]
    stages, clock = [], 0.0
    for name, duration_ms in timings:
        outcome = (outcomes or {}).get(name, "ok")
        stages.append(Stage(name=name, started_at=_at(clock), duration_ms=duration_ms, outcome=outcome))
        clock += duration_ms / 1000
    return stages


def _decided(evidence: Evidence) -> Evidence:
    verdict, reasons = decide(evidence)
    evidence.verdict, evidence.reasons = verdict, reasons
    return evidence


def _base_record(run_id: str, head_ref: str, changed_files: list[str]) -> Evidence:
    return Evidence(
        run_id=run_id,
        repo=REPO,
        base=GitRef(ref="main", sha=BASE_SHA),
        head=GitRef(ref=head_ref, sha=HEAD_SHA),
        merge_sha=MERGE_SHA,
        trigger="push",
        routing_key="k7q2m9xa",
        changed_files=changed_files,
        started_at=STARTED,
        finished_at=_at(27.4),
        links=Links(
            html=f"https://loopgate.example.com/runs/{run_id}?token=t0k3n",
            json_=f"https://loopgate.example.com/api/runs/{run_id}?token=t0k3n",
        ),
    )


def _baseline(name: str) -> ServiceResult:
    return ServiceResult(name=name, forked=False, reason="unchanged", status="baseline")


def passing() -> Evidence:
    """A behaviour-preserving change to orders and payments: both forks reached, e2e green."""
    evidence = _base_record(
        "r-8f3c2a91d4e7b605",
        "agent/refactor-orders",
        ["services/orders/orders_app.py", "services/payments/payments_app.py"],
    )
    evidence.services = [
        _baseline("gateway"),
        ServiceResult(
            name="orders",
            forked=True,
            reason="changed: services/orders/orders_app.py",
            image_or_source=f"{MERGE_SHA[:12]}:services/orders",
            ready_ms=1_840,
            build_ms=5_100,
            tagged_requests=14,
            status="ready",
        ),
        _baseline("inventory"),
        ServiceResult(
            name="payments",
            forked=True,
            reason="changed: services/payments/payments_app.py",
            image_or_source=f"{MERGE_SHA[:12]}:services/payments",
            ready_ms=1_510,
            build_ms=3_020,
            tagged_requests=6,
            status="ready",
        ),
    ]
    evidence.suites = [
        SuiteResult(
            name="e2e",
            source="base",
            status="passed",
            exit_code=0,
            counts=Counts(tests=6, passed=6),
            duration_ms=3_420,
            log_tail="============================== 6 passed in 3.12s ===============================\n",
        )
    ]
    evidence.diff = [
        DiffResult(request="GET /api/orders/ord_1", service="orders", findings=[]),
        DiffResult(
            request="POST /api/checkout",
            service="orders",
            findings=[
                Finding(
                    kind="header_changed",
                    pointer="/headers/server-timing",
                    baseline="db;dur=3",
                    sandbox="db;dur=4",
                    breaking=False,
                )
            ],
        ),
    ]
    evidence.propagation = [Propagation(service="gateway"), Propagation(service="orders")]
    evidence.stages = _stages()
    return _decided(evidence)


def failing() -> Evidence:
    """The contract break: inventory renames `available`, orders still reads it, e2e fails."""
    evidence = _base_record(
        "r-2d71c0be9a5f4e13",
        "agent/inventory-in-stock",
        ["services/inventory/inventory_app.py", "services/inventory/tests/test_inventory_app.py"],
    )
    evidence.services = [
        _baseline("gateway"),
        _baseline("orders"),
        ServiceResult(
            name="inventory",
            forked=True,
            reason="changed: services/inventory/inventory_app.py",
            image_or_source=f"{MERGE_SHA[:12]}:services/inventory",
            ready_ms=1_620,
            build_ms=4_480,
            tagged_requests=9,
            status="ready",
        ),
        _baseline("payments"),
    ]
    evidence.suites = [
        SuiteResult(
            name="e2e",
            source="base",
            status="failed",
            exit_code=1,
            counts=Counts(tests=6, passed=4, failed=2),
            duration_ms=3_210,
            failures=[
                TestFailure(
                    test="e2e/test_checkout.py::test_checkout_in_stock_then_read_order",
                    message='AssertionError: {"error":{"code":"upstream_bad_response"}}\nassert 502 == 201',
                    file="e2e/test_checkout.py",
                    line=43,
                ),
                TestFailure(
                    test="e2e/test_checkout.py::test_checkout_out_of_stock_is_409",
                    message='AssertionError: {"error":{"code":"upstream_bad_response"}}\nassert 502 == 409',
                    file="e2e/test_checkout.py",
                    line=62,
                ),
            ],
            log_tail=FAILING_LOG,
        )
    ]
    evidence.diff = [
        DiffResult(
            request="GET /api/items/sku-tea-towel",
            service="inventory",
            findings=[
                Finding(
                    kind="field_removed",
                    pointer="/available",
                    baseline="1000000",
                    sandbox=None,
                    breaking=True,
                ),
                Finding(
                    kind="field_added", pointer="/in_stock", baseline=None, sandbox="1000000", breaking=False
                ),
            ],
        ),
        DiffResult(
            request="POST /api/checkout",
            service="gateway",
            findings=[
                Finding(
                    kind="status_changed", pointer="/status", baseline="201", sandbox="502", breaking=True
                )
            ],
        ),
    ]
    evidence.propagation = [Propagation(service="gateway"), Propagation(service="orders")]
    evidence.stages = _stages({"verify": "failed"})
    return _decided(evidence)


def inconclusive() -> Evidence:
    """Orders is forked but the gateway drops `baggage`, so the sandbox never reaches the fork."""
    evidence = _base_record("r-5a0e6f27c3b81d49", "agent/orders-retry", ["services/orders/orders_app.py"])
    evidence.services = [
        _baseline("gateway"),
        ServiceResult(
            name="orders",
            forked=True,
            reason="changed: services/orders/orders_app.py",
            image_or_source=f"{MERGE_SHA[:12]}:services/orders",
            ready_ms=1_790,
            tagged_requests=0,
            status="ready",
        ),
        _baseline("inventory"),
        _baseline("payments"),
    ]
    evidence.suites = [
        SuiteResult(
            name="e2e",
            source="base",
            status="passed",
            exit_code=0,
            counts=Counts(tests=6, passed=6),
            duration_ms=2_980,
        )
    ]
    evidence.propagation = [Propagation(service="gateway", drops_baggage_to=["orders"])]
    evidence.stages = _stages()
    return _decided(evidence)


def config_error() -> Evidence:
    """`.loopgate.yml` on the base commit is invalid: nothing was built, the setup must be fixed."""
    evidence = _base_record("r-c19b7e4f0a2d6358", "agent/add-shipping", [".loopgate.yml"])
    evidence.merge_sha = None
    evidence.finished_at = _at(0.3)
    evidence.verdict = Verdict.ERROR
    evidence.error_kind = ErrorKind.CONFIG
    evidence.reasons = [".loopgate.yml:12: services.shipping.local.run: must contain {port}"]
    evidence.stages = [
        Stage(
            name="plan",
            started_at=STARTED,
            duration_ms=210,
            outcome="error",
            detail=".loopgate.yml:12: services.shipping.local.run: must contain {port}",
        ),
        Stage(name="teardown", started_at=_at(0.21), duration_ms=4, outcome="ok"),
    ]
    evidence.links = Links()
    return evidence


ALL = {"passing": passing, "failing": failing, "inconclusive": inconclusive, "config_error": config_error}


def markdown_outputs(evidence: Evidence) -> dict[str, str]:
    """Every Markdown output loopgate writes to GitHub, by name."""
    check = render_check(evidence)
    return {
        "comment": render_comment(evidence),
        "check summary": check.summary,
        "check text": check.text,
        "pr body": render_pr_body(evidence),
        "step summary": render_step_summary(evidence),
    }
