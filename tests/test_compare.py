"""The response diff: shapes, not values — examples for every finding kind, and properties that hold for
any JSON document."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.evidence import Finding
from bot.verify.compare import MAX_DEPTH, MAX_FINDINGS, ComparePolicy, Response, compare, pointer_matches

JSON_TYPE = "application/json"
NO_POLICY = ComparePolicy()


def js(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(status, {"content-type": JSON_TYPE, **(headers or {})}, json.dumps(value).encode())


def raw(body: bytes, status: int = 200, content_type: str | None = "text/plain") -> Response:
    return Response(status, {} if content_type is None else {"content-type": content_type}, body)


def diff(baseline: Any, sandbox: Any, policy: ComparePolicy = NO_POLICY) -> list[tuple[Any, ...]]:
    return [
        (f.kind, f.pointer, f.baseline, f.sandbox, f.breaking)
        for f in compare(js(baseline), js(sandbox), policy)
    ]


def kinds(baseline: Any, sandbox: Any, policy: ComparePolicy = NO_POLICY) -> list[tuple[str, str, bool]]:
    return [(k, p, br) for k, p, _, _, br in diff(baseline, sandbox, policy)]


def escape(segment: str) -> str:
    return segment.replace("~", "~0").replace("/", "~1")


# --- the shop ------------------------------------------------------------------------------------

ITEM = {"sku": "sku-tea-towel", "name": "Tea towel", "price_cents": 1200, "available": 10}


def test_renamed_member_is_removed_plus_added() -> None:
    renamed = {"sku": "sku-tea-towel", "name": "Tea towel", "price_cents": 1200, "in_stock": 10}
    assert diff(ITEM, renamed) == [
        ("field_removed", "/available", "integer (10)", None, True),
        ("field_added", "/in_stock", None, "integer (10)", False),
    ]


def test_price_integer_to_decimal_string_is_a_type_change() -> None:
    assert diff(ITEM, {**ITEM, "price_cents": "12.00"}) == [
        ("type_changed", "/price_cents", "integer (1200)", 'string ("12.00")', True)
    ]


def test_values_that_keep_their_shape_are_not_findings() -> None:
    other = {"sku": "sku-mug", "name": "Mug", "price_cents": 899, "available": 0}
    assert diff(ITEM, other) == []
    order = {"id": "3f2b6c1e-8d4a-4c1b-9b7e-2a1d5e6f7a8b", "created_at": "2024-05-01T10:00:00Z", "n": 3}
    later = {
        "id": "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
        "created_at": "2025-01-31T23:59:59.123+01:00",
        "n": 4,
    }
    assert diff(order, later) == []


def test_iso_datetime_to_epoch_digits_is_a_format_change() -> None:
    assert diff({"created_at": "2024-05-01T10:00:00Z"}, {"created_at": "1714557600"}) == [
        ("format_changed", "/created_at", 'date-time ("2024-05-01T10:00:00Z")', 'epoch ("1714557600")', True)
    ]


def test_iso_datetime_to_epoch_number_is_a_type_change() -> None:
    assert kinds({"created_at": "2024-05-01T10:00:00Z"}, {"created_at": 1714557600}) == [
        ("type_changed", "/created_at", True)
    ]


@pytest.mark.parametrize(
    ("before", "after", "changed"),
    [
        ("2024-05-01", "2024-05-01T00:00:00Z", True),  # date → date-time
        ("3f2b6c1e-8d4a-4c1b-9b7e-2a1d5e6f7a8b", "ord_17", True),  # uuid → not
        ("ord_17", "3f2b6c1e-8d4a-4c1b-9b7e-2a1d5e6f7a8b", True),  # not → uuid
        ("12.00", "twelve", True),  # numeric → not
        ("12.00", "1714557600", False),  # a numeric string that grew to ten digits is still numeric
        ("ord_17", "ord_18", False),
        ("2024-13-45", "hello", False),  # not a real date: both plain text
        ("", "3f2b6c1e-8d4a-4c1b-9b7e-2a1d5e6f7a8b", False),  # "" says nothing about a format
    ],
)
def test_string_formats(before: str, after: str, changed: bool) -> None:
    assert kinds({"v": before}, {"v": after}) == ([("format_changed", "/v", True)] if changed else [])


def test_error_body_reshaped_under_the_same_status() -> None:
    before = {"error": {"code": "payment_declined", "message": "card declined"}}
    after = {"message": "card declined", "declined": True}
    assert [(f.kind, f.pointer, f.breaking) for f in compare(js(before, 402), js(after, 402), NO_POLICY)] == [
        ("field_removed", "/error", True),
        ("field_added", "/declined", False),
        ("field_added", "/message", False),
    ]
    removed = compare(js(before, 402), js(after, 402), NO_POLICY)[0]
    assert removed.baseline == 'object ({"code", "message"})'


def test_created_became_bad_gateway() -> None:
    order = {"id": "ord_1", "status": "paid"}
    error = {"error": {"code": "upstream_bad_response", "message": "inventory item lacks ..."}}
    # The bodies of a success and an error are unrelated: only the status is reported.
    assert compare(js(order, 201), js(error, 502), NO_POLICY) == [
        Finding(kind="status_changed", pointer="", baseline="201", sandbox="502", breaking=True)
    ]


@pytest.mark.parametrize(
    ("before", "after", "breaking"),
    [
        (201, 200, False),
        (200, 204, False),
        (200, 302, True),
        (404, 500, True),
        (409, 200, True),
        (400, 422, False),
    ],
)
def test_status_class_decides_breaking(before: int, after: int, breaking: bool) -> None:
    assert compare(raw(b"", before), raw(b"", after), NO_POLICY) == [
        Finding(
            kind="status_changed", pointer="", baseline=str(before), sandbox=str(after), breaking=breaking
        )
    ]


def test_same_class_status_still_compares_bodies() -> None:
    assert [f.kind for f in compare(js({"id": 1}, 201), js({"id": "1"}, 200), NO_POLICY)] == [
        "type_changed",
        "status_changed",
    ]


# --- kinds ---------------------------------------------------------------------------------------


def test_nullability() -> None:
    assert diff({"a": 1}, {"a": None}) == [("nullability_changed", "/a", "integer (1)", "null", True)]
    assert diff({"a": None}, {"a": "x"}) == [("nullability_changed", "/a", "null", 'string ("x")', True)]
    assert diff({"a": None}, {"a": None}) == []
    # A baseline list that already had nulls is not contradicted by a sandbox list without them.
    assert diff({"a": [1, None]}, {"a": [2]}) == []
    assert kinds({"a": [1, 2]}, {"a": [2, None]}) == [("nullability_changed", "/a/*", True)]


def test_null_to_object_is_one_finding_not_one_per_member() -> None:
    assert kinds({"a": None}, {"a": {"b": 1, "c": 2}}) == [("nullability_changed", "/a", True)]
    assert kinds({"a": {"b": 1, "c": 2}}, {"a": None}) == [("nullability_changed", "/a", True)]


@pytest.mark.parametrize(
    ("before", "after", "changed"),
    [
        (1, 1.0, False),
        (1.0, 1, False),
        (1.5, 2, False),  # an integer is still a number
        (1, 1.5, True),  # a fraction where only integers were
        (True, 1, True),
        (0, False, True),
        ("1", 1, True),
        ({}, [], True),
        ([1], {"0": 1}, True),
    ],
)
def test_type_changes(before: Any, after: Any, changed: bool) -> None:
    assert kinds({"v": before}, {"v": after}) == ([("type_changed", "/v", True)] if changed else [])


def test_type_change_names_both_types_with_excerpts() -> None:
    long = "x" * 100
    ((_, _, baseline, sandbox, _),) = diff({"v": [1, 2]}, {"v": long})
    assert baseline == "array (2 items)"
    assert sandbox is not None and sandbox.startswith('string ("xxx') and len(sandbox) < 60


def test_json_against_non_json_is_a_body_change() -> None:
    page = raw(b"<html>502 Bad Gateway</html>", content_type="text/html")
    assert compare(js({"a": 1}), page, NO_POLICY) == [
        Finding(
            kind="body_changed",
            pointer="",
            baseline="JSON (application/json)",
            sandbox="text/html (28 bytes)",
            breaking=True,
        )
    ]
    broken = raw(b'{"a": 1', content_type="application/json; charset=utf-8")
    (finding,) = compare(js({"a": 1}), broken, NO_POLICY)
    assert (finding.kind, finding.sandbox) == ("body_changed", "invalid JSON (application/json, 7 bytes)")
    # Same JSON, but served as text: a caller that checks the content type no longer sees JSON.
    assert [f.kind for f in compare(js([1]), raw(b"[1]"), NO_POLICY)] == ["body_changed"]


def test_non_json_bodies_are_not_compared() -> None:
    assert compare(raw(b"hello"), raw(b"goodbye"), NO_POLICY) == []
    assert compare(raw(b"", 204, None), raw(b"", 204, "text/plain"), NO_POLICY) == []
    assert compare(raw(b"<p>a</p>", content_type="text/html"), raw(b"x"), NO_POLICY) == []


def test_json_without_content_type_is_sniffed() -> None:
    assert compare(js({"a": 1}), raw(b'{"a": 2}', content_type=None), NO_POLICY) == []
    assert compare(raw(b"{}", content_type="application/problem+json"), js({}), NO_POLICY) == []


def test_arrays_compare_merged_element_shapes_not_positions() -> None:
    before = {"items": [{"sku": "a", "price": 1}, {"sku": "b", "price": 2, "note": "x"}]}
    # Reordered, longer, shorter: no finding while the union of member shapes stays the same.
    assert (
        diff(before, {"items": [{"sku": "c", "price": 3, "note": "y"}, {"sku": "d", "price": 4}] * 3}) == []
    )
    assert diff(before, {"items": [{"sku": "c", "price": 3, "note": "y"}]}) == []
    assert kinds(before, {"items": [{"sku": "c", "price": "3"}, {"sku": "d", "price": 4}]}) == [
        ("field_removed", "/items/*/note", True),
        ("type_changed", "/items/*/price", True),
    ]


def test_an_empty_array_says_nothing_about_elements() -> None:
    assert diff({"items": [{"a": 1}]}, {"items": []}) == []
    assert diff({"items": []}, {"items": [{"a": 1}]}) == []
    assert diff({"m": [[1]]}, {"m": [[]]}) == []


def test_pointers_escape_slash_and_tilde() -> None:
    assert kinds({"a/b": {"c~d": 1}}, {"a/b": {}}) == [("field_removed", "/a~1b/c~0d", True)]


# --- policy --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "pointer", "hit"),
    [
        ("/a/*", "/a/x", True),
        ("/a/*", "/a/x/y/z", True),
        ("/a/*", "/a", False),
        ("/a/*/id", "/a/3/id", True),
        ("/a/*/id", "/a/*/id", True),
        ("/a/*/id", "/a/3/name", False),
        ("/created_at", "/created_at", True),
        ("/created_at", "/created_at_utc", False),
        ("/a~1b", "/a~1b/c", True),
        ("/a~1b", "/a/b", False),
        ("/m~0n", "/m~0n", True),
        ("/m~0n", "/m~1n", False),
        ("/~01", "/~01", True),  # the member named "~1"
        ("", "/anything", True),
        ("", "", True),
        ("/a", "", False),
    ],
)
def test_pointer_matches(pattern: str, pointer: str, hit: bool) -> None:
    assert pointer_matches(pattern, pointer) is hit


@pytest.mark.parametrize("bad", ["a/b", "/a~2", "/a~", "*"])
def test_malformed_pointers_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        pointer_matches(bad, "/a")
    with pytest.raises(ValueError):
        ComparePolicy(ignore=[bad])


def test_policy_refuses_a_bare_string() -> None:
    with pytest.raises(TypeError):
        ComparePolicy(ignore="/a")


def test_ignore_with_wildcard_covers_every_element() -> None:
    before = {"items": [{"id": 1, "sku": "a"}, {"id": 2, "sku": "b"}], "created_at": "2024-05-01T10:00:00Z"}
    after = {"items": [{"id": "x1", "sku": "a"}, {"sku": "b"}], "created_at": 1714557600}
    assert kinds(before, after) == [
        ("type_changed", "/created_at", True),
        ("type_changed", "/items/*/id", True),
    ]
    assert kinds(before, after, ComparePolicy(ignore=["/items/*/id", "/created_at"])) == []


def test_ignore_covers_everything_below() -> None:
    before = {"meta": {"trace": {"id": 1}, "took": 3}, "ok": True}
    after = {"meta": {"took": "3ms"}, "ok": True, "extra": 1}
    assert kinds(before, after, ComparePolicy(ignore=["/meta"])) == [("field_added", "/extra", False)]
    assert compare(js(before), js([1, 2]), ComparePolicy(ignore=[""])) == []


def test_ignore_a_concrete_element() -> None:
    before = {"items": [{"price": 1}, {"price": 2}]}
    after = {"items": [{"price": "1"}, {"price": 2}]}
    assert kinds(before, after, ComparePolicy(ignore=["/items/0/price"])) == []
    assert kinds(before, after, ComparePolicy(ignore=["/items/1/price"])) == [
        ("type_changed", "/items/*/price", True)
    ]


def test_ignore_with_escaped_names() -> None:
    before = {"a/b": 1, "c~d": 1, "keep": 1}
    after = {"a/b": "1", "c~d": "1", "keep": "1"}
    policy = ComparePolicy(ignore=["/a~1b", "/c~0d"])
    assert kinds(before, after, policy) == [("type_changed", "/keep", True)]


def test_header_policy() -> None:
    policy = ComparePolicy(headers=["Content-Type", "ETag", "x-api-version"])
    baseline = js({}, headers={"etag": '"v1"', "x-api-version": "2", "server-timing": "db;dur=3"})
    sandbox = Response(
        200,
        {"content-type": "application/json; charset=utf-8", "etag": '"v1"', "server-timing": "db;dur=9"},
        b"{}",
    )
    assert compare(baseline, sandbox, policy) == [
        Finding(
            kind="header_changed",
            pointer="/headers/content-type",
            baseline="application/json",
            sandbox="application/json; charset=utf-8",
            breaking=True,
        ),
        Finding(
            kind="header_changed", pointer="/headers/x-api-version", baseline="2", sandbox=None, breaking=True
        ),
    ]
    assert compare(baseline, sandbox, NO_POLICY) == []  # unnamed headers differ legitimately


# --- guards --------------------------------------------------------------------------------------


def test_many_findings_are_truncated_keeping_breaking_ones() -> None:
    before = {f"gone{i:03}": i for i in range(300)}
    after = {f"new{i:03}": i for i in range(50)}
    findings = compare(js(before), js(after), NO_POLICY)
    assert len(findings) == MAX_FINDINGS + 1
    assert all(f.breaking and f.kind == "field_removed" for f in findings[:MAX_FINDINGS])
    assert findings[-1].kind == "truncated" and not findings[-1].breaking
    assert [f.pointer for f in findings[:3]] == ["/gone000", "/gone001", "/gone002"]


def test_deep_nesting_stops_at_the_depth_limit() -> None:
    def nest(leaf: Any, depth: int) -> Any:
        for _ in range(depth):
            leaf = {"a": leaf}
        return leaf

    findings = compare(js(nest({"x": 1}, 100)), js(nest({"x": "1"}, 100)), NO_POLICY)
    assert [(f.kind, f.breaking) for f in findings] == [("truncated", False)]
    assert findings[0].pointer == "/a" * MAX_DEPTH
    # Shallow enough: found.
    assert kinds(nest({"x": 1}, 10), nest({"x": "1"}, 10)) == [("type_changed", "/a" * 10 + "/x", True)]


def test_nesting_past_the_parser_is_not_a_crash() -> None:
    bomb = raw(b"[" * 200_000 + b"]" * 200_000, content_type=JSON_TYPE)
    assert [f.kind for f in compare(js([]), bomb, NO_POLICY)] == ["body_changed"]
    assert compare(bomb, bomb, NO_POLICY) == []


# --- properties ----------------------------------------------------------------------------------

names = st.text(max_size=6)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(
        ["2024-05-01T10:00:00Z", "2024-05-01", "1714557600", "12.00", "3f2b6c1e-8d4a-4c1b-9b7e-2a1d5e6f7a8b"]
    )
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(names, inner, max_size=4),
    max_leaves=25,
)
objects = st.dictionaries(names, json_values, max_size=5)
# Where the changed object sits: a path of member names, or `None` for "inside a one-element array".
wrappings = st.lists(st.none() | names, max_size=4)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def wrap(value: Any, path: list[str | None]) -> tuple[Any, str]:
    pointer = ""
    for step in path:
        pointer += "/*" if step is None else "/" + escape(step)
    for step in reversed(path):
        value = [value] if step is None else {step: value}
    return value, pointer


@FAST
@given(json_values)
def test_a_value_compared_with_itself_has_no_findings(value: Any) -> None:
    assert compare(js(value), js(value), NO_POLICY) == []


@FAST
@given(objects, names, json_values, wrappings)
def test_adding_a_member_is_one_note(
    obj: dict[str, Any], name: str, value: Any, path: list[str | None]
) -> None:
    obj.pop(name, None)
    before, at = wrap(obj, path)
    after, _ = wrap({**obj, name: value}, path)
    assert kinds(before, after) == [("field_added", f"{at}/{escape(name)}", False)]


@FAST
@given(objects, names, json_values, wrappings)
def test_removing_a_member_is_breaking(
    obj: dict[str, Any], name: str, value: Any, path: list[str | None]
) -> None:
    before, at = wrap({**obj, name: value}, path)
    rest = {k: v for k, v in obj.items() if k != name}
    after, _ = wrap(rest, path)
    assert kinds(before, after) == [("field_removed", f"{at}/{escape(name)}", True)]


def sort_key(f: Finding) -> tuple[bool, str, str, str, str]:
    return (not f.breaking, f.pointer, f.kind, f.baseline or "", f.sandbox or "")


@FAST
@given(json_values, json_values, st.sampled_from([200, 201, 404, 500]))
def test_results_are_deterministic_sorted_and_unique(baseline: Any, sandbox: Any, status: int) -> None:
    first = compare(js(baseline), js(sandbox, status), NO_POLICY)
    assert compare(js(baseline), js(sandbox, status), NO_POLICY) == first
    assert first == sorted(first, key=sort_key)
    keys = [(f.kind, f.pointer, f.baseline, f.sandbox) for f in first]
    assert len(keys) == len(set(keys))
    assert len(first) <= MAX_FINDINGS + 1


def reorder(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: reorder(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reorder(v) for v in value]
    return value


@FAST
@given(json_values, json_values)
def test_member_order_does_not_matter(baseline: Any, sandbox: Any) -> None:
    assert compare(js(reorder(baseline)), js(reorder(sandbox)), NO_POLICY) == compare(
        js(baseline), js(sandbox), NO_POLICY
    )
