"""Subscriptions: what runs when an event is emitted.

A subscription turns one event into one job on a queue - optionally filtered (``when``) and
with its payload mapped (``map``). Several subscriptions may share an event (fan-out). A
handler-style subscription (:meth:`WorkflowService.on`) is a queue worker of its own, so side
effects get the same lease, retry and dead-letter treatment as any step. A join
(:meth:`WorkflowService.join`) waits for all of several events of one run (:mod:`.joins`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import PayloadError, SubscriptionError
from .limits import key_value
from .records import Event


@dataclass(frozen=True)
class Subscription:
    #: unique name; part of the (event id, subscription) de-duplication key
    name: str
    event: str
    #: ``service.queue`` the job goes to
    queue: str
    map: Callable[[Event], Any] | None = None
    when: Callable[[Event], bool] | None = None
    #: True for handler-style subscriptions: the job's payload is the whole envelope
    delivers_envelope: bool = False
    #: the priority of the jobs it starts; None: the priority of what caused the event
    priority: int | None = None
    #: seconds: start the job only for the last event of a key in this quiet window
    debounce: float = 0.0
    #: seconds: start at most one job per key in each window of this length
    throttle: float = 0.0
    #: event payload field (dotted) that keys debounce and throttle; None: one key for all
    key: str | None = None
    #: a join: every one of these events of a run must have happened (``event`` is the first)
    all_of: tuple[str, ...] = ()

    @property
    def events(self) -> tuple[str, ...]:
        """The events this subscription waits for: its event, or every event of its join."""
        return self.all_of or (self.event,)

    def key_for(self, event: Event) -> str:
        """The debounce/throttle key of ``event`` ('' without a key field)."""
        if self.key is None:
            return ""
        where = f"subscription {self.name!r} (event {event.name!r} {event.id})"
        try:
            return key_value(where, event.payload, self.key, "its debounce/throttle key")
        except PayloadError as exc:
            raise SubscriptionError(str(exc)) from exc

    def payload_for(self, event: Event) -> Any:
        if self.delivers_envelope:
            return event.to_json()
        if self.map is None:
            return event.payload
        try:
            return self.map(event)
        except Exception as exc:
            raise SubscriptionError(
                f"subscription {self.name!r}: map() failed for event {event.name!r} "
                f"{event.id}: {type(exc).__name__}: {exc}"
            ) from exc

    def matches(self, event: Event) -> bool:
        if self.when is None:
            return True
        try:
            return bool(self.when(event))
        except Exception as exc:
            raise SubscriptionError(
                f"subscription {self.name!r}: when() failed for event {event.name!r} "
                f"{event.id}: {type(exc).__name__}: {exc}"
            ) from exc
