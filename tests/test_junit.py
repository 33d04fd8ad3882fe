"""The JUnit parser over what runners write and what a hostile suite could write instead."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from bot.evidence import Counts
from bot.verify import junit
from bot.verify.junit import parse_junit

CHECKOUT_TRACE = """\
    def test_checkout(gateway):
>       assert checkout.status_code == 201
E       assert 502 == 201

e2e/test_checkout.py:43: AssertionError"""


def write(tmp_path: Path, data: bytes | str) -> Path:
    path = tmp_path / "junit.xml"
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def counts(tests: int = 0, passed: int = 0, failed: int = 0, errors: int = 0, skipped: int = 0) -> Counts:
    return Counts(tests=tests, passed=passed, failed=failed, errors=errors, skipped=skipped)


# (report, counts, failures as (test, message, file, line))
READABLE = {
    "pytest failure with its location": (
        f'<testsuites><testsuite name="pytest"><testcase classname="e2e.test_checkout" name="test_checkout">'
        f'<failure message="assert 502 == 201">{CHECKOUT_TRACE}</failure></testcase>'
        f'<testcase classname="e2e.test_checkout" name="test_read"/></testsuite></testsuites>',
        counts(tests=2, passed=1, failed=1),
        [("e2e.test_checkout::test_checkout", "assert 502 == 201", "e2e/test_checkout.py", 43)],
    ),
    "errors, failures and skips counted apart": (
        '<testsuite name="s"><testcase name="ok"/><testcase name="bad"><failure message="f"/></testcase>'
        '<testcase name="broken"><error message="setup exploded"/></testcase>'
        '<testcase name="later"><skipped message="not today"/></testcase></testsuite>',
        counts(tests=4, passed=1, failed=1, errors=1, skipped=1),
        [("bad", "f", None, None), ("broken", "setup exploded", None, None)],
    ),
    "a failure outranks a skip on the same case": (
        '<testsuite><testcase name="t"><skipped/><failure message="boom"/></testcase></testsuite>',
        counts(tests=1, failed=1),
        [("t", "boom", None, None)],
    ),
    "nested testsuites, as JUnit 5 and Go write them": (
        '<testsuites><testsuite name="outer"><testcase name="a"/>'
        '<testsuite name="inner"><testcase name="b"><failure message="deep"/></testcase>'
        '<testsuite name="innermost"><testcase name="c"/></testsuite></testsuite></testsuite>'
        '<testsuite name="second"><testcase name="d"><error message="e"/></testcase></testsuite>'
        "</testsuites>",
        counts(tests=4, passed=2, failed=1, errors=1),
        [("b", "deep", None, None), ("d", "e", None, None)],
    ),
    "Java stack frame as the location": (
        '<testsuite><testcase classname="shop.CheckoutTest" name="inStock"><failure>'
        "java.lang.AssertionError: expected 201\n\tat shop.CheckoutTest.inStock(CheckoutTest.java:42)"
        "</failure></testcase></testsuite>",
        counts(tests=1, failed=1),
        [
            (
                "shop.CheckoutTest::inStock",
                "at shop.CheckoutTest.inStock(CheckoutTest.java:42)",
                "CheckoutTest.java",
                42,
            )
        ],
    ),
    "no message: the last line of the text, else a placeholder": (
        '<testsuite><testcase name="a"><failure>line one\nAssertionError: last</failure></testcase>'
        '<testcase name="b"><error/></testcase></testsuite>',
        counts(tests=2, failed=1, errors=1),
        [("a", "AssertionError: last", None, None), ("b", "(no message)", None, None)],
    ),
    "empty testsuites": ("<testsuites/>", counts(), []),
    "a testsuite without testcases": ('<testsuite name="empty" tests="0"></testsuite>', counts(), []),
    "predefined entities and character references are text": (
        '<testsuite><testcase name="t&lt;1&gt;"><failure message="a &amp; b &#169;"/></testcase></testsuite>',
        counts(tests=1, failed=1),
        [("t<1>", "a & b ©", None, None)],
    ),
}


@pytest.mark.parametrize("case", READABLE)
def test_reads_what_runners_write(case: str, tmp_path: Path) -> None:
    report, expected_counts, expected_failures = READABLE[case]
    parsed = parse_junit(write(tmp_path, report))
    assert parsed.counts == expected_counts
    assert [(f.test, f.message, f.file, f.line) for f in parsed.failures] == expected_failures


def test_declared_encoding_is_honoured(tmp_path: Path) -> None:
    declaration = '<?xml version="1.0" encoding="ISO-8859-1"?>'
    report = declaration + '<testsuite><testcase name="café"><failure/></testcase></testsuite>'
    parsed = parse_junit(write(tmp_path, report.encode("latin-1")))
    assert [f.test for f in parsed.failures] == ["café"]


def test_undeclared_non_utf8_is_replaced_not_fatal(tmp_path: Path) -> None:
    report = '<testsuite><testcase name="café"><failure message="déjà"/></testcase></testsuite>'
    parsed = parse_junit(write(tmp_path, report.encode("latin-1")))
    assert parsed.counts == counts(tests=1, failed=1)
    assert [(f.test, f.message) for f in parsed.failures] == [("caf\ufffd", "d\ufffdj\ufffd")]


def test_huge_reports_are_bounded_but_fully_counted(tmp_path: Path) -> None:
    many = junit.MAX_FAILURES * 3
    huge = "x" * (junit.MAX_MESSAGE * 3)
    cases = "".join(
        f'<testcase name="t{i}"><failure message="{huge}">{huge}</failure></testcase>' for i in range(many)
    )
    long_name = f'<testcase name="{huge}"><error message="m"/></testcase>'
    parsed = parse_junit(write(tmp_path, f"<testsuite>{long_name}{cases}<testcase name='ok'/></testsuite>"))
    assert parsed.counts == counts(tests=many + 2, passed=1, failed=many, errors=1)
    assert len(parsed.failures) == junit.MAX_FAILURES
    assert max(len(f.message) for f in parsed.failures) == junit.MAX_MESSAGE
    assert len(parsed.failures[0].test) == junit.MAX_MESSAGE


BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10)
    )
    + ']><testsuite><testcase name="&lol9;"/></testsuite>'
)

UNREADABLE = {
    "empty file": b"",
    "only whitespace": b"  \n",
    "malformed XML": b"<testsuite><testcase name='a'></testsuite>",
    "not XML at all": b"============ 2 failed, 4 passed in 3.21s ============",
    "another XML document": b"<html><body>oops</body></html>",
    "billion laughs": BILLION_LAUGHS.encode(),
    "quadratic blowup": (
        f'<!DOCTYPE t [<!ENTITY a "{"x" * 10_000}">]>'
        f'<testsuite><testcase name="{"&a;" * 10_000}"/></testsuite>'
    ).encode(),
    "a DTD, even a harmless one": b'<!DOCTYPE testsuite [<!ELEMENT testsuite ANY>]><testsuite name="x"/>',
}


@pytest.mark.parametrize("case", UNREADABLE)
def test_unreadable_reports_raise_a_one_line_value_error(case: str, tmp_path: Path) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"^junit\.xml: not a JUnit XML report \(") as raised:
            parse_junit(write(tmp_path, UNREADABLE[case]))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(raised.value)
    # Nothing is expanded before it is refused: a DTD is refused as one, and the bombs never grow.
    assert ("DTDForbidden" in str(raised.value)) == (b"<!DOCTYPE" in UNREADABLE[case])
    assert peak < 4 * 1024 * 1024, peak


def test_external_entities_are_never_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("canary-7f3a")
    report = (
        f'<!DOCTYPE t [<!ENTITY xxe SYSTEM "{secret.as_uri()}">]>'
        '<testsuite><testcase name="t"><failure message="&xxe;"/></testcase></testsuite>'
    )
    with pytest.raises(ValueError) as raised:
        parse_junit(write(tmp_path, report))
    assert "canary" not in str(raised.value)


def test_missing_and_oversized_files_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="not a JUnit XML report"):
        parse_junit(tmp_path / "missing.xml")
    monkeypatch.setattr(junit, "MAX_BYTES", 100)
    with pytest.raises(ValueError, match="over the 100-byte limit"):
        parse_junit(write(tmp_path, "<testsuite>" + "<testcase name='t'/>" * 10 + "</testsuite>"))
