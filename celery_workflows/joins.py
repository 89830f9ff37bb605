"""Joins: a step that starts once every one of several events of its run has happened.

``service.join(["paymentCaptured", "stockReserved"], enqueue="ship")`` declares one. An event
of a join is written with an :class:`Arrival`, and the ledger settles arrivals *under the
run's lock* - the lock every write of a run takes first - in the transaction that writes the
event: the write that finds every event of the join recorded for the run creates the join's
job, in that same transaction. Two branches finishing at the same instant on two workers take
turns on the lock, so the second sees the first's event; the job's idempotency key (one per
run and join) keeps it to one even if an event of the join is emitted again. Nothing polls:
an arriving event costs one indexed read of its run's events, and a crash before the commit
leaves nothing half done (the attempt that emitted the event is tried again, and emits it
again).

The job's payload maps each event's name to its payload (the first event of each name in the
run), so the step's payload schema names the events as its fields.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import registry
from .records import NewJob
from .subscriptions import Subscription

#: (event id, name, payload) of a run's events, oldest first
EventRow = tuple[str, str, Any]
#: how a store reads the events of a run with some names: (correlation id, names) -> rows
ReadEvents = Callable[[str, tuple[str, ...]], Sequence[EventRow]]


@dataclass(frozen=True)
class Arrival:
    """An event a join waits for, written in this outbox: the join is checked once it is."""

    subscription: Subscription
    correlation_id: str
    #: the arriving event: the job's cause if it completes the join
    event_id: str
    trace_id: str
    priority: int | None
    #: when the job is due (a delayed emit's time)
    available_at: datetime
    published: bool


#: how the idempotency key of a job a join started begins (the timeline marks those jobs)
KEY_PREFIX = "join:"


def job_key(correlation_id: str, subscription: str) -> str:
    """The idempotency key of a join's job: one per run and join (at most 200 characters)."""
    key = f"{KEY_PREFIX}{correlation_id}:{subscription}"
    if len(key) <= 200:
        return key
    return f"{KEY_PREFIX}{correlation_id}:{hashlib.sha256(subscription.encode()).hexdigest()[:32]}"


def completed(arrivals: Sequence[Arrival], read: ReadEvents) -> list[NewJob]:
    """The jobs of the joins that ``arrivals`` complete, read through ``read`` (under the
    runs' locks, after the arriving events are written); one per join and run."""
    jobs: list[NewJob] = []
    seen: set[tuple[str, str]] = set()
    for arrival in arrivals:
        sub = arrival.subscription
        if (sub.name, arrival.correlation_id) in seen:
            continue
        seen.add((sub.name, arrival.correlation_id))
        first: dict[str, Any] = {}
        for _id, name, payload in read(arrival.correlation_id, sub.all_of):
            first.setdefault(name, payload)
        if len(first) < len(sub.all_of):
            continue
        spec = registry.subscription_target(sub)
        jobs.append(
            registry.hooks().on_enqueue(
                spec.new_job(
                    {name: first[name] for name in sub.all_of},
                    available_at=arrival.available_at,
                    correlation_id=arrival.correlation_id,
                    published=arrival.published,
                    idempotency_key=job_key(arrival.correlation_id, sub.name),
                    caused_by=arrival.event_id,
                    trace_id=arrival.trace_id,
                    priority=arrival.priority,
                )
            )
        )
    return jobs
