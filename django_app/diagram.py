"""The workflow graph as an SVG, drawn on the server (no CDN, no JavaScript).

Queues are boxes in columns by distance from where the run started; each subscription is an
arrow labelled with its event. A run's path is coloured by job status and its current step is
outlined, so an operator sees at a glance where a workflow is and how it got there.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from html import escape

from celery_workflows import graph

BOX_W, BOX_H, COL_W, ROW_H, PAD = 190, 40, 330, 70, 20
#: how far a wide diagram shrinks to fit the page before it scrolls instead
MIN_SCALE = 0.6
#: characters of a queue name that fit in a box; the full name is in its tooltip
LABEL_CHARS = 26
COLOURS = {
    "succeeded": "#2e7d32",
    "dead": "#c62828",
    "running": "#1565c0",
    "queued": "#6d6d6d",
    "redriven": "#ef6c00",
    "cancelled": "#6d6d6d",
    "discarded": "#6d6d6d",
}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    #: the event that links them; "" for a compensation (``undo``) edge
    event: str

    @property
    def undo(self) -> bool:
        return not self.event


def edges() -> list[Edge]:
    g = graph.describe()
    found = []
    for q in g.queues:
        for sub in g.subscriptions:
            if sub.event in q.emits:
                found.append(Edge(q.name, sub.queue, sub.label))
        if q.compensate_with:
            found.append(Edge(q.name, q.compensate_with, ""))
    found += [Edge(*edge) for edge in graph.map_edges(g)]
    return found


def layout(start: str, all_edges: list[Edge]) -> dict[str, tuple[int, int]]:
    """Column and row of every queue reachable from ``start`` (an event or a queue)."""
    g = graph.describe()
    roots = [s.queue for s in g.subscriptions if s.event == start] or [start]
    column: dict[str, int] = {}
    todo = deque((r, 0) for r in roots)
    while todo:
        node, depth = todo.popleft()
        if node in column:
            continue
        column[node] = depth
        todo.extend((e.target, depth + 1) for e in all_edges if e.source == node)
    rows: dict[int, int] = {}
    placed = {}
    for node in sorted(column, key=lambda n: (column[n], n)):
        c = column[node]
        placed[node] = (c, rows.get(c, 0))
        rows[c] = rows.get(c, 0) + 1
    return placed


def render(start: str, job_status: dict[str, str], current: str) -> str:
    """SVG of the graph from ``start``; ``job_status`` maps queue -> status of its last job."""
    all_edges = edges()
    places = layout(start, all_edges)
    if not places:
        return ""

    def xy(node: str) -> tuple[int, int]:
        c, r = places[node]
        return PAD + c * COL_W, PAD + 20 + r * ROW_H

    width = PAD * 2 + (max(c for c, _ in places.values()) * COL_W) + BOX_W
    height = PAD * 2 + 20 + (max(r for _, r in places.values()) + 1) * ROW_H
    parts = [
        # it shrinks to the page's width (height follows, by the viewBox) down to
        # MIN_SCALE of its size - where its labels stay legible - and scrolls beyond that
        f'<svg xmlns="http://www.w3.org/2000/svg" class="cw-diagram" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'style="max-width:100%;height:auto;min-width:{round(width * MIN_SCALE)}px" '
        f'aria-label="workflow diagram">',
        '<defs><marker id="cw-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#888"/></marker></defs>',
        f'<text x="{PAD}" y="{PAD}" font-size="12" fill="#555">start: {escape(start)}</text>',
    ]
    # parallel edges (one step, several events to the same next step) share one labelled line
    labels: dict[tuple[str, str, bool], list[str]] = {}
    for e in all_edges:
        labels.setdefault((e.source, e.target, e.undo), []).append(e.event)
    for (source, target, undo), events in labels.items():
        e = Edge(source, target, "" if undo else events[0])
        if e.source not in places or e.target not in places:
            continue
        (x1, y1), (x2, y2) = xy(e.source), xy(e.target)
        taken = e.source in job_status and e.target in job_status
        stroke = ("#6a1b9a" if taken else "#c9a6d6") if e.undo else ("#333" if taken else "#bbb")
        dash = ' stroke-dasharray="5,4"' if e.undo else ""
        parts.append(
            f'<line class="cw-edge{" cw-undo" if e.undo else ""}" x1="{x1 + BOX_W}" '
            f'y1="{y1 + BOX_H // 2}" x2="{x2}" y2="{y2 + BOX_H // 2}" stroke="{stroke}"{dash} '
            f'stroke-width="{2 if taken else 1}" marker-end="url(#cw-arrow)"/>'
        )
        mid_x, mid_y = (x1 + BOX_W + x2) // 2, (y1 + y2) // 2 + BOX_H // 2 - 6
        names = ["undo"] if e.undo else events
        lines = "".join(
            f'<tspan x="{mid_x}" dy="{0 if i == 0 else 12}">{escape(name)}</tspan>'
            for i, name in enumerate(names)
        )
        parts.append(
            f'<text x="{mid_x}" y="{mid_y - 12 * (len(names) - 1)}" font-size="10" '
            f'text-anchor="middle" fill="#555">{lines}</text>'
        )
    for node in places:
        x, y = xy(node)
        status = job_status.get(node)
        fill = COLOURS.get(status or "", "#ffffff")
        text = "#ffffff" if status else "#333333"
        outline = ' stroke="#ffb300" stroke-width="4"' if node == current else ' stroke="#999"'
        name = node.split(".", 1)[-1]
        label = name if len(name) <= LABEL_CHARS else name[: LABEL_CHARS - 1] + "\u2026"
        parts.append(
            f'<g class="cw-node" data-queue="{escape(node)}" data-status="{escape(status or "")}">'
            f"<title>{escape(node)}{' - ' + escape(status) if status else ''}</title>"
            f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="6" '
            f'fill="{fill}"{outline}/>'
            f'<text x="{x + BOX_W // 2}" y="{y + 25}" font-size="12" text-anchor="middle" '
            f'fill="{text}">{escape(label)}</text></g>'
        )
    parts.append("</svg>")
    return "".join(parts)
