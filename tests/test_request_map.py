"""The observed request map: edges from traces (bot/verify/requestmap.py), tagged counts for every
service, and the drawings made from the Evidence alone (bot/report/requestmap.py): the Mermaid flowchart
of the Markdown reports (a hostile label cannot leave its node) and the layout of the HTML page's SVG."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from bot.evidence import Evidence, ServiceResult
from bot.evidence.model import RequestEdge
from bot.report import render_comment, render_html, requestmap
from bot.verify.coverage import tagged_counts
from bot.verify.requestmap import hops, request_map
from tests import evidence_samples as samples

KEY = "k3y4bcdefg"
OTHER = "c0ntr0lkey"


@dataclass(frozen=True)
class Seen:
    service: str
    routing_key: str | None
    target: str | None
    started_at: str
    duration_ms: int
    traceparent: str | None
    method: str = "GET"
    path: str = "/"
    status: int = 200


def tp(trace: str) -> str:
    return f"00-{trace * 32}-00f067aa0ba902b7-01"


def at(ms: int) -> str:
    return f"2026-11-26T10:00:00.{ms:03d}Z"


def lost_at_gateway(trace: str, start: int = 0) -> list[Seen]:
    """client → gateway (tagged) → orders (untagged: gateway dropped it) → inventory (untagged)."""
    return [
        Seen("gateway", KEY, None, at(start), 90, tp(trace)),
        Seen("orders", None, None, at(start + 10), 60, tp(trace)),
        Seen("inventory", None, None, at(start + 20), 10, tp(trace)),
    ]


def propagated(trace: str, start: int = 0) -> list[Seen]:
    """client → gateway → orders (the fork) → payments, tagged all the way."""
    return [
        Seen("gateway", KEY, None, at(start), 90, tp(trace)),
        Seen("orders", KEY, KEY, at(start + 10), 60, tp(trace)),
        Seen("payments", KEY, None, at(start + 20), 10, tp(trace)),
    ]


def test_edges_count_tagged_and_untagged_requests_and_mark_where_the_tag_was_lost() -> None:
    observed = [
        *lost_at_gateway("a"),
        *lost_at_gateway("b", 100),
        *propagated("c", 300),
        Seen("orders", None, None, at(500), 5, tp("d")),  # baseline traffic: not the sandbox's
        Seen("orders", OTHER, OTHER, at(600), 5, tp("e")),  # another sandbox's (a control's)
        Seen("gateway", KEY, None, at(700), 5, None),  # no trace context: cannot be placed
    ]
    assert request_map(KEY, observed) == [
        RequestEdge(source=None, target="gateway", tagged=3, untagged=0),
        RequestEdge(source="gateway", target="orders", tagged=1, untagged=2, lost_tag=True),
        RequestEdge(source="orders", target="inventory", tagged=0, untagged=2),
        RequestEdge(source="orders", target="payments", tagged=1, untagged=0),
    ]


def test_the_caller_is_the_innermost_preceding_request_of_the_trace() -> None:
    observed = propagated("f")
    callers = [(h.request.service, h.caller.service if h.caller else None) for h in hops(KEY, observed)]
    assert callers == [("gateway", None), ("orders", "gateway"), ("payments", "orders")]


def test_a_suite_that_sends_everything_in_one_trace_is_mapped_hop_by_hop() -> None:
    """Sequential requests sharing one traceparent: each call belongs to the request running around it."""
    start = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    observed = []
    for i in range(3000):
        moment = start + timedelta(milliseconds=20 * i)
        observed.append(Seen("gateway", KEY, None, moment.isoformat(), 12, tp("9")))
        lost = i % 3 == 0
        call = (moment + timedelta(milliseconds=2)).isoformat()
        observed.append(Seen("orders", None if lost else KEY, None if lost else KEY, call, 6, tp("9")))
    assert request_map(KEY, observed) == [
        RequestEdge(source=None, target="gateway", tagged=3000),
        RequestEdge(source="gateway", target="orders", tagged=2000, untagged=1000, lost_tag=True),
    ]


def test_tagged_counts_cover_every_service_and_forks_count_what_they_served() -> None:
    observed = [
        *propagated("a"),
        *lost_at_gateway("b", 100),
        Seen("orders", KEY, None, at(300), 5, tp("c")),  # tagged, but the baseline served it
        Seen("payments", OTHER, OTHER, at(400), 5, tp("d")),
    ]
    assert tagged_counts(KEY, observed, forked=["orders", "inventory"]) == {
        "gateway": 2,
        "inventory": 0,
        "orders": 1,
        "payments": 1,
    }
    assert tagged_counts(KEY, observed)["orders"] == 2, "without forks: every tagged request that passed"


# --- the drawings ---------------------------------------------------------------------------------


def mapped(edges: list[RequestEdge], services: list[ServiceResult] | None = None) -> Evidence:
    evidence = samples.inconclusive()
    if services is not None:
        evidence.services = services
    evidence.request_map = edges
    return evidence


LOST_MAP = [
    RequestEdge(source=None, target="gateway", tagged=6),
    RequestEdge(source="gateway", target="orders", untagged=5, lost_tag=True),
    RequestEdge(source="orders", target="inventory", untagged=4),
    RequestEdge(source="orders", target="payments", untagged=2),
]


def test_layout_puts_callers_left_of_what_they_call_and_marks_forks() -> None:
    layout = requestmap.layout(mapped(LOST_MAP))
    assert layout is not None
    nodes = {n.label: n for n in layout.nodes}
    assert [nodes[n].role for n in ("client", "gateway", "orders", "inventory")] == [
        "client",
        "baseline",
        "fork",
        "baseline",
    ]
    assert nodes["client"].x < nodes["gateway"].x < nodes["orders"].x < nodes["inventory"].x
    assert nodes["inventory"].x == nodes["payments"].x and nodes["inventory"].y != nodes["payments"].y
    [lost] = layout.lost
    assert (lost.source.label, lost.target.label, lost.css) == ("gateway", "orders", "edge lost")
    for node in layout.nodes:
        assert node.x >= 0 and node.x + node.width <= layout.width
        assert node.y >= 0 and node.y + node.height <= layout.height


def test_a_call_back_to_an_earlier_service_is_drawn_below() -> None:
    edges = [
        RequestEdge(source=None, target="a", tagged=1),
        RequestEdge(source="a", target="b", tagged=1),
        RequestEdge(source="b", target="a", tagged=1),
    ]
    layout = requestmap.layout(mapped(edges, []))
    assert layout is not None
    back = next(e for e in layout.edges if e.source.label == "b")
    assert back.label_y > max(n.y + n.height for n in layout.nodes)
    assert back.label_y < layout.height


def test_nothing_observed_draws_nothing() -> None:
    evidence = samples.failing()
    assert requestmap.layout(evidence) is None
    assert "Request map" not in render_comment(evidence)
    assert 'id="request-map"' not in render_html(evidence)


def test_controls_are_marked_when_the_run_had_them() -> None:
    evidence = mapped(LOST_MAP)
    if "control_keys" not in Evidence.model_fields:
        return  # the control forks' field is not in this model yet
    evidence = evidence.model_copy(update={"control_keys": ["c0ntr0lkey1", "c0ntr0lkey2"]})
    layout = requestmap.layout(evidence)
    assert layout is not None
    assert next(n for n in layout.nodes if n.label == "orders").note == "fork + control"


# --- Mermaid --------------------------------------------------------------------------------------

MD = MarkdownIt("commonmark").enable("table")
NODE = re.compile(r'  (n\d+)(?:\["([^"]*)"\]|\(\["([^"]*)"\]\))')
EDGE = re.compile(r'  (n\d+) -->\|"([^"]*)"\| (n\d+)')
STYLE = re.compile(
    r"  (?:classDef fork stroke-width:3px|class n\d+ fork|linkStyle \d+ stroke:#cf222e,stroke-width:3px)"
)
# Inside a quoted label Mermaid reads only these as themselves (see requestmap.mermaid_text).
SAFE_LABEL = re.compile(r"[A-Za-z0-9 ._,:+/()-]+")


def mermaid_blocks(markdown: str) -> list[str]:
    return [t.content for t in MD.parse(markdown) if t.type == "fence" and t.info == "mermaid"]


def check_flowchart(text: str) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Every line is one statement of the few forms the template writes, each label a safe quoted string:
    the labels of the nodes and the edges (source id, label, target id)."""
    lines = text.splitlines()
    assert lines[0] == "flowchart LR"
    labels, edges = [], []
    for line in lines[1:]:
        if node := NODE.fullmatch(line):
            label = node[2] if node[2] is not None else node[3]
            assert SAFE_LABEL.fullmatch(label), line
            labels.append(label)
        elif edge := EDGE.fullmatch(line):
            assert SAFE_LABEL.fullmatch(edge[2]), line
            edges.append((edge[1], edge[2], edge[3]))
        else:
            assert STYLE.fullmatch(line), line
    return labels, edges


def test_markdown_reports_carry_the_map_as_a_mermaid_flowchart() -> None:
    comment = render_comment(mapped(LOST_MAP))
    [block] = mermaid_blocks(comment)
    labels, edges = check_flowchart(block)
    assert labels == [
        "client",
        "gateway (baseline)",
        "orders (fork)",
        "inventory (baseline)",
        "payments (baseline)",
    ]
    assert ("n1", "tag lost: 0 tagged, 5 untagged", "n2") in edges
    assert "  linkStyle 1 stroke:#cf222e,stroke-width:3px" in block.splitlines()
    assert "  class n2 fork" in block.splitlines()


HOSTILE_LABEL = st.text(
    st.one_of(st.sampled_from(list('"#;`|[](){}<>&\\\n\r%-->:::end  ')), st.characters()),
    min_size=1,
    max_size=40,
)


@settings(max_examples=150, deadline=None, database=None)
@given(HOSTILE_LABEL, HOSTILE_LABEL)
def test_a_hostile_service_name_cannot_leave_its_node(first: str, second: str) -> None:
    services = [
        ServiceResult(name=first, forked=True, reason="changed", status="ready"),
        ServiceResult(name=second, forked=False, reason="unchanged"),
    ]
    edges = [
        RequestEdge(source=None, target=first, tagged=1),
        RequestEdge(source=first, target=second, untagged=1),
    ]
    if first == second:
        edges = edges[:1]
    comment = render_comment(mapped(edges, services))
    [block] = mermaid_blocks(comment)
    labels, found = check_flowchart(block)
    assert len(labels) == len({"", first, second}), "one node per service and the entry, no more"
    assert len(found) == len(edges)


# Mermaid's own parser, where it is at hand: the `mermaid-parser-py` package ships Mermaid bundled as one
# CommonJS file, which plain Node runs (its Python side needs pythonmonkey, which is not used here).
MERMAID_CHECK = """
const parse = require(process.argv[1]);
let text = "";
process.stdin.on("data", (chunk) => { text += chunk; });
process.stdin.on("end", () => parse(text).then((out) => {
  const graph = JSON.parse(out).graph_data;
  console.log(JSON.stringify({
    nodes: Object.values(graph.vertices).map((v) => [v.id, v.text]),
    edges: graph.edges.map((e) => [e.start, e.end, e.text, (e.style || []).join(";")]),
  }));
}).catch((error) => { console.error(String(error && error.message || error)); process.exit(1); }));
"""


def mermaid_bundle() -> Path | None:
    spec = importlib.util.find_spec("mermaid_parser")
    if spec is None or not spec.submodule_search_locations or shutil.which("node") is None:
        return None
    bundle = Path(next(iter(spec.submodule_search_locations))) / "js" / "parser.bundle.js"
    return bundle if bundle.is_file() else None


def test_mermaids_own_parser_reads_the_map_with_a_hostile_name_in_its_node() -> None:
    assert mermaid_bundle() is not None, "Mermaid's parser is missing: `make test` installs mermaid-parser-py"
    name = 'x"]; click n0 call alert(1) %% `#quot;<b>'
    services = [ServiceResult(name=name, forked=False, reason="unchanged")]
    evidence = mapped([*LOST_MAP, RequestEdge(source="orders", target=name, untagged=2)], None)
    evidence.services += services
    [block] = mermaid_blocks(render_comment(evidence))
    done = subprocess.run(
        ["node", "-e", MERMAID_CHECK, str(mermaid_bundle())],
        input=block,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    parsed = json.loads(done.stdout)
    assert [label for _, label in parsed["nodes"]] == [
        "client",
        "gateway (baseline)",
        "orders (fork)",
        "inventory (baseline)",
        "payments (baseline)",
        "x___ click n0 call alert(1) __ _",
    ]
    assert len(parsed["edges"]) == 5
    lost = [e for e in parsed["edges"] if "stroke:#cf222e" in e[3]]
    assert lost == [
        ["n1", "n2", "tag lost: 0 tagged, 5 untagged", "stroke:#cf222e;stroke-width:3px;fill:none"]
    ]
