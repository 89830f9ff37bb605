"""The workflow graph, introspected from declarations: which step emits what, which
subscription enqueues which queue. The admin draws it; :func:`validate` checks it at start-up;
:func:`warnings` finds loose ends (``manage.py check``); :func:`render` prints it as text,
Mermaid or Graphviz DOT (``manage.py workflows graph``)."""

from __future__ import annotations

from dataclasses import dataclass

from . import registry
from .errors import ConfigurationError


@dataclass(frozen=True)
class QueueNode:
    name: str
    description: str
    emits: tuple[str, ...]
    #: the queue whose job undoes this step (compensation), if declared
    compensate_with: str | None = None
    #: a mapping step: the queue of its branches and the queue they gather into
    gather: tuple[str, str] | None = None


@dataclass(frozen=True)
class SubscriptionEdge:
    name: str
    event: str
    queue: str
    filtered: bool
    mapped: bool
    #: the events of the join this edge is part of (empty: an ordinary subscription)
    join: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """The edge's event, marked when it is one of a join's: the step waits for them all."""
        return f"{self.event} (join)" if self.join else self.event


@dataclass(frozen=True)
class Graph:
    queues: tuple[QueueNode, ...]
    events: tuple[str, ...]
    subscriptions: tuple[SubscriptionEdge, ...]

    def emitters_of(self, event: str) -> list[str]:
        return [q.name for q in self.queues if event in q.emits]

    def next_queues(self, queue: str) -> list[str]:
        node = next(q for q in self.queues if q.name == queue)
        return [s.queue for s in self.subscriptions if s.event in node.emits]


def describe() -> Graph:
    queues = tuple(
        QueueNode(
            w.qualified_name,
            w.description,
            w.graph_emits,
            w.compensate_with,
            (w.gather.each, w.gather.into) if w.gather else None,
        )
        for w in sorted(registry.queues().values(), key=lambda w: w.qualified_name)
    )
    subs = tuple(
        SubscriptionEdge(s.name, event, s.queue, s.when is not None, s.map is not None, s.all_of)
        for s in sorted(registry.subscriptions(), key=lambda s: s.name)
        for event in s.events
    )
    events = sorted(
        {e for q in queues for e in q.emits}
        | {s.event for s in subs}
        | set(registry.event_schemas())
    )
    return Graph(queues=queues, events=tuple(events), subscriptions=subs)


def problems() -> list[str]:
    """Every declaration mistake found, one sentence each (empty when the graph is sound)."""
    known = registry.queues()
    declared = ", ".join(sorted(known)) or "none"
    return (
        [
            f"subscription {s.name!r} to event {s.event!r} enqueues {s.queue!r}, which no "
            f"service declares (declared: {declared})"
            for s in registry.subscriptions()
            if s.queue not in known
        ]
        + [
            f"queue {q.qualified_name!r} is compensated by {q.compensate_with!r}, which no service "
            f"declares (declared: {declared})"
            for q in known.values()
            if q.compensate_with and q.compensate_with not in known
        ]
        + [
            f"queue {q.qualified_name!r} gathers {role} {target!r}, which no service declares "
            f"(declared: {declared})"
            for q in known.values()
            if q.gather
            for role, target in (("each item on", q.gather.each), ("into", q.gather.into))
            if target not in known
        ]
    )


def validate() -> None:
    """Raise :class:`ConfigurationError` listing every problem; called at worker start-up."""
    found = problems()
    if found:
        raise ConfigurationError("workflow graph is invalid:\n  " + "\n  ".join(found))


def started_from_outside() -> set[str]:
    """Events that may be emitted by something other than a step: declared entry events,
    services' timeout events and the targets of schedules."""
    timeouts = {
        str(event)
        for service in registry.services().values()
        if (event := getattr(service, "timeout_event", None))
    }
    scheduled = {s.emit for s in registry.schedules().values() if getattr(s, "emit", None)}
    return registry.entry_events() | timeouts | scheduled


def warnings() -> list[str]:
    """Loose ends that are not errors: events nobody subscribes to (unless declared
    terminal), and subscriptions waiting for events nothing emits."""
    g = describe()
    subscribed = {s.event for s in g.subscriptions}
    emitted = {e for q in g.queues for e in q.emits}
    outside = started_from_outside()
    terminal = registry.terminal_events()
    found = [
        f"event {event!r} is emitted by {', '.join(g.emitters_of(event))} but nothing "
        f"subscribes to it (declare it with service.event({event!r}, terminal=True) if that "
        "is intended)"
        for event in sorted(emitted - subscribed - terminal)
    ]
    found += [
        f"subscription {s.name!r} waits for event {s.event!r}, which no step emits and which "
        "is not declared with service.event()"
        for s in g.subscriptions
        if s.event not in emitted and s.event not in outside
    ]
    return found


FORMATS = ("text", "mermaid", "dot")


def render(fmt: str = "text") -> str:
    """The declared graph as ``text``, ``mermaid`` (a flowchart) or ``dot`` (Graphviz)."""
    if fmt not in FORMATS:
        raise ConfigurationError(f"graph format must be one of {FORMATS}, got {fmt!r}")
    g = describe()
    entries = sorted(started_from_outside() & {s.event for s in g.subscriptions})
    edges = [
        (q.name, s.queue, s.label) for q in g.queues for s in g.subscriptions if s.event in q.emits
    ]
    undo = [(q.name, c) for q in g.queues if (c := q.compensate_with)]
    edges += map_edges(g)
    starts = [(e, s.queue) for e in entries for s in g.subscriptions if s.event == e]
    if fmt == "mermaid":
        return _mermaid(g, starts, edges, undo)
    if fmt == "dot":
        return _dot(g, starts, edges, undo)
    return _text(g, starts, edges, undo)


def map_edges(g: Graph) -> list[tuple[str, str, str]]:
    """(source, target, label) of every mapping step to its branches, and of the branches to
    the step they gather into."""
    found = []
    for q in g.queues:
        if q.gather is not None:
            found += [(q.name, q.gather[0], "map"), (q.gather[0], q.gather[1], "gather")]
    return found


def _text(
    g: Graph,
    starts: list[tuple[str, str]],
    edges: list[tuple[str, str, str]],
    undo: list[tuple[str, str]],
) -> str:
    lines = [f"{event} (from outside) -> {queue}" for event, queue in starts]
    for q in g.queues:
        lines.append(f"{q.name}" + (f": {q.description}" if q.description else ""))
        lines += [f"  {event} -> {target}" for source, target, event in edges if source == q.name]
        lines += [
            f"  {event} (no subscriber)"
            for event in q.emits
            if not any(s.event == event for s in g.subscriptions)
        ]
        lines += [f"  undone by {target}" for source, target in undo if source == q.name]
    return "\n".join(lines) + "\n"


def _node_id(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def _mermaid(
    g: Graph,
    starts: list[tuple[str, str]],
    edges: list[tuple[str, str, str]],
    undo: list[tuple[str, str]],
) -> str:
    lines = ["flowchart LR"]
    lines += [f'  {_node_id(q.name)}["{q.name}"]' for q in g.queues]
    for event, queue in starts:
        lines.append(f'  start_{_node_id(event)}(["{event}"]) --> {_node_id(queue)}')
    lines += [f"  {_node_id(a)} -->|{e}| {_node_id(b)}" for a, b, e in edges]
    lines += [f"  {_node_id(a)} -.->|undo| {_node_id(b)}" for a, b in undo]
    return "\n".join(lines) + "\n"


def _dot(
    g: Graph,
    starts: list[tuple[str, str]],
    edges: list[tuple[str, str, str]],
    undo: list[tuple[str, str]],
) -> str:
    lines = ["digraph workflows {", "  rankdir=LR;", "  node [shape=box, style=rounded];"]
    lines += [f'  "{q.name}";' for q in g.queues]
    for event, queue in starts:
        lines.append(f'  "{event}" [shape=oval];')
        lines.append(f'  "{event}" -> "{queue}";')
    lines += [f'  "{a}" -> "{b}" [label="{e}"];' for a, b, e in edges]
    lines += [f'  "{a}" -> "{b}" [label="undo", style=dashed];' for a, b in undo]
    lines.append("}")
    return "\n".join(lines) + "\n"
