"""gRPC statuses at a forked service's listener, judged by name (bot.verify.listener), and gRPC findings
as the reports show them. Pure: the records are what Envoy's access log holds for gRPC calls (HTTP 200,
the gRPC status beside it); `test_grpc_diff` reads the same from a real Envoy.
"""

from __future__ import annotations

from bot.evidence import DiffResult, Evidence, Finding, GitRef
from bot.evidence.verdict import decide
from bot.report import render_comment, render_html
from bot.runtimes.protocol import ObservedRequest
from bot.verify.grpc.status import SERVER_ERRORS, name
from bot.verify.listener import listener_findings

KEYS = ("cand", "prim", "sec")
GET = "/shop.pricing.v1.Pricing/GetQuote"


def call(key: str, code: int | None, path: str = GET, status: int = 200) -> ObservedRequest:
    return ObservedRequest("pricing", key, key, "POST", path, status, None, "2026-11-29T20:00:00Z", 1, code)


def judge(
    candidate: list[int | None], primary: list[int | None], secondary: list[int | None] | None = None
) -> list[DiffResult]:
    sides = [
        [call(key, code) for code in codes]
        for key, codes in zip(
            KEYS, (candidate, primary, primary if secondary is None else secondary), strict=True
        )
    ]
    return listener_findings(sides[0], (sides[1], sides[2]), KEYS, ["pricing"], ["pricing"])


def kinds(results: list[DiffResult]) -> list[tuple[str, str | None, str | None, bool]]:
    return [(f.kind, f.baseline, f.sandbox, f.breaking) for r in results for f in r.findings]


def test_the_grpc_5xx_are_googles_5xx_codes_and_codes_have_names() -> None:
    assert {name(code) for code in SERVER_ERRORS} == {
        "UNKNOWN",
        "DEADLINE_EXCEEDED",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
    }
    assert (name(5), name(99)) == ("NOT_FOUND", "code 99")


def test_the_operation_is_the_method_unfolded_and_the_status_is_named() -> None:
    [result] = judge([0, 5], [0, 0])
    assert result.request == f"gRPC {GET}, the suites' exchanges"  # `v1` is no id
    assert kinds([result]) == [("status_added", "OK (2)", "OK (1), NOT_FOUND (1)", True)]


def test_a_new_error_code_is_breaking_even_within_the_same_class() -> None:
    """Callers branch on the code: NOT_FOUND where the controls said INVALID_ARGUMENT breaks them."""
    assert kinds(judge([5], [3])) == [
        ("status_added", "INVALID_ARGUMENT (1)", "NOT_FOUND (1)", True),
        ("status_missing", "INVALID_ARGUMENT (1)", "NOT_FOUND (1)", True),
    ]


def test_a_server_error_is_server_errors_and_no_longer_answering_one_is_no_defect() -> None:
    assert kinds(judge([0, 13], [0])) == [("server_errors", "OK (1)", "OK (1), INTERNAL (1)", True)]
    assert kinds(judge([0], [0, 14])) == [("status_missing", "OK (1), UNAVAILABLE (1)", "OK (1)", False)]


def test_a_method_that_now_succeeds_breaks_no_caller() -> None:
    assert kinds(judge([0], [12])) == [
        ("status_added", "UNIMPLEMENTED (1)", "OK (1)", False),
        ("status_missing", "UNIMPLEMENTED (1)", "OK (1)", False),
    ]


def test_an_answer_without_any_grpc_status_is_a_server_error() -> None:
    sides = [[call("cand", None, status=502)], [call("prim", 0)], [call("sec", 0)]]
    [result] = listener_findings(sides[0], (sides[1], sides[2]), KEYS, ["pricing"], ["pricing"])
    assert kinds([result])[0] == ("server_errors", "OK (1)", "no grpc-status (HTTP 502) (1)", True)
    sides = [[call("cand", None, status=0)], [call("prim", 0)], [call("sec", 0)]]
    [result] = listener_findings(sides[0], (sides[1], sides[2]), KEYS, ["pricing"], ["pricing"])
    assert kinds([result])[0] == ("server_errors", "OK (1)", "no answer (1)", True)


def test_controls_that_disagree_are_noise_and_equal_codes_in_other_numbers_are_none() -> None:
    assert judge([0, 14], [0], [0, 14]) == []
    assert judge([0, 0, 0, 5], [0, 5, 5]) == []


def test_grpc_findings_read_by_method_and_field_in_the_verdict_and_the_reports() -> None:
    probe = f'gRPC {GET} {{"sku": "mug"}} (probed from descriptors)'
    diff = [
        DiffResult(
            request=probe,
            service="pricing",
            against="control",
            findings=[
                Finding(
                    kind="value_changed",
                    pointer="/amount/cents",
                    baseline='"1200"',
                    sandbox='"1250"',
                    breaking=True,
                ),
                Finding(
                    kind="unknown_field",
                    pointer="/#7",
                    sandbox="field 7 (bytes 3: 08b009), not in the base protos: renumbered, or new",
                    breaking=False,
                ),
            ],
        ),
        DiffResult(
            request=f"gRPC {GET} {{}} (probed from descriptors)",
            service="pricing",
            against="control",
            findings=[
                Finding(kind="status_changed", pointer="", baseline="OK", sandbox="NOT_FOUND", breaking=True)
            ],
        ),
        *judge([0, 5], [0, 0]),
    ]
    evidence = Evidence(run_id="r", repo="/r", base=GitRef(ref="main"), head=GitRef(ref="x"), diff=diff)
    verdict, reasons = decide(evidence)
    assert verdict.value == "fail"
    assert reasons == [
        f"pricing: value_changed at /amount/cents ({probe})",
        f"pricing: status_changed OK → NOT_FOUND (gRPC {GET} {{}} (probed from descriptors))",
        f"pricing: status_added OK (1), NOT_FOUND (1) where the controls answered OK (2) (gRPC {GET}, the"
        " suites' exchanges)",
    ]
    evidence.verdict, evidence.reasons = verdict, reasons
    comment = render_comment(evidence)
    assert f'`gRPC {GET} {{"sku": "mug"}} (probed from descriptors)`' in comment
    assert "`/amount/cents`" in comment and "`/#7`" in comment and '`"1250"`' in comment
    html = render_html(evidence)
    assert "/amount/cents" in html and "NOT_FOUND" in html and "GetQuote" in html
