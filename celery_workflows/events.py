"""Events: what a step announces instead of calling the next step.

An event is an envelope (:class:`~celery_workflows.records.Event`) with its own id, the
workflow's correlation id, the id of what caused it and a trace id. Emitting never calls
anything: the event is written to the ledger together with the jobs its subscriptions create
(the outbox), in the same transaction as the emitting step's outcome - or as the caller's
transaction, for :func:`emit` from Django code. The jobs' notices are published only after that
commit, so a rolled-back step announces nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timedelta
from typing import Any

from . import registry, signals
from .clock import utcnow
from .errors import ConfigurationError
from .ids import new_id
from .joins import Arrival
from .lifecycle import PUBLISH_HORIZON_SECONDS
from .payloads import to_json, validated
from .queues import QueueSpec
from .records import Dispatch, Event, NewJob, Outbox, RunStart
from .store import Controls, Store
from .subscriptions import Subscription

logger = logging.getLogger("celery_workflows.events")


def new_event(
    name: str,
    payload: Any,
    *,
    source: str,
    correlation_id: str | None,
    causation_id: str | None,
    trace_id: str | None,
) -> Event:
    """Validate ``payload`` against the event's schema (if declared) and build the envelope."""
    registry.check_name("event", name)
    body = event_payload(name, payload)
    correlation = correlation_id or new_id()
    return registry.hooks().on_emit(
        Event(
            id=new_id(),
            name=name,
            payload=body,
            correlation_id=correlation,
            causation_id=causation_id,
            trace_id=trace_id or correlation,
            emitted_at=utcnow(),
            source=source,
        )
    )


def event_payload(name: str, payload: Any) -> Any:
    """The JSON form of an event's payload; validated (defaults filled in) if it has a schema,
    so subscribers' ``map``/``when`` see the validated form."""
    body = to_json(f"event {name!r}", payload, registry.max_payload_bytes())
    schema = registry.event_schemas().get(name)
    if schema is None:
        return body
    return validated(f"event {name!r}", schema, body).model_dump(mode="json", by_alias=True)


def plan(
    events: list[Event],
    starts: RunStart | None = None,
    available_at: datetime | None = None,
    priority: int | None = None,
) -> Outbox:
    """The outbox for ``events``: the events themselves, one job per matching subscription and
    an arrival per join they belong to (the ledger starts a join's job when it is complete).

    Each job's idempotency key is ``(event id, subscription)``, so writing the same event twice
    (a redelivered message, a retried emit) creates each job once. ``available_at`` holds the
    jobs back until then (a start at a time or after a delay); they wait in the ledger. The
    jobs inherit ``priority`` (that of the step or start that emitted the events) unless their
    subscription sets one.
    """
    jobs: list[NewJob] = []
    arrivals: list[Arrival] = []
    now = utcnow()
    due = now if available_at is None else max(now, available_at)
    published = due <= now + timedelta(seconds=PUBLISH_HORIZON_SECONDS)
    hooks = registry.hooks()
    for event in events:
        for sub in registry.subscriptions_for(event.name):
            if sub.all_of:
                arrivals.append(
                    Arrival(
                        sub,
                        event.correlation_id,
                        event.id,
                        event.trace_id,
                        sub.priority if sub.priority is not None else priority,
                        due,
                        published,
                    )
                )
                event.deliveries.append({"subscription": sub.name, "join": ", ".join(sub.all_of)})
                continue
            if not sub.matches(event):
                continue
            spec = registry.subscription_target(sub)
            job = spec.new_job(
                sub.payload_for(event),
                available_at=due,
                correlation_id=event.correlation_id,
                published=published,
                idempotency_key=f"event:{event.id}:{sub.name}",
                caused_by=event.id,
                trace_id=event.trace_id,
                priority=sub.priority if sub.priority is not None else priority,
            )
            job = hooks.on_enqueue(coalesced(sub, event, job, now))
            jobs.append(job)
            delivery = {"subscription": sub.name, "job_id": job.id}
            if sub.throttle:
                delivery["throttle"] = job.idempotency_key or ""
            event.deliveries.append(delivery)
    return Outbox(
        events=list(events), jobs=last_of_each_key(jobs), starts=starts, arrivals=arrivals
    )


def coalesced(sub: Subscription, event: Event, job: NewJob, now: datetime) -> NewJob:
    """``job`` as ``sub``'s debounce or throttle has it. Throttled: one idempotency key per
    key and window of the clock, so the window's first event creates the job and the others
    find it there. Debounced: due a quiet window after the event, marked with the
    subscription and key - when it comes due, a newer job with that mark supersedes it."""
    if sub.throttle:
        window = int(now.timestamp() // sub.throttle)
        key = f"throttle:{sub.name}:{sub.key_for(event)}:{window}"
        return dataclasses.replace(job, idempotency_key=key[:200])
    if sub.debounce:
        due = max(job.available_at, now + timedelta(seconds=sub.debounce))
        return dataclasses.replace(
            job,
            available_at=due,
            published=due <= now + timedelta(seconds=PUBLISH_HORIZON_SECONDS),
            coalesce_key=f"{sub.name}:{sub.key_for(event)}",
        )
    return job


def last_of_each_key(jobs: list[NewJob]) -> list[NewJob]:
    """Of debounced jobs written together, only the last of each subscription and key (they
    share a creation time, so the later could not supersede the earlier when due)."""
    last = {(j.queue, j.coalesce_key): j.id for j in jobs if j.coalesce_key}
    return [j for j in jobs if not j.coalesce_key or last[(j.queue, j.coalesce_key)] == j.id]


def publish_created(jobs: list[NewJob], store: Controls) -> None:
    """Publish the notices of jobs an outbox write created (call after commit) - except a job
    written claimed, which the writing process runs itself, and one due beyond the publish
    horizon, which the sweeper publishes when due. A notice the broker refuses never turns a
    committed write into an error: the job is marked unpublished for the sweeper's next pass."""
    queues = registry.queues()
    now = utcnow()
    per_queue: dict[str, list[Dispatch]] = {}
    for job in jobs:
        if job.lease is None and job.published:
            countdown = max(0.0, (job.available_at - now).total_seconds())
            dispatch = Dispatch(job.id, job.queue, 1, job.priority, countdown)
            per_queue.setdefault(job.queue, []).append(dispatch)
    # a map's branches: over one broker connection
    for queue, dispatches in per_queue.items():
        if not publish_or_hand_to_sweeper(store, queues[queue], dispatches):
            return


def publish_or_hand_to_sweeper(
    store: Controls, spec: QueueSpec, dispatches: list[Dispatch]
) -> bool:
    """Send ``dispatches`` of committed jobs; if the broker refuses, mark those jobs
    unpublished so that the sweeper sends them within a sweep interval, and say so (False)."""
    try:
        spec.publish_many(dispatches)
        return True
    except Exception:
        logger.exception(
            "%s: %d notice(s) could not be published; the sweeper sends them",
            spec.qualified_name,
            len(dispatches),
        )
    for dispatch in dispatches:
        try:
            store.park(dispatch.job_id, dispatch.attempt)
        except Exception:  # the ledger too: the sweeper re-publishes them after a while
            logger.exception("job %s left for the sweeper's re-publish", dispatch.job_id)
    return False


def announce(events: list[Event]) -> None:
    for event in events:
        signals.event_emitted.send(sender=event.source, event=event)


def write_and_publish(
    ledger: Store,
    events: list[Event],
    starts: RunStart | None = None,
    available_at: datetime | None = None,
    priority: int | None = None,
) -> list[NewJob]:
    """Write ``events`` and their subscriptions' jobs now (in the caller's transaction, if any);
    publish the jobs' notices and send ``event_emitted`` when that transaction commits.
    ``starts`` names the workflow run these events start, if their correlation id is new;
    ``available_at`` holds their jobs back until then."""
    created = ledger.write_outbox(plan(events, starts, available_at, priority))

    def after_commit() -> None:
        publish_created(created, ledger)
        announce(events)

    ledger.on_commit(after_commit)
    return created


def run_start_for(event: Event, deadline: timedelta | datetime | None = None) -> RunStart:
    """Which workflow an event emitted from outside any job starts, and its business key.

    The run belongs to the emitting service when ``event.source`` names one; otherwise (an
    event from plain code or another system) to the service whose queue the event's first
    subscription feeds. That service's ``business_key`` reads the key from the payload.
    """
    services = registry.services()
    owner = services.get(event.source)
    if owner is None:
        targets = sorted(sub.queue for sub in registry.subscriptions_for(event.name))
        queues = registry.queues()
        owner = next((services.get(queues[q].service) for q in targets if q in queues), None)
    if owner is None:
        return RunStart(event.source, "", event.name)
    return owner.run_start(event.name, event.payload, deadline)


def check_emits(source: str, declared: tuple[str, ...], name: str) -> None:
    if declared and name not in declared:
        raise ConfigurationError(
            f"{source} emitted {name!r} but declares emits={list(declared)}; add it there"
        )
