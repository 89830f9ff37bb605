"""Schedules: start a workflow at the right time - on Celery beat, recorded in the ledger.

``service.schedule("nightlyBackorders", cron="0 3 * * *", timezone="Europe/Berlin",
emit="backordersDue")`` adds an entry to the Celery app's ``beat_schedule``: run ``celery -A
proj beat`` (with django-celery-beat installed, the entry appears in its admin too). Each time
beat fires it, a worker starts the target - emits the event or enqueues the queue's job with
the declared payload - and records the firing as a row of the ledger (``ScheduleFire``), one
per (schedule, slot): a trigger that fires twice for the same time starts one run, and "did last
night's run happen?" is answered in the admin.

- ``concurrency`` - while the run the previous firing started is unfinished: ``"allow"`` starts
  another; ``"forbid"`` records the firing as skipped; ``"replace"`` stops the previous run
  (compensating it) and starts a new one.
- ``missed`` - slots that passed while beat was down (noticed when beat starts, or at the next
  firing): ``"skip"`` them; run ``"once"`` for all of them; or ``"backfill"`` up to
  ``backfill_limit`` of them, oldest first.

The firing's slot is the time beat sent it (beat stamps it when it sends the task), rounded to
the schedule: a cron slot is a minute, an interval slot a multiple of the interval since the
Unix epoch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery import Task

from . import cron, registry, telemetry
from .clock import utcnow
from .compensation import stop_workflow
from .cron import ZonedCrontab
from .enqueueing import enqueue
from .errors import ConfigurationError
from .events import new_event, run_start_for, write_and_publish
from .ids import new_id
from .payloads import to_json
from .store import Store, get_store

logger = logging.getLogger("celery_workflows.schedules")

FIRE_TASK = "celery_workflows.fire_schedule"
#: the queue schedule firings are sent to (a worker without ``-Q`` consumes it)
SCHEDULES_QUEUE = "celery_workflows.schedules"
CONCURRENCY = ("allow", "forbid", "replace")
MISSED = ("skip", "once", "backfill")
#: a firing later than this after its slot counts as missed (beat was down)
GRACE = timedelta(seconds=60)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


#: the name beat's schedule files written by earlier versions pickled the crontab under
zoned_crontab = ZonedCrontab


@dataclass(frozen=True)
class ScheduleSpec:
    """A declared schedule: when, what to start, and its policies."""

    service: str
    name: str
    cron: str | None
    every: timedelta | None
    timezone: str
    emit: str | None
    enqueue: str | None
    payload: Any
    concurrency: str
    missed: str
    backfill_limit: int

    @property
    def qualified_name(self) -> str:
        return f"{self.service}.{self.name}"

    def beat_schedule(self) -> ZonedCrontab | timedelta:
        if self.every is not None:
            return self.every
        assert self.cron is not None
        minute, hour, day_of_month, month_of_year, day_of_week = self.cron.split()
        return ZonedCrontab(
            minute=minute,
            hour=hour,
            day_of_week=day_of_week,
            day_of_month=day_of_month,
            month_of_year=month_of_year,
            zone=self.timezone,
        )

    def slot_at(self, moment: datetime) -> datetime:
        """The schedule's latest slot at or before ``moment``."""
        if self.every is not None:
            steps = (moment - EPOCH) // self.every
            return EPOCH + steps * self.every
        found = cron.slot_at(self.beat_schedule(), ZoneInfo(self.timezone), moment)
        if found is None:
            raise ConfigurationError(f"schedule {self.qualified_name}: no slot in the past year")
        return found

    def slots_after(self, start: datetime, end: datetime, limit: int = 1000) -> list[datetime]:
        """The slots after ``start`` up to and including ``end``, oldest first (at most
        ``limit``, the latest ones)."""
        found: list[datetime] = []
        slot = self.slot_at(end)
        while slot > start and len(found) < limit:
            found.append(slot)
            slot = self.slot_at(slot - timedelta(microseconds=1))
        return found[::-1]

    def grace(self) -> timedelta:
        """How long after its slot a firing still counts as on time. Beat runs an interval
        entry every ``every`` from its own start, not from the epoch, so an interval firing may
        land anywhere in its slot: only a cron firing can be late by its phase."""
        return self.every if self.every is not None else GRACE


def declare(
    service: Any,
    name: str,
    *,
    cron: str | None,
    every: timedelta | None,
    timezone: str,
    emit: str | None,
    enqueue: str | None,
    payload: Any,
    concurrency: str,
    missed: str,
    backfill_limit: int,
) -> ScheduleSpec:
    """Validate a schedule declaration and register it (see :meth:`WorkflowService.schedule`)."""
    what = f"schedule {service.name}.{name}"
    registry.check_name("schedule", name)
    if (cron is None) == (every is None):
        raise ConfigurationError(f"{what}: give exactly one of cron= or every=")
    if cron is not None and (not isinstance(cron, str) or len(cron.split()) != 5):
        raise ConfigurationError(f"{what}: cron must have five fields, got {cron!r}")
    if every is not None and (not isinstance(every, timedelta) or every.total_seconds() < 1):
        raise ConfigurationError(f"{what}: every must be a timedelta of at least 1 second")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ConfigurationError(f"{what}: unknown timezone {timezone!r}") from None
    if (emit is None) == (enqueue is None):
        raise ConfigurationError(f"{what}: give exactly one target, emit= or enqueue=")
    if emit is not None:
        registry.check_name("event", emit)
    if concurrency not in CONCURRENCY:
        raise ConfigurationError(f"{what}: concurrency must be one of {CONCURRENCY}")
    if missed not in MISSED:
        raise ConfigurationError(f"{what}: missed must be one of {MISSED}")
    if missed == "backfill" and (not isinstance(backfill_limit, int) or backfill_limit < 1):
        raise ConfigurationError(f"{what}: backfill needs backfill_limit >= 1")
    spec = ScheduleSpec(
        service=service.name,
        name=name,
        cron=cron,
        every=every,
        timezone=timezone,
        emit=emit,
        enqueue=(enqueue if enqueue is None or "." in enqueue else f"{service.name}.{enqueue}"),
        payload=to_json(what, payload),
        concurrency=concurrency,
        missed=missed,
        backfill_limit=backfill_limit,
    )
    try:
        spec.beat_schedule()
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"{what}: invalid cron {cron!r}: {exc}") from None
    registry.register_schedule(spec)
    app = service.celery_app
    app.conf.beat_schedule = {
        **(app.conf.beat_schedule or {}),
        f"celery_workflows:{spec.qualified_name}": {
            "task": FIRE_TASK,
            "schedule": spec.beat_schedule(),
            "args": [spec.qualified_name],
            "options": {"queue": SCHEDULES_QUEUE},
        },
    }
    return spec


class FireScheduleTask(Task[Any, Any]):
    """Stamps the firing time when the task is sent - by beat, at the slot."""

    def apply_async(  # type: ignore[override]
        self, args: Any = None, kwargs: Any = None, **options: Any
    ) -> Any:
        kwargs = dict(kwargs or {})
        kwargs.setdefault("fired_at", utcnow().isoformat())
        return super().apply_async(args, kwargs, **options)


def fire(name: str, fired_at: str | None = None, catch_up: bool = False) -> list[datetime]:
    """Body of the fire task: start the target for this firing's slot (and for missed slots,
    as the policy says). Returns the slots that started a run."""
    spec = registry.schedules().get(name)
    if spec is None:
        raise ConfigurationError(f"no schedule {name!r} is declared in this worker")
    at = datetime.fromisoformat(fired_at) if fired_at else utcnow()
    store = get_store()
    slot = spec.slot_at(at)
    last = store.last_fire(name)
    late = catch_up or at - slot > spec.grace()
    if last is None:
        if late:
            # never fired before: slots from before the schedule was first seen are not
            # missed (a new nightly job must not run at once on its first deploy); from now
            # on, slots after this moment are
            store.record_fire(name, at, "seen", "first seen; earlier slots are not missed", "")
            return []
        missed: list[datetime] = []
    else:
        missed = spec.slots_after(last[0], slot)
        if not late:
            missed = [s for s in missed if s != slot]
    due = [] if late else [slot]
    chosen = {"skip": [], "once": missed[-1:], "backfill": missed[-spec.backfill_limit :]}
    started = []
    for each in [*chosen[spec.missed], *due]:
        if start(store, spec, each, "missed slot" if each not in due else ""):
            started.append(each)
    if late and not started:
        logger.info(
            "schedule %s: firing of %s came %s after its slot; %d missed slot(s) %s (missed=%r)",
            name,
            at.isoformat(),
            at - slot,
            len(missed),
            "skipped" if spec.missed == "skip" else "already fired",
            spec.missed,
        )
    return started


def start(store: Store, spec: ScheduleSpec, slot: datetime, note: str) -> bool:
    """Start the schedule's target for ``slot`` once, honouring its concurrency policy."""
    # "still running" is about the run of the last firing that started one: firings skipped
    # since then started nothing, so they must not hide it
    previous = store.last_fire(spec.qualified_name, started=True)
    status = store.run_status(previous[2]) if previous is not None and previous[2] else None
    running = status is not None and not status.is_final
    actor = f"schedule:{spec.qualified_name}"
    if running and spec.concurrency == "forbid":
        store.record_fire(spec.qualified_name, slot, "skipped", "previous run still unfinished", "")
        return False
    correlation_id = new_id()
    outcome = "replaced" if running and spec.concurrency == "replace" else "started"
    with store.atomic():
        if not store.record_fire(spec.qualified_name, slot, outcome, note, correlation_id):
            return False  # this slot fired already
        if outcome == "replaced" and previous is not None:
            stop_workflow(previous[2], f"replaced by the firing of {slot.isoformat()}", actor)
        traceparent = telemetry.new_traceparent(f"schedule {spec.qualified_name}")
        if spec.emit is not None:
            event = new_event(
                spec.emit,
                spec.payload,
                source=spec.service,
                correlation_id=correlation_id,
                causation_id=None,
                trace_id=traceparent or None,
            )
            write_and_publish(store, [event], run_start_for(event))
        else:
            assert spec.enqueue is not None
            target = registry.get_queue(spec.enqueue)
            body = target.validate_payload(spec.payload)
            enqueue(target, body, correlation_id=correlation_id, trace_id=traceparent)
    return True
