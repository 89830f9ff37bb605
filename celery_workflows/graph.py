"""The workflow graph, introspected from declarations: which step emits what, which
subscription enqueues which queue. The admin draws it; :func:`validate` checks it at start-up."""

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


@dataclass(frozen=True)
class SubscriptionEdge:
    name: str
    event: str
    queue: str
    filtered: bool
    mapped: bool


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
        QueueNode(w.qualified_name, w.description, w.graph_emits, w.compensate_with)
        for w in sorted(registry.queues().values(), key=lambda w: w.qualified_name)
    )
    subs = tuple(
        SubscriptionEdge(s.name, s.event, s.queue, s.when is not None, s.map is not None)
        for s in sorted(registry.subscriptions(), key=lambda s: s.name)
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
    return [
        f"subscription {s.name!r} to event {s.event!r} enqueues {s.queue!r}, which no "
        f"service declares (declared: {declared})"
        for s in registry.subscriptions()
        if s.queue not in known
    ] + [
        f"queue {q.qualified_name!r} is compensated by {q.compensate_with!r}, which no service "
        f"declares (declared: {declared})"
        for q in known.values()
        if q.compensate_with and q.compensate_with not in known
    ]


def validate() -> None:
    """Raise :class:`ConfigurationError` listing every problem; called at worker start-up."""
    found = problems()
    if found:
        raise ConfigurationError("workflow graph is invalid:\n  " + "\n  ".join(found))
