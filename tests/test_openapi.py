"""Contract checks from OpenAPI documents (bot/verify/openapi/): every rule with a breaking and a
harmless example, `$ref`s and their loops, hostile documents, 3.0 and 3.1 nullable forms, and the
probes planned from a base document."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.verify import openapi
from bot.verify.openapi import (
    MAX_DOCUMENT_BYTES,
    MAX_NESTING,
    MAX_STEPS,
    Document,
    NotADescription,
    compare_documents,
    parse_document,
    plan_probes,
)

Json = dict[str, Any]
OK = {"description": "ok"}


def document(paths: Json, schemas: Json | None = None, version: str = "3.1.0") -> Document:
    raw: Json = {"openapi": version, "info": {"title": "t", "version": "1"}, "paths": paths}
    if schemas is not None:
        raw["components"] = {"schemas": schemas}
    return parse_document(json.dumps(raw).encode())


def query(name: str, schema: Json | None = None, *, required: bool = False, where: str = "query") -> Json:
    return {"name": name, "in": where, "required": required, "schema": schema or {"type": "string"}}


def get(parameters: list[Json] | None = None, response: Json | None = None, status: str = "200") -> Json:
    """A GET operation answering `response` (a JSON schema) with `status`."""
    answer: Json = {"description": "ok"}
    if response is not None:
        answer["content"] = {"application/json": {"schema": response}}
    return {"get": {"parameters": parameters or [], "responses": {status: answer}}}


def post(body: Json, *, required: bool = True) -> Json:
    return {
        "post": {
            "requestBody": {"required": required, "content": {"application/json": {"schema": body}}},
            "responses": {"201": OK},
        }
    }


def obj(required: list[str] | None = None, **properties: Json) -> Json:
    return {"type": "object", "properties": properties, "required": required or []}


STR, INT, NUM = {"type": "string"}, {"type": "integer"}, {"type": "number"}
ITEM = obj(["sku", "price"], sku=STR, price=INT)


def findings(base: Document, head: Document) -> set[tuple[str, str, str, bool]]:
    """(request, kind, pointer, breaking) of every finding."""
    results, _ = compare_documents(base, head, "svc")
    return {(r.request, f.kind, f.pointer, f.breaking) for r in results for f in r.findings}


def search(*parameters: Json) -> Json:
    return {"/search": get(list(parameters))}


# name, base paths, head paths, expected (request, kind, pointer, breaking)
CASES: list[tuple[str, Json, Json, set[tuple[str, str, str, bool]]]] = [
    (
        "path removed",
        {"/a": get(), "/b": get()},
        {"/a": get()},
        {("OpenAPI GET /b", "operation_removed", "", True)},
    ),
    (
        "operation removed",
        {"/a": {**get(), **post(STR)}},
        {"/a": get()},
        {("OpenAPI POST /a", "operation_removed", "", True)},
    ),
    (
        "deprecated operation removed",
        {"/a": get(), "/old": {"get": {"deprecated": True, "responses": {"200": OK}}}},
        {"/a": get()},
        {("OpenAPI GET /old", "operation_removed", "", False)},
    ),
    (
        "operation added",
        {"/a": get()},
        {"/a": get(), "/b": get()},
        {("OpenAPI GET /b", "operation_added", "", False)},
    ),
    (
        "parameter removed",
        search(query("q"), query("limit", INT)),
        search(query("q")),
        {("OpenAPI GET /search", "parameter_removed", "/parameters/query/limit", True)},
    ),
    (
        "parameter renamed",
        search(query("q", required=True)),
        search(query("query", required=True)),
        {("OpenAPI GET /search", "parameter_renamed", "/parameters/query/q", True)},
    ),
    (
        "required parameter added",
        search(query("q")),
        search(query("q"), query("tenant", required=True, where="header")),
        {("OpenAPI GET /search", "parameter_added", "/parameters/header/tenant", True)},
    ),
    (
        "optional parameter added",
        search(query("q")),
        search(query("q"), query("page", INT)),
        {("OpenAPI GET /search", "parameter_added", "/parameters/query/page", False)},
    ),
    (
        "optional parameter becomes required",
        search(query("q")),
        search(query("q", required=True)),
        {("OpenAPI GET /search", "parameter_required", "/parameters/query/q", True)},
    ),
    (
        "parameter moves from query to header",
        search(query("token")),
        search(query("token", where="header")),
        {("OpenAPI GET /search", "parameter_location_changed", "/parameters/query/token", True)},
    ),
    (
        "a path parameter's name is no caller's concern",
        {"/orders/{id}": get([query("id", required=True, where="path")])},
        {"/orders/{order_id}": get([query("order_id", required=True, where="path")])},
        set(),
    ),
    (
        "new required request field",
        {"/items": post(obj(["sku"], sku=STR))},
        {"/items": post(obj(["sku", "owner"], sku=STR, owner=STR))},
        {("OpenAPI POST /items", "request_field_required", "/requestBody/owner", True)},
    ),
    (
        "optional request field becomes required",
        {"/items": post(obj(["sku"], sku=STR, qty=INT))},
        {"/items": post(obj(["sku", "qty"], sku=STR, qty=INT))},
        {("OpenAPI POST /items", "request_field_required", "/requestBody/qty", True)},
    ),
    (
        "new optional request field",
        {"/items": post(obj(["sku"], sku=STR))},
        {"/items": post(obj(["sku"], sku=STR, note=STR))},
        {("OpenAPI POST /items", "request_field_added", "/requestBody/note", False)},
    ),
    (
        "a read-only field the caller never sends may become required",
        {"/items": post(obj(["sku"], sku=STR))},
        {"/items": post(obj(["sku", "id"], sku=STR, id={"type": "string", "readOnly": True}))},
        set(),
    ),
    (
        "request body becomes required",
        {"/items": post(obj(), required=False)},
        {"/items": post(obj(), required=True)},
        {("OpenAPI POST /items", "request_body_required", "/requestBody", True)},
    ),
    (
        "response field removed",
        {"/items/{sku}": get(response=ITEM)},
        {"/items/{sku}": get(response=obj(["sku"], sku=STR))},
        {("OpenAPI GET /items/{sku}", "field_removed", "/responses/200/price", True)},
    ),
    (
        "response field type changed",
        {"/items/{sku}": get(response=ITEM)},
        {"/items/{sku}": get(response=obj(["sku", "price"], sku=STR, price=STR))},
        {("OpenAPI GET /items/{sku}", "type_changed", "/responses/200/price", True)},
    ),
    (
        "response integer widened to number",
        {"/items/{sku}": get(response=ITEM)},
        {"/items/{sku}": get(response=obj(["sku", "price"], sku=STR, price=NUM))},
        {("OpenAPI GET /items/{sku}", "type_changed", "/responses/200/price", True)},
    ),
    (
        "response number narrowed to integer is safe",
        {"/items/{sku}": get(response=obj(["price"], price=NUM))},
        {"/items/{sku}": get(response=obj(["price"], price=INT))},
        set(),
    ),
    (
        "new response field",
        {"/items/{sku}": get(response=ITEM)},
        {"/items/{sku}": get(response=obj(["sku", "price"], sku=STR, price=INT, currency=STR))},
        {("OpenAPI GET /items/{sku}", "field_added", "/responses/200/currency", False)},
    ),
    (
        "a field in a list of results removed",
        {"/items": get(response={"type": "array", "items": ITEM})},
        {"/items": get(response={"type": "array", "items": obj(["sku"], sku=STR)})},
        {("OpenAPI GET /items", "field_removed", "/responses/200/*/price", True)},
    ),
    (
        "success status changed",
        {"/items": post(obj())},
        {"/items": {"post": {**post(obj())["post"], "responses": {"200": OK}}}},
        {("OpenAPI POST /items", "status_changed", "/responses", True)},
    ),
    (
        "success status added",
        {"/items": get()},
        {"/items": {"get": {"responses": {"200": OK, "204": OK}}}},
        {("OpenAPI GET /items", "status_added", "/responses", False)},
    ),
    (
        "response media type removed",
        {"/items": get(response=ITEM)},
        {"/items": {"get": {"responses": {"200": {"description": "x", "content": {"text/plain": {}}}}}}},
        {("OpenAPI GET /items", "media_type_removed", "/responses/200", True)},
    ),
    (
        "input number narrowed to integer",
        search(query("price", NUM)),
        search(query("price", INT)),
        {("OpenAPI GET /search", "type_narrowed", "/parameters/query/price", True)},
    ),
    ("input integer widened to number", search(query("price", INT)), search(query("price", NUM)), set()),
    (
        "input string gains an enum",
        search(query("sort")),
        search(query("sort", {"type": "string", "enum": ["asc", "desc"]})),
        {("OpenAPI GET /search", "enum_added", "/parameters/query/sort", True)},
    ),
    (
        "input enum loses a value",
        {"/items": post(obj(["kind"], kind={"type": "string", "enum": ["a", "b"]}))},
        {"/items": post(obj(["kind"], kind={"type": "string", "enum": ["a"]}))},
        {("OpenAPI POST /items", "enum_narrowed", "/requestBody/kind", True)},
    ),
    (
        "input enum gains a value",
        search(query("sort", {"type": "string", "enum": ["asc"]})),
        search(query("sort", {"type": "string", "enum": ["asc", "desc"]})),
        set(),
    ),
    (
        "response enum gains a value",
        {"/a": get(response=obj(["s"], s={"type": "string", "enum": ["new"]}))},
        {"/a": get(response=obj(["s"], s={"type": "string", "enum": ["new", "gone"]}))},
        {("OpenAPI GET /a", "enum_widened", "/responses/200/s", False)},
    ),
    (
        "input gains a pattern",
        search(query("sku")),
        search(query("sku", {"type": "string", "pattern": "^sku-"})),
        {("OpenAPI GET /search", "pattern_changed", "/parameters/query/sku", True)},
    ),
    (
        "input maxLength lowered",
        search(query("q", {"type": "string", "maxLength": 20})),
        search(query("q", {"type": "string", "maxLength": 10})),
        {("OpenAPI GET /search", "constraint_narrowed", "/parameters/query/q", True)},
    ),
    (
        "input maxLength raised",
        search(query("q", {"type": "string", "maxLength": 10})),
        search(query("q", {"type": "string", "maxLength": 20})),
        set(),
    ),
    (
        "input default changed",
        search(query("limit", {"type": "integer", "default": 10})),
        search(query("limit", {"type": "integer", "default": 50})),
        {("OpenAPI GET /search", "default_changed", "/parameters/query/limit", True)},
    ),
    (
        "response field becomes nullable (3.1, FastAPI's anyOf)",
        {"/a": get(response=obj(["note"], note=STR))},
        {"/a": get(response=obj(["note"], note={"anyOf": [STR, {"type": "null"}]}))},
        {("OpenAPI GET /a", "nullability_changed", "/responses/200/note", True)},
    ),
    (
        "input no longer takes null (3.1 type list)",
        {"/items": post(obj([], note={"type": ["string", "null"]}))},
        {"/items": post(obj([], note=STR))},
        {("OpenAPI POST /items", "type_narrowed", "/requestBody/note", True)},
    ),
    (
        "allOf members are merged",
        {"/a": get(response={"allOf": [obj(["sku"], sku=STR), obj(["price"], price=INT)]})},
        {"/a": get(response={"allOf": [obj(["sku"], sku=STR)]})},
        {("OpenAPI GET /a", "field_removed", "/responses/200/price", True)},
    ),
]


@pytest.mark.parametrize(("base", "head", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_rules(base: Json, head: Json, expected: set[tuple[str, str, str, bool]]) -> None:
    assert findings(document(base), document(head)) == expected


def test_same_document_has_no_findings() -> None:
    paths = {**search(query("q", required=True)), "/items": post(obj(["sku"], sku=STR))}
    assert findings(document(paths), document(copy.deepcopy(paths))) == set()


def test_findings_carry_both_values() -> None:
    base = document(search(query("q", required=True), query("limit", {"type": "integer", "maximum": 100})))
    head = document(search(query("query", required=True), query("limit", {"type": "integer", "maximum": 50})))
    results, _ = compare_documents(base, head, "inventory")
    [result] = results
    assert result.service == "inventory"
    values = {(f.kind, f.baseline, f.sandbox) for f in result.findings}
    assert values == {
        ("parameter_renamed", "q", "query (required)"),
        ("constraint_narrowed", "maximum 100", "maximum 50"),
    }


@pytest.mark.parametrize(
    ("base_schema", "head_schema"),
    [
        ({"type": "string", "nullable": True}, {"type": ["string", "null"]}),
        ({"type": "string", "nullable": True}, {"anyOf": [STR, {"type": "null"}]}),
        ({"oneOf": [{"type": "null"}, INT]}, {"type": ["integer", "null"]}),
    ],
    ids=["3.0 nullable = 3.1 type list", "3.0 nullable = anyOf null", "oneOf null = type list"],
)
def test_nullable_forms_are_one(base_schema: Json, head_schema: Json) -> None:
    """A service moving from OpenAPI 3.0 to 3.1 (FastAPI did) changes no contract by that alone."""
    base = document({"/a": get(response=obj(["v"], v=base_schema))}, version="3.0.3")
    head = document({"/a": get(response=obj(["v"], v=head_schema))}, version="3.1.0")
    assert base.version == "3.0" and head.version == "3.1"
    assert findings(base, head) == set()
    assert findings(head, base) == set()


def test_3_0_nullable_added_in_response_is_breaking() -> None:
    base = document({"/a": get(response=obj(["v"], v=STR))}, version="3.0.3")
    head = document({"/a": get(response=obj(["v"], v={"type": "string", "nullable": True}))}, version="3.0.3")
    assert findings(base, head) == {("OpenAPI GET /a", "nullability_changed", "/responses/200/v", True)}


# --- $ref -----------------------------------------------------------------------------------------


def test_refs_are_resolved() -> None:
    ref = {"$ref": "#/components/schemas/Item"}
    base = document({"/items/{sku}": get(response=ref)}, {"Item": ITEM})
    head = document({"/items/{sku}": get(response=ref)}, {"Item": obj(["sku"], sku=STR)})
    assert findings(base, head) == {
        ("OpenAPI GET /items/{sku}", "field_removed", "/responses/200/price", True)
    }


def test_parameters_and_bodies_by_ref() -> None:
    base_raw: Json = {
        "openapi": "3.1.0",
        "paths": {
            "/search": {"get": {"parameters": [{"$ref": "#/components/parameters/Q"}], "responses": {}}}
        },
        "components": {"parameters": {"Q": query("q")}},
    }
    head_raw = copy.deepcopy(base_raw)
    head_raw["components"]["parameters"]["Q"]["required"] = True
    base, head = (parse_document(json.dumps(r).encode()) for r in (base_raw, head_raw))
    assert findings(base, head) == {
        ("OpenAPI GET /search", "parameter_required", "/parameters/query/q", True)
    }


def test_a_recursive_schema_is_compared_once() -> None:
    node = obj(["name"], name=STR, children={"type": "array", "items": {"$ref": "#/components/schemas/Node"}})
    smaller = obj([], children={"type": "array", "items": {"$ref": "#/components/schemas/Node"}})
    ref = {"$ref": "#/components/schemas/Node"}
    base = document({"/tree": get(response=ref)}, {"Node": node})
    head = document({"/tree": get(response=ref)}, {"Node": smaller})
    assert findings(base, head) == {("OpenAPI GET /tree", "field_removed", "/responses/200/name", True)}


def test_a_ref_loop_is_a_note() -> None:
    loop = {"A": {"$ref": "#/components/schemas/B"}, "B": {"$ref": "#/components/schemas/A"}}
    base = document({"/a": get(response={"$ref": "#/components/schemas/A"})}, loop)
    results, notes = compare_documents(base, base, "svc")
    assert results == []
    assert any("loops" in note for note in notes)


def test_a_ref_that_does_not_resolve_is_a_note() -> None:
    base = document({"/a": get(response=ITEM)})
    head = document({"/a": get(response={"$ref": "other.yaml#/Item"})})
    results, notes = compare_documents(base, head, "svc")
    assert any("not a local reference" in note for note in notes)
    # An unknown schema promises nothing: every field the base promised is gone.
    assert ("type_changed", True) in {(f.kind, f.breaking) for r in results for f in r.findings}


def test_a_ref_bomb_stays_cheap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each level names the next twice: 2^40 paths through the document, compared once per schema."""
    schemas = {
        f"L{i}": obj(
            [], a={"$ref": f"#/components/schemas/L{i + 1}"}, b={"$ref": f"#/components/schemas/L{i + 1}"}
        )
        for i in range(40)
    }
    schemas["L40"] = obj(["x"], x=STR)
    base = document({"/a": get(response={"$ref": "#/components/schemas/L0"})}, schemas)
    monkeypatch.setattr(openapi, "MAX_STEPS", 400)
    assert compare_documents(base, base, "svc") == ([], [])  # done within 400 comparisons


# --- hostile documents -------------------------------------------------------------------------


def test_too_big_a_document_is_not_read() -> None:
    body = b'{"openapi": "3.1.0", "x": "' + b"a" * (MAX_DOCUMENT_BYTES + 1) + b'"}'
    with pytest.raises(NotADescription) as raised:
        parse_document(body)
    assert "MiB" in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("depth", [MAX_NESTING + 5, 100_000])
def test_deep_nesting_is_not_read(depth: int) -> None:
    body = b'{"openapi": "3.1.0", "x": ' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(NotADescription) as raised:
        parse_document(body)
    assert "nested deeper" in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"<html>not found</html>", "not JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"swagger": "2.0", "paths": {}}', "Swagger 2.0"),
        (b'{"openapi": "4.0.0"}', "3.0 or 3.1 only"),
        (b'{"title": "x"}', "no `openapi` version"),
        (b'{"openapi": "3.1.0", "paths": []}', "`paths` is not an object"),
    ],
)
def test_what_is_no_description(body: bytes, why: str) -> None:
    with pytest.raises(NotADescription, match=why.replace("(", r"\(").replace(")", r"\)")):
        parse_document(body)


def test_too_much_comparison_work_is_bounded_and_noted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openapi, "MAX_STEPS", 1_000)
    wide = obj([], **{f"f{i}": STR for i in range(1_010)})
    base = document({"/a": get(response=wide), "/b": get()})
    head = document({"/a": get(response=copy.deepcopy(wide))})
    results, notes = compare_documents(base, head, "svc")
    assert [(r.request, f.kind, f.breaking) for r in results for f in r.findings] == [
        ("OpenAPI GET /a", "truncated", False)
    ]
    assert notes == ["the OpenAPI descriptions need over 1,000 schema comparisons: compared up to GET /a"]


def test_the_largest_description_is_compared_up_to_the_bound() -> None:
    """What that costs is measured by bench/hostile_inputs.py, not here."""
    wide = obj([], **{f"f{i}": {"type": "integer", "maximum": i} for i in range(MAX_STEPS)})
    body = json.dumps({"openapi": "3.1.0", "paths": {"/a": get(response=wide)}}).encode()
    assert len(body) < MAX_DOCUMENT_BYTES
    base = parse_document(body)
    _, notes = compare_documents(base, base, "svc")
    assert notes == [
        f"the OpenAPI descriptions need over {MAX_STEPS:,} schema comparisons: compared up to GET /a"
    ]


def test_a_schema_that_contains_itself_ends() -> None:
    """`A: {anyOf: [A, ...]}` and `A: {allOf: [A]}`: views are built once per ref, never forever."""
    schemas = {
        "A": {"anyOf": [{"$ref": "#/components/schemas/A"}, INT]},
        "B": {"allOf": [{"$ref": "#/components/schemas/B"}, obj(["x"], x=STR)]},
    }
    ref_a, ref_b = {"$ref": "#/components/schemas/A"}, {"$ref": "#/components/schemas/B"}
    base = document({"/a": get(response=ref_a), "/b": get(response=ref_b)}, schemas)
    assert findings(base, base) == set()


def test_a_huge_enum_is_compared_by_set_and_shown_clipped() -> None:
    many = {"type": "string", "enum": [f"v{i}" for i in range(200_000)]}
    fewer = {"type": "string", "enum": [f"v{i}" for i in range(1, 200_000)]}
    results, _ = compare_documents(
        document(search(query("k", many))), document(search(query("k", fewer))), "s"
    )
    [finding] = [f for r in results for f in r.findings]
    assert finding.kind == "enum_narrowed"
    assert finding.baseline is not None and len(finding.baseline) <= 120


def test_the_heads_texts_are_clipped_and_its_new_operations_counted() -> None:
    """The head document is the agent's: a megabyte name or ten thousand operations stay a few lines."""
    name = "n" * 1_000_000
    head_paths = {**search(query(name, required=True)), **{f"/new{i}": get() for i in range(10_000)}}
    results, _ = compare_documents(document(search()), document(head_paths), "svc")
    assert len(results) == 22  # GET /search, 20 new operations listed, one line for the rest
    assert results[-1].findings[0].sandbox == "9980 more new operations, not listed"
    texts = [
        t for r in results for f in r.findings for t in (r.request, f.pointer, f.baseline, f.sandbox) if t
    ]
    assert max(len(t) for t in texts) <= 300


def test_hostile_shapes_do_not_crash() -> None:
    """Wrong types everywhere a well-formed document has objects: nothing to compare, no exception."""
    raw: Json = {
        "openapi": "3.1.0",
        "paths": {
            "/a": {"get": {"parameters": [1, {"name": 2}, {"$ref": 5}], "responses": [], "requestBody": 3}},
            "/b": "x",
            "/c": {"get": {"responses": {"200": {"content": {"application/json": {"schema": [1]}}}}}},
        },
    }
    doc = parse_document(json.dumps(raw).encode())
    findings(doc, doc)
    plan_probes(doc, ["/a", "/c?x=1"], limit=10)


# --- probes ------------------------------------------------------------------------------------


def test_probes_take_ids_from_traffic_and_values_from_the_description() -> None:
    doc = document(
        {
            "/orders/{id}": get([query("id", required=True, where="path")]),
            "/orders/{order_id}/lines": get([query("order_id", required=True, where="path")]),
            "/search": get([query("q", {"type": "string", "examples": ["mug"]}, required=True)]),
            "/sorted": get([query("sort", {"type": "string", "enum": ["asc", "desc"]}, required=True)]),
            "/page": get([query("size", {"type": "integer", "default": 20})]),
            "/by-name/{name}": get([{**query("name", required=True, where="path"), "example": "red mug"}]),
            "/nothing-known": get([query("token", required=True)]),
            "/items": post(obj()),
        }
    )
    planned, notes = plan_probes(doc, ["/orders/ord-7", "/orders/ord-7/cancel"], limit=10)
    assert [(p.operation, p.path, p.from_traffic) for p in planned] == [
        ("GET /orders/{id}", "/orders/ord-7", True),
        ("GET /orders/{order_id}/lines", "/orders/ord-7/lines", True),
        ("GET /search", "/search?q=mug", False),
        ("GET /sorted", "/sorted?sort=asc", False),
        ("GET /page", "/page?size=20", False),
        ("GET /by-name/{name}", "/by-name/red%20mug", False),
    ]
    assert notes == [
        "1 safe operation not probed, no value known for a required parameter: GET /nothing-known"
    ]


def test_query_values_from_traffic() -> None:
    doc = document({"/search": get([query("q", required=True), query("limit", INT)])})
    planned, _ = plan_probes(doc, ["/search?q=tea&limit=3"], limit=10)
    assert [p.path for p in planned] == ["/search?q=tea&limit=3"]


def test_probes_are_bounded_and_exclude_what_the_diff_replays() -> None:
    doc = document({f"/r{i}": get() for i in range(5)})
    planned, notes = plan_probes(doc, [], limit=2, exclude={"/r0"})
    assert [p.path for p in planned] == ["/r1", "/r2"]
    assert notes == ["2 more safe operations not probed: verify.diff.max_requests (2) reached"]


def test_required_header_from_the_description() -> None:
    header = {**query("X-Tenant", required=True, where="header"), "example": "acme"}
    planned, _ = plan_probes(document({"/a": get([header])}), [], limit=5)
    assert [(p.path, dict(p.headers)) for p in planned] == [("/a", {"x-tenant": "acme"})]


# --- any document --------------------------------------------------------------------------------

WORDS = [
    "get",
    "head",
    "post",
    "parameters",
    "requestBody",
    "responses",
    "200",
    "201",
    "content",
    "application/json",
    "schema",
    "$ref",
    "type",
    "properties",
    "required",
    "items",
    "anyOf",
    "oneOf",
    "allOf",
    "enum",
    "nullable",
    "name",
    "in",
    "query",
    "path",
    "header",
    "example",
    "examples",
    "default",
    "additionalProperties",
    "maxLength",
    "pattern",
    "format",
    "readOnly",
    "/a/{x}",
    "x",
    "const",
]
REFS = st.sampled_from(["#/components/schemas/A", "#/components/schemas/B", "#/paths/~1a~1{x}", "#", "#/x/9"])
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=False, width=16),
    st.sampled_from(WORDS),
    REFS,
    st.text(max_size=3),
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(WORDS), inner, max_size=4),
    max_leaves=30,
)


@given(paths=VALUES, schemas=VALUES, head_paths=VALUES)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_document_compares_and_plans_without_error(paths: Any, schemas: Any, head_paths: Any) -> None:
    def doc(p: Any) -> Document:
        raw = {"openapi": "3.1.0", "paths": p if isinstance(p, dict) else {"/a/{x}": p}}
        raw["components"] = {"schemas": {"A": schemas, "B": {"$ref": "#/components/schemas/A"}}}
        return parse_document(json.dumps(raw).encode())

    base, head = doc(paths), doc(head_paths)
    results, notes = compare_documents(base, head, "svc")
    assert all(isinstance(n, str) and "\n" not in n for n in notes)
    assert all(r.findings for r in results)
    compare_documents(base, base, "svc")
    plan_probes(base, ["/a/1?x=2", "/a/{x}"], limit=3)
