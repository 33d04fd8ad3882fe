"""The observed request map laid out for drawing: an inline SVG on the HTML page, a Mermaid flowchart
in the Markdown reports, both from `Evidence.request_map` alone.

Templates hold no logic, so every coordinate, label and style class is computed here and the templates
only loop over nodes and edges. The layout is layered, left to right, as Mermaid's `flowchart LR` draws
it: the entry (`client`, the suites' own requests) in the first column, each service one column right of
its furthest caller; a call back to an earlier column is drawn as an arc below the columns. No marker
(`url(#…)`) is used for arrowheads: they are polygons, so the page references nothing, not even itself.

Service names come from the configuration (validated) but are treated as untrusted all the same: the
HTML environment escapes them for SVG, and `mermaid_text` keeps only characters Mermaid reads as
themselves inside a quoted label (no quote, `#` entity, backtick, markup or bracket can get through).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

from bot.evidence import Evidence, ServiceResult
from bot.evidence.model import RequestEdge
from bot.report.display import clip, plural
from bot.report.escape import Markdown

ENTRY = "client"
"""How the entry, a suite's own request (an edge's `source` None), is labelled."""
LABEL_CHARS = 32
EDGE_LABEL_CHARS = 64

# Geometry, in SVG user units (px at scale 1).
MARGIN = 16
NODE_HEIGHT = 46
CHAR_WIDTH = 7.8  # 13px monospace, generously
NODE_PADDING = 24
MIN_NODE_WIDTH = 96
MIN_COLUMN_GAP = 150
EDGE_CHAR_WIDTH = 6.8  # 11px monospace
EDGE_LABEL_ROOM = 48
ROW_PITCH = 76
ARROW = 9
ARC_DEPTH = 44

_MERMAID_UNSAFE = re.compile(r"[^A-Za-z0-9 ._,:+/()-]")


@dataclass(frozen=True)
class MapNode:
    id: str
    """`n0`, `n1`, …: ids are generated, never taken from a name."""
    label: str
    """The service name (untrusted text) or `client`."""
    note: str
    """The node's role in words: `entry`, `fork`, `fork + control`, `baseline`."""
    role: str
    """`client`, `fork` or `baseline`: the style class."""
    x: int
    y: int
    width: int
    height: int

    @property
    def center_x(self) -> int:
        return self.x + self.width // 2

    @property
    def label_y(self) -> int:
        return self.y + 19

    @property
    def note_y(self) -> int:
        return self.y + 36

    @property
    def mermaid_label(self) -> Markdown:
        text = self.label if self.role == "client" else f"{self.label} ({self.note})"
        return mermaid_text(text)

    @property
    def mermaid_shape(self) -> tuple[Markdown, Markdown]:
        """Mermaid's brackets around the quoted label: a stadium for the entry, a box for services."""
        return (
            (Markdown('(["'), Markdown('"])')) if self.role == "client" else (Markdown('["'), Markdown('"]'))
        )


@dataclass(frozen=True)
class MapEdge:
    source: MapNode
    target: MapNode
    tagged: int
    untagged: int
    lost: bool
    label: str
    note: str
    """`tag lost here` under the counts of the edge where the tag was lost, else empty."""
    title: str
    path: str
    arrow: str
    label_x: int
    label_y: int

    @property
    def note_y(self) -> int:
        return self.label_y + 23

    @property
    def css(self) -> str:
        return "edge lost" if self.lost else "edge"

    @property
    def mermaid_label(self) -> Markdown:
        return mermaid_text(f"tag lost: {self.label}" if self.lost else self.label, EDGE_LABEL_CHARS)


@dataclass(frozen=True)
class RequestMapLayout:
    nodes: list[MapNode]
    edges: list[MapEdge]
    width: int
    height: int
    description: str
    """One sentence for screen readers and the SVG's title."""

    @property
    def view_box(self) -> str:
        return f"0 0 {self.width} {self.height}"

    @property
    def lost(self) -> list[MapEdge]:
        return [e for e in self.edges if e.lost]


def mermaid_text(text: str, limit: int = LABEL_CHARS) -> Markdown:
    """Text for inside a quoted Mermaid label: one line of letters, digits and plain punctuation.

    Inside `"…"` Mermaid ends the label at a quote, decodes `#…;` entities, reads backticks as a
    Markdown string and passes markup on to the renderer; brackets, pipes and semicolons end nodes,
    edge labels and statements elsewhere. Everything outside the allowed set is replaced by `_`, so no
    label can end early, and the Markdown fence (backticks) cannot be closed from inside it either.
    """
    return Markdown(_MERMAID_UNSAFE.sub("_", clip(" ".join(text.split()), limit)) or "_")


def edge_label(edge: RequestEdge) -> str:
    return f"{edge.tagged} tagged, {edge.untagged} untagged"


def layout(evidence: Evidence) -> RequestMapLayout | None:
    """The map of `evidence.request_map`, None when nothing was observed."""
    if not evidence.request_map:
        return None
    control = bool(evidence.control_keys)
    services = {s.name: s for s in evidence.services}
    names = _names(evidence)
    layers = _layers(names, evidence.request_map)
    columns: dict[int, list[str]] = defaultdict(list)
    for name in names:
        columns[layers[name]].append(name)
    _order(columns, evidence.request_map)
    widths = {name: _width(name, _note(name, services.get(name), control)) for name in names}
    gap = max(MIN_COLUMN_GAP, round(max(len(edge_label(e)) for e in evidence.request_map) * EDGE_CHAR_WIDTH))
    gap += EDGE_LABEL_ROOM
    pitch = max(widths.values()) + gap
    rows = max(len(column) for column in columns.values())
    nodes: dict[str, MapNode] = {}
    for layer, column in sorted(columns.items()):
        offset = (rows - len(column)) * ROW_PITCH // 2
        for row, name in enumerate(column):
            nodes[name] = MapNode(
                id=f"n{len(nodes)}",
                label=clip(name, LABEL_CHARS) if name != "" else ENTRY,
                note=_note(name, services.get(name), control),
                role="client" if name == "" else "fork" if _forked(services.get(name)) else "baseline",
                x=MARGIN + layer * pitch + (pitch - gap - widths[name]) // 2,
                y=MARGIN + offset + row * ROW_PITCH,
                width=widths[name],
                height=NODE_HEIGHT,
            )
    bottom = MARGIN + (rows - 1) * ROW_PITCH + NODE_HEIGHT
    edges = [_edge(e, nodes, layers, bottom) for e in evidence.request_map]
    arcs = any(layers[e.source or ""] >= layers[e.target] for e in evidence.request_map)
    lost = [e for e in evidence.request_map if e.lost_tag]
    description = (
        f"Observed request map: {plural(len(nodes) - ('' in nodes), 'service')},"
        f" {plural(len(edges), 'edge')}"
        + (f"; the tag was lost on {plural(len(lost), 'hop')}" if lost else "; the tag reached every hop")
        + "."
    )
    return RequestMapLayout(
        nodes=[nodes[name] for name in nodes],
        edges=edges,
        width=MARGIN * 2 + (max(layers.values()) + 1) * pitch - gap,
        height=bottom + MARGIN + (ARC_DEPTH + 16 if arcs else 0),
        description=description,
    )


def _names(evidence: Evidence) -> list[str]:
    """Every node: the entry ("") if any request came in, the services in the Evidence's order (forks
    even when nothing reached them: an unreached fork is the point), then any other service seen."""
    seen = {e.target for e in evidence.request_map} | {e.source for e in evidence.request_map if e.source}
    names = [""] if any(e.source is None for e in evidence.request_map) else []
    names += [s.name for s in evidence.services if s.name in seen or s.forked]
    names += sorted(seen - set(names))
    return names


def _forked(service: ServiceResult | None) -> bool:
    return service is not None and service.forked


def _note(name: str, service: ServiceResult | None, control: bool) -> str:
    if name == "":
        return "entry"
    if _forked(service):
        return "fork + control" if control else "fork"
    return "baseline"


def _width(name: str, note: str) -> int:
    chars = max(len(clip(name, LABEL_CHARS)) if name else len(ENTRY), len(note))
    return max(MIN_NODE_WIDTH, round(chars * CHAR_WIDTH) + NODE_PADDING)


def _layers(names: list[str], edges: list[RequestEdge]) -> dict[str, int]:
    """Longest path from the entry over the edges that are not calls back (found by a depth-first walk
    in node order); a node nothing calls stands in the first service column."""
    out: dict[str, list[str]] = defaultdict(list)
    for edge in edges:
        out[edge.source or ""].append(edge.target)
    forward: dict[str, list[str]] = defaultdict(list)
    state: dict[str, int] = {}  # 1 on the walk's stack, 2 done
    finished: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        for target in out[node]:
            if state.get(target) is None:
                forward[node].append(target)
                walk(target)
            elif state[target] == 2:
                forward[node].append(target)
            # state 1: a call back up the stack; drawn as an arc, not used for layering
        state[node] = 2
        finished.append(node)

    for name in names:
        if name not in state:
            walk(name)
    first = 1 if "" in names else 0
    layers = {name: (0 if name == "" else first) for name in names}
    for node in reversed(finished):  # a topological order of the forward edges
        for target in forward[node]:
            layers[target] = max(layers[target], layers[node] + 1)
    return layers


def _order(columns: dict[int, list[str]], edges: list[RequestEdge]) -> None:
    """Each column sorted by the mean row of its callers (one sweep), which keeps most edges apart."""
    callers: dict[str, list[str]] = defaultdict(list)
    for edge in edges:
        callers[edge.target].append(edge.source or "")
    row: dict[str, float] = {}
    for layer in sorted(columns):
        column = columns[layer]
        for index, name in enumerate(column):
            placed = [row[c] for c in callers[name] if c in row]
            row[name] = sum(placed) / len(placed) if placed else float(index)
        before = {name: index for index, name in enumerate(column)}
        column.sort(key=lambda name: (row[name], before[name]))
        for index, name in enumerate(column):
            row[name] = float(index)


def _edge(edge: RequestEdge, nodes: dict[str, MapNode], layers: dict[str, int], bottom: int) -> MapEdge:
    source, target = nodes[edge.source or ""], nodes[edge.target]
    if layers[edge.source or ""] < layers[edge.target]:
        x1, y1 = source.x + source.width, source.y + source.height // 2
        x2, y2 = target.x, target.y + target.height // 2
        bend = max((x2 - x1) // 2, 20)
        end = x2 - ARROW
        path = f"M {x1} {y1} C {x1 + bend} {y1}, {end - bend} {y2}, {end} {y2}"
        arrow = f"{x2},{y2} {end},{y2 - 5} {end},{y2 + 5}"
        label_x, label_y = (x1 + end) // 2, (y1 + y2) // 2 - 7
    else:  # a call to the same or an earlier column: an arc below the columns
        x1, y1 = source.center_x + 8, source.y + source.height
        x2, y2 = target.center_x - 8, target.y + target.height
        low = bottom + ARC_DEPTH
        end = y2 + ARROW
        path = f"M {x1} {y1} C {x1} {low}, {x2} {low}, {x2} {end}"
        arrow = f"{x2},{y2} {x2 - 5},{end} {x2 + 5},{end}"
        label_x, label_y = (x1 + x2) // 2, low - 4
    title = f"{source.label} → {target.label}: {edge_label(edge)}"
    if edge.lost_tag:
        title += f"; the tag was lost here: {source.label} does not pass baggage on to {target.label}"
    return MapEdge(
        source=source,
        target=target,
        tagged=edge.tagged,
        untagged=edge.untagged,
        lost=edge.lost_tag,
        label=edge_label(edge),
        note="tag lost here" if edge.lost_tag else "",
        title=title,
        path=path,
        arrow=arrow,
        label_x=label_x,
        label_y=label_y,
    )
