"""WorkflowService: declares queue workers on an existing Celery app and enqueues their jobs."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from celery import Celery
from pydantic import BaseModel

from . import priorities, registry, telemetry
from .celery_integration import install
from .clock import utcnow
from .compensation import ON_FAILURE
from .context import Job, JobContext
from .enqueueing import after_insert, after_insert_many, prepare, start_time
from .errors import ConfigurationError, RunAlreadyOpenError
from .events import new_event, run_start_for, write_and_publish
from .gathers import Gather
from .ids import new_id
from .lifecycle import Lifecycle
from .limits import Limits, check_key_path
from .payloads import max_payload_bytes
from .queues import Handler, QueueSpec
from .records import EnqueueResult, Event, RunStart
from .schedules import ScheduleSpec
from .schedules import declare as declare_schedule
from .store import Store, get_store
from .subscriptions import Subscription
from .worker import run_message

R = TypeVar("R")
H = TypeVar("H", bound=Handler)

#: what starting a run does while a run with the same business key is open
ON_DUPLICATE_KEY = ("allow", "refuse", "reuse")


class WorkflowService(Generic[R]):
    """A named group of queue workers on one Celery app - the card's "service".

    ``resources`` is any object handed to every handler as ``ctx.resources`` (clients,
    repositories, settings); it is created once, by you, when the service is declared.
    ``business_key`` reads a run's key (an order id) from the payload that starts it.
    ``on_failure`` says what a dead-lettered step means for its run: ``"compensate"`` (undo the
    completed steps that declare ``compensate_with``, in reverse order) or ``"stop"`` (leave the
    run dead-lettered for an operator to re-drive). ``deadline`` bounds every run's lifetime;
    when it passes, the run is stopped, ``timeout_event`` (if given) is emitted and its
    completed steps are compensated. ``on_duplicate_key`` says what starting a run (``emit``
    or ``enqueue`` without a correlation id) does while a run of this service with the same
    business key is still open: ``"allow"`` another (the default), ``"refuse"`` it
    (:class:`~celery_workflows.errors.RunAlreadyOpenError`, naming the open run; nothing is
    written) or ``"reuse"`` the open one (nothing is written; the returned event or enqueue
    result names the open run).
    """

    def __init__(
        self,
        name: str,
        celery_app: Celery,
        *,
        resources: R = None,  # type: ignore[assignment]
        business_key: str | Callable[[Any], Any] | None = None,
        continue_locally: bool = True,
        on_failure: str = "compensate",
        deadline: timedelta | None = None,
        timeout_event: str | None = None,
        version: str | None = None,
        on_duplicate_key: str = "allow",
    ) -> None:
        registry.check_name("service", name)
        if on_duplicate_key not in ON_DUPLICATE_KEY:
            raise ConfigurationError(
                f"service {name}: on_duplicate_key must be one of {ON_DUPLICATE_KEY}, "
                f"got {on_duplicate_key!r}"
            )
        if version is not None and not (isinstance(version, str) and 0 < len(version) <= 64):
            raise ConfigurationError(
                f"service {name}: version must be a non-empty string of at most 64 characters"
            )
        if not (business_key is None or isinstance(business_key, str) or callable(business_key)):
            raise ConfigurationError(
                f"service {name}: business_key must be a payload field name or a function"
            )
        if on_failure not in ON_FAILURE:
            raise ConfigurationError(
                f"service {name}: on_failure must be one of {ON_FAILURE}, got {on_failure!r}"
            )
        _check_deadline(f"service {name}", deadline)
        if timeout_event is not None:
            registry.check_name("event", timeout_event)
        self.name = name
        self.on_failure = on_failure
        #: what starting a run does while a run with the same business key is open
        self.on_duplicate_key = on_duplicate_key
        #: how long a run may take before it times out (None: no deadline)
        self.deadline = deadline
        self.timeout_event = timeout_event
        #: how a workflow's business key (an order id, say) is read from the payload that starts it
        self.business_key = business_key
        #: default of ``queue_worker(continue_locally=...)`` for this service's queues
        self.continue_locally = continue_locally
        self.celery_app = celery_app
        self.resources: R = resources
        self._queues: dict[str, QueueSpec] = {}
        self._version = version
        self._fingerprint: tuple[tuple[int, int], str] | None = None
        #: ``workflows_max_payload_bytes`` on the Celery app: the largest job/event payload
        self.max_payload_bytes = max_payload_bytes(celery_app.conf)
        registry.register_service(self)
        install(celery_app)

    @property
    def version(self) -> str:
        """The definition version each new run records: ``version=`` when given, otherwise a
        fingerprint of what this service declares - its queues (what each emits and what
        undoes it) and the subscriptions feeding them. A deploy that changes the graph
        changes it, so a run's page says which definition it started with."""
        if self._version is not None:
            return self._version
        # read at every run start: recomputed only when a declaration was added since
        key = (len(self._queues), registry.subscription_count())
        if self._fingerprint is None or self._fingerprint[0] != key:
            mine = self.qualified_names
            subscriptions = [s for s in registry.subscriptions() if s.queue in mine]
            shape = {
                "queues": sorted(
                    (s.name, sorted(s.emits), s.compensate_with or "", s.result_event or "")
                    + ((s.gather.each, s.gather.into) if s.gather else ())
                    for s in self._queues.values()
                ),
                "subscriptions": sorted(("+".join(s.events), s.queue) for s in subscriptions),
            }
            digest = hashlib.sha256(json.dumps(shape).encode()).hexdigest()[:12]
            self._fingerprint = (key, digest)
        return self._fingerprint[1]

    @property
    def qualified_names(self) -> set[str]:
        return {spec.qualified_name for spec in self._queues.values()}

    def business_key_of(self, payload: Any) -> str:
        """The business key of a workflow started with ``payload`` ("" if none is declared)."""
        if self.business_key is None:
            return ""
        if callable(self.business_key):
            value = self.business_key(payload)
        else:
            value = payload.get(self.business_key) if isinstance(payload, dict) else None
        return "" if value is None else str(value)[:200]

    def run_start(
        self, started_by: str, payload: Any, deadline: timedelta | datetime | None = None
    ) -> RunStart:
        """How a run of this service started by ``started_by`` with ``payload`` is recorded:
        its business key and its deadline (``deadline`` overrides the service's)."""
        chosen = self.deadline if deadline is None else deadline
        _check_deadline(f"service {self.name}", chosen)
        at = chosen if isinstance(chosen, datetime) else utcnow() + chosen if chosen else None
        return RunStart(self.name, self.business_key_of(payload), started_by, at, self.version)

    def __repr__(self) -> str:
        return f"<WorkflowService {self.name!r} queues={sorted(self._queues)}>"

    @property
    def queues(self) -> dict[str, QueueSpec]:
        return dict(self._queues)

    def queue_worker(
        self,
        name: str,
        description: str = "",
        *,
        payload: type[BaseModel] | None = None,
        lifecycle: Lifecycle | None = None,
        emits: Sequence[str] = (),
        result_event: str | None = None,
        continue_locally: bool | None = None,
        compensate_with: str | Handler | None = None,
        limits: Limits | None = None,
        gather: Gather | None = None,
        atomic: bool = False,
    ) -> Callable[[H], H]:
        """Declare ``name`` as a queue worker whose handler is the decorated function.

        The handler is called as ``handler(ctx, job)``; ``job.payload`` is an instance of
        ``payload`` (validated before the handler runs) or the raw JSON when no schema is given.
        ``emits`` lists the events the step may emit (the graph is drawn from it; emitting an
        undeclared event raises). ``result_event`` emits the handler's return value as that
        event on success. ``continue_locally=False`` makes every job of this queue go through
        the broker, even when the worker that created it consumes this queue (default: the
        service's setting). ``compensate_with`` names the queue (of this service, or
        ``service.queue``) whose job undoes this step if its run fails later - or is a handler,
        declared as the queue ``undo_<name>``; it receives this step's payload. ``limits``
        caps how many of its attempts run at once and how fast they start, across every
        worker (:class:`~celery_workflows.limits.Limits`); a limited queue is never continued
        locally. ``gather`` makes it a mapping step: its handler's ``ctx.map(items)`` starts one
        job per item on ``gather.each`` and, once every one has ended, one job on
        ``gather.into`` with all their results in item order
        (:class:`~celery_workflows.gathers.Gather`). ``atomic=True`` runs the handler inside the
        database transaction that records its outcome: its ORM writes on the default database,
        the outcome, the events and the next jobs commit together or not at all (see
        docs/atomic-steps.md); its handler must be a plain function.
        """
        registry.check_name("queue", name)
        if name in self._queues:
            raise ConfigurationError(f"queue {self.name}.{name} is declared twice")
        if payload is not None and not (
            isinstance(payload, type) and issubclass(payload, BaseModel)
        ):
            raise ConfigurationError(
                f"queue {self.name}.{name}: payload must be a pydantic model class, got {payload!r}"
            )
        if lifecycle is not None and not isinstance(lifecycle, Lifecycle):
            raise ConfigurationError(
                f"queue {self.name}.{name}: lifecycle must be a Lifecycle, got {lifecycle!r}"
            )

        if limits is not None:
            if not isinstance(limits, Limits):
                raise ConfigurationError(
                    f"queue {self.name}.{name}: limits must be a Limits, got {limits!r}"
                )
            limits.check_schema(f"queue {self.name}.{name}", payload)
        emitted = tuple(emits)
        for event in emitted:
            registry.check_name("event", event)
        if result_event is not None:
            registry.check_name("event", result_event)

        undo = self._compensation_queue(name, compensate_with, lifecycle)
        if gather is not None and not isinstance(gather, Gather):
            raise ConfigurationError(
                f"queue {self.name}.{name}: gather must be a Gather, got {gather!r}"
            )

        if not isinstance(atomic, bool):
            raise ConfigurationError(
                f"queue {self.name}.{name}: atomic must be True or False, got {atomic!r}"
            )

        def decorate(handler: H) -> H:
            if not callable(handler):
                raise ConfigurationError(f"queue {self.name}.{name}: handler must be callable")
            if atomic and inspect.iscoroutinefunction(handler):
                # its ORM calls would run in other threads, on other connections: outside
                # the transaction that makes the step atomic
                raise ConfigurationError(
                    f"queue {self.name}.{name}: an atomic step's handler must be a plain "
                    "function (an async def handler's database calls run on other connections)"
                )
            spec = QueueSpec(
                service=self.name,
                name=name,
                description=description,
                payload_schema=payload,
                lifecycle=lifecycle or Lifecycle(),
                handler=handler,
                resources=self.resources,
                max_payload_bytes=self.max_payload_bytes,
                continue_locally=(
                    self.continue_locally if continue_locally is None else continue_locally
                ),
                compensate_with=undo,
                emits=emitted,
                result_event=result_event,
                limits=limits,
                gather=gather.qualified(self.name) if gather is not None else None,
                atomic=atomic,
            )
            spec.task = self._make_task(spec)
            self._queues[name] = spec
            registry.register_queue(spec)
            return handler

        return decorate

    def from_task(
        self,
        task: Any,
        name: str | None = None,
        description: str = "",
        *,
        lifecycle: Lifecycle | None = None,
        emits: Sequence[str] = (),
        result_event: str | None = None,
        continue_locally: bool | None = None,
        compensate_with: str | Handler | None = None,
        limits: Limits | None = None,
        atomic: bool = False,
    ) -> QueueSpec:
        """Declare a queue worker that runs an existing Celery ``task`` unchanged (see
        :mod:`celery_workflows.canvas` and docs/canvas.md): a job's payload is the task's
        keyword arguments, checked against its signature at enqueue; its ``autoretry_for``
        policy and time limit become the lifecycle (unless ``lifecycle`` is given); its
        return value is the step's result (``result_event`` emits it). ``name`` defaults to
        the task's function name. The task stays callable as a Celery task elsewhere."""
        from .canvas import check_task, lifecycle_of, payload_schema, task_handler

        task_name = check_task(task)
        queue = name or task_name.rsplit(".", 1)[-1]
        doc = (task.run.__doc__ or "").strip().splitlines()
        self.queue_worker(
            queue,
            description or (doc[0] if doc else f"the Celery task {task_name}"),
            payload=payload_schema(task),
            lifecycle=lifecycle or lifecycle_of(task),
            emits=emits,
            result_event=result_event,
            continue_locally=continue_locally,
            compensate_with=compensate_with,
            limits=limits,
            atomic=atomic,
        )(task_handler(task))
        return self._queues[queue]

    def _compensation_queue(
        self, name: str, compensate_with: str | Handler | None, lifecycle: Lifecycle | None
    ) -> str | None:
        if compensate_with is None:
            return None
        if isinstance(compensate_with, str):
            return compensate_with if "." in compensate_with else f"{self.name}.{compensate_with}"
        if not callable(compensate_with):
            raise ConfigurationError(
                f"queue {self.name}.{name}: compensate_with must be a queue name or a handler"
            )
        undo = f"undo_{name}"[:100]
        self.queue_worker(undo, f"Undo {name}", lifecycle=lifecycle)(compensate_with)
        return f"{self.name}.{undo}"

    def schedule(
        self,
        name: str,
        *,
        cron: str | None = None,
        every: timedelta | None = None,
        timezone: str = "UTC",
        emit: str | None = None,
        enqueue: str | None = None,
        payload: Any = None,
        concurrency: str = "allow",
        missed: str = "skip",
        backfill_limit: int = 0,
    ) -> ScheduleSpec:
        """Start a workflow on a schedule, run by Celery beat: ``cron`` ("minute hour
        day-of-month month day-of-week", in ``timezone``) or ``every`` (a timedelta). The
        target is an event to ``emit`` or a queue to ``enqueue`` onto, with ``payload``.
        ``concurrency`` (``allow``/``forbid``/``replace``) says what happens while the previous
        firing's run is unfinished; ``missed`` (``skip``/``once``/``backfill`` up to
        ``backfill_limit``) what happens to slots that passed while beat was down. Each firing
        is recorded once per slot (see :mod:`celery_workflows.schedules`).
        """
        return declare_schedule(
            self,
            name,
            cron=cron,
            every=every,
            timezone=timezone,
            emit=emit,
            enqueue=enqueue,
            payload=payload,
            concurrency=concurrency,
            missed=missed,
            backfill_limit=backfill_limit,
        )

    def event(
        self, name: str, schema: type[BaseModel] | None = None, *, terminal: bool = False
    ) -> None:
        """Declare event ``name``: it may be emitted from outside any step (a workflow's
        start), with ``schema`` checked on every emit (a failing payload raises at once).
        ``terminal=True`` says nothing needs to subscribe to it (``manage.py check`` warns
        about other events nobody subscribes to)."""
        registry.check_name("event", name)
        if schema is not None:
            if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
                raise ConfigurationError(f"event {name!r}: schema must be a pydantic model class")
            registry.register_event_schema(name, schema)
        registry.declare_event(name, terminal)

    def subscribe(
        self,
        event: str,
        *,
        enqueue: str,
        map: Callable[[Event], Any] | None = None,
        when: Callable[[Event], bool] | None = None,
        name: str | None = None,
        priority: int | None = None,
        debounce: float | timedelta | None = None,
        throttle: float | timedelta | None = None,
        key: str | None = None,
    ) -> Subscription:
        """When ``event`` is emitted, enqueue a job on ``enqueue`` (a queue of this service, or
        ``service.queue``). ``map(event)`` builds the job's payload (default: the event's
        payload); ``when(event)`` filters. Each event starts each subscription's job once.
        ``priority`` (0-9, higher first) sets its jobs' priority; by default they inherit that
        of the step or start that emitted the event.

        ``debounce=30`` starts the job only for the last of a burst of events: each one waits
        30 s, and a newer one of the same ``key`` (a field of the event's payload) supersedes
        it. ``throttle=60`` starts at most one job per ``key`` in each minute of the clock;
        later events of that minute start nothing. Without ``key``, all events count as one.

        The target queue may be declared later; :func:`celery_workflows.graph.validate` (run
        when a worker starts) fails naming both if it never is.
        """
        registry.check_name("event", event)
        queue = enqueue if "." in enqueue else f"{self.name}.{enqueue}"
        what = f"subscription to {event} -> {queue}"
        windows = {
            n: window_seconds(what, n, v)
            for n, v in (("debounce", debounce), ("throttle", throttle))
        }
        if windows["debounce"] and windows["throttle"]:
            raise ConfigurationError(f"{what}: debounce and throttle exclude each other")
        if key is not None:
            if not any(windows.values()):
                raise ConfigurationError(f"{what}: key is only for debounce or throttle")
            check_key_path(f"{what}: key", key)
        sub = Subscription(
            name=name or f"{self.name}:{event}->{queue}",
            event=event,
            queue=queue,
            map=map,
            when=when,
            priority=priorities.check(what, priority),
            debounce=windows["debounce"],
            throttle=windows["throttle"],
            key=key,
        )
        registry.register_subscription(sub)
        return sub

    def join(
        self,
        events: Sequence[str],
        *,
        enqueue: str,
        name: str | None = None,
        priority: int | None = None,
    ) -> Subscription:
        """Enqueue a job on ``enqueue`` once *every one* of ``events`` has happened in a run -
        in any order, on any workers - and only once per run. The job's payload maps each
        event's name to its payload (the first of that name in the run), so its step's
        payload schema can have one field per event. ``priority`` as for :meth:`subscribe`.

        It is decided in the ledger, in the transaction that writes the event completing the
        join, under the run's lock (see :mod:`celery_workflows.joins`): nothing polls, and
        branches that finish at the same instant on two workers take turns.
        """
        names = tuple(events) if not isinstance(events, str) else ()
        for event in names:
            registry.check_name("event", event)
        queue = enqueue if "." in enqueue else f"{self.name}.{enqueue}"
        what = f"join of {list(names)} -> {queue}"
        if len(names) < 2 or len(set(names)) != len(names):
            raise ConfigurationError(
                f"{what}: a join waits for two or more different events, got {events!r}"
            )
        sub = Subscription(
            name=name or f"{self.name}:{'+'.join(names)}->{queue}",
            event=names[0],
            queue=queue,
            priority=priorities.check(what, priority),
            all_of=names,
        )
        registry.register_subscription(sub)
        return sub

    def on(
        self,
        event: str,
        *,
        when: Callable[[Event], bool] | None = None,
        lifecycle: Lifecycle | None = None,
        emits: Sequence[str] = (),
    ) -> Callable[[Callable[[JobContext[R], Event], Any]], Callable[[JobContext[R], Event], Any]]:
        """Handler-style subscription: run ``handler(ctx, event)`` for each ``event``.

        The handler is a queue worker of its own (``on_<event>_<function>``), so a side effect
        that fails is retried and dead-lettered like any step.
        """

        def decorate(
            handler: Callable[[JobContext[R], Event], Any],
        ) -> Callable[[JobContext[R], Event], Any]:
            queue_name = f"on_{event}_{getattr(handler, '__name__', 'handler')}"[:100]

            def run(ctx: JobContext[R], job: Job[Any]) -> Any:
                return handler(ctx, Event.from_json(job.payload))

            self.queue_worker(
                queue_name, handler.__doc__ or f"on {event}", lifecycle=lifecycle, emits=emits
            )(run)
            sub = Subscription(
                name=f"{self.name}:{event}->{self.name}.{queue_name}",
                event=event,
                queue=f"{self.name}.{queue_name}",
                when=when,
                delivers_envelope=True,
            )
            registry.register_subscription(sub)
            return handler

        return decorate

    def emit(
        self,
        name: str,
        payload: Any,
        *,
        correlation_id: str | None = None,
        trace_id: str | None = None,
        delay: float | timedelta | None = None,
        eta: datetime | None = None,
        deadline: timedelta | datetime | None = None,
        priority: int | None = None,
    ) -> Event:
        """Emit ``name`` from ordinary code (a view, a signal handler) to start or advance a
        workflow. Written in the current transaction; subscribers' jobs are published only if
        it commits. ``correlation_id`` joins an existing workflow; omitted, a new one starts.
        ``delay``/``eta`` start it later: the event is recorded now, its jobs wait in the ledger
        until then. ``deadline`` bounds the run it starts (default: the service's).
        ``priority`` (0-9, higher first) is that of the jobs it starts, and of their later
        steps (see :mod:`celery_workflows.priorities`)."""
        return emit(
            name,
            payload,
            correlation_id=correlation_id,
            trace_id=trace_id,
            source=self.name,
            delay=delay,
            eta=eta,
            deadline=deadline,
            priority=priority,
        )

    def _make_task(self, spec: QueueSpec) -> Any:
        def run_job(*args: Any, **kwargs: Any) -> None:
            run_message(spec, args, kwargs)

        # Celery compiles a signature check from the function's name: it must be an identifier
        # (queue names may hold '-')
        run_job.__name__ = run_job.__qualname__ = spec.name.replace("-", "_")
        run_job.__doc__ = spec.description
        return self.celery_app.task(
            name=spec.task_name,
            ignore_result=True,
            acks_late=False,
            typing=False,
            shared=False,
            Request="celery_workflows.lost:LeaseReleasingRequest",
        )(run_job)

    def queue(self, name: str) -> QueueSpec:
        try:
            return self._queues[name]
        except KeyError:
            raise registry.unknown_queue(f"{self.name}.{name}") from None

    def enqueue(
        self,
        queue: str,
        payload: Any,
        *,
        delay: float | timedelta | None = None,
        eta: datetime | None = None,
        idempotency_key: str | None = None,
        priority: int | None = None,
        correlation_id: str | None = None,
        deadline: timedelta | datetime | None = None,
    ) -> EnqueueResult:
        """Write a job to the ledger and publish it once the current transaction commits.

        ``delay`` (seconds or timedelta) or ``eta`` (aware datetime) postpone it; jobs due more
        than a minute out wait in the ledger and are published when due. ``idempotency_key``
        makes enqueueing the same logical job twice return the first job (``created=False``).
        ``priority`` (0-9, higher first; see :mod:`celery_workflows.priorities`) orders
        waiting jobs, and the run's later steps inherit it.
        ``deadline`` (a duration, or an aware datetime) bounds the run this job starts,
        overriding the service's.
        """
        spec = self.queue(queue)
        body = spec.validate_payload(payload)
        available_at = _available_at(spec, delay, eta)
        _check_options(spec, priority, idempotency_key)
        store = get_store()
        with telemetry.producer_span(f"enqueue {spec.qualified_name}") as traceparent:
            job = prepare(
                spec,
                body,
                available_at=available_at,
                correlation_id=correlation_id or new_id(),
                idempotency_key=idempotency_key,
                priority=priority,
                deadline=deadline,
                trace_id=traceparent or "",
            )
        if correlation_id is not None or self.on_duplicate_key == "allow" or job.starts is None:
            result = store.insert_job(job)
            after_insert(store, spec, job, result)
            return result
        with store.atomic():
            found = open_run(store, job.starts)
            if found is not None:
                return EnqueueResult(found[1], False, found[0])
            result = store.insert_job(job)
            after_insert(store, spec, job, result)
        return result

    def enqueue_many(
        self,
        queue: str,
        payloads: Iterable[Any],
        *,
        delay: float | timedelta | None = None,
        eta: datetime | None = None,
        priority: int | None = None,
        idempotency_keys: Sequence[str] | None = None,
    ) -> list[EnqueueResult]:
        """Enqueue one job per payload - each starting its own workflow - with one INSERT, and
        publish their notices over one broker connection once the transaction commits.

        Every payload is validated before anything is written: one bad payload raises and no
        job is enqueued. ``idempotency_keys``, if given, has one key per payload (as
        ``enqueue(idempotency_key=...)``). Results are in the order of ``payloads``.
        """
        items = list(payloads)
        keys = list(idempotency_keys) if idempotency_keys is not None else [None] * len(items)
        if len(keys) != len(items):
            raise ConfigurationError(
                f"queue {self.name}.{queue}: {len(keys)} idempotency keys for {len(items)} payloads"
            )
        spec = self.queue(queue)
        bodies = [spec.validate_payload(p) for p in items]
        available_at = _available_at(spec, delay, eta)
        _check_options(spec, priority, *keys)
        jobs = [
            prepare(
                spec,
                body,
                available_at=available_at,
                correlation_id=new_id(),
                idempotency_key=key,
                priority=priority,
                trace_id=telemetry.new_traceparent(f"enqueue {spec.qualified_name}"),
            )
            for body, key in zip(bodies, keys, strict=True)
        ]
        store = get_store()
        if self.on_duplicate_key != "allow" and self.business_key is not None:
            # each start is checked against the runs open for its key, in one transaction
            with store.atomic():
                return [
                    self.enqueue(
                        queue, body, delay=delay, eta=eta, idempotency_key=key, priority=priority
                    )
                    for body, key in zip(bodies, keys, strict=True)
                ]
        results = store.insert_jobs(jobs)
        after_insert_many(store, spec, jobs, results)
        return results


def _check_deadline(what: str, deadline: Any) -> None:
    if deadline is None:
        return
    if isinstance(deadline, timedelta) and deadline.total_seconds() > 0:
        return
    if isinstance(deadline, datetime) and deadline.tzinfo is not None:
        return
    raise ConfigurationError(
        f"{what}: deadline must be a positive timedelta or an aware datetime, got {deadline!r}"
    )


def _check_options(spec: QueueSpec, priority: int | None, *idempotency_keys: str | None) -> None:
    priorities.check(f"queue {spec.qualified_name}", priority)
    for key in idempotency_keys:
        if key is not None and not (isinstance(key, str) and 0 < len(key) <= 200):
            raise ConfigurationError(
                f"queue {spec.qualified_name}: idempotency_key must be 1-200 characters"
            )


def emit(
    name: str,
    payload: Any,
    *,
    correlation_id: str | None = None,
    trace_id: str | None = None,
    source: str = "app",
    delay: float | timedelta | None = None,
    eta: datetime | None = None,
    deadline: timedelta | datetime | None = None,
    priority: int | None = None,
) -> Event:
    """Module-level :meth:`WorkflowService.emit`, for code that has no service at hand."""
    priorities.check(f"event {name!r}", priority)
    with telemetry.producer_span(f"emit {name}", event=name) as traceparent:
        event = new_event(
            name,
            payload,
            source=source,
            correlation_id=correlation_id,
            causation_id=None,
            trace_id=trace_id or traceparent,
        )
    later = None if delay is None and eta is None else start_time(f"event {name!r}", delay, eta)
    store = get_store()
    starts = run_start_for(event, deadline)
    if correlation_id is not None:
        with store.atomic():
            # a run waiting for this very event from outside goes on (ctx.wait_for_event)
            store.close_gate(correlation_id, source, "arrive", f"{name} arrived", awaits=name)
            write_and_publish(store, [event], starts, later, priority)
        return event
    if _duplicates_allowed(starts):
        write_and_publish(store, [event], starts, later, priority)
        return event
    with store.atomic():
        found = open_run(store, starts)
        if found is not None:
            return dataclasses.replace(event, correlation_id=found[0])
        write_and_publish(store, [event], starts, later, priority)
    return event


def _duplicates_allowed(starts: RunStart) -> bool:
    owner = registry.services().get(starts.name)
    return owner is None or owner.on_duplicate_key == "allow" or not starts.business_key


def open_run(store: Store, starts: RunStart) -> tuple[str, str] | None:
    """For a service that does not allow two open runs of one business key: the open run of
    ``starts``' key (``reuse``: returned; ``refuse``: :class:`RunAlreadyOpenError`), or None
    if there is none - with the key held until the caller's transaction ends, so concurrent
    starts of one key take turns."""
    if _duplicates_allowed(starts):
        return None
    found = store.open_run_for_key(starts.name, starts.business_key)
    owner = registry.services()[starts.name]
    if found is not None and owner.on_duplicate_key == "refuse":
        raise RunAlreadyOpenError(
            f"service {starts.name}: run {found[0]} with business key "
            f"{starts.business_key!r} is still open (on_duplicate_key='refuse')",
            correlation_id=found[0],
            business_key=starts.business_key,
        )
    return found


def _available_at(
    spec: QueueSpec, delay: float | timedelta | None, eta: datetime | None
) -> datetime:
    return start_time(f"queue {spec.qualified_name}", delay, eta)


def window_seconds(what: str, name: str, value: float | timedelta | None) -> float:
    """A debounce or throttle window in seconds (0: none), or a clear error."""
    if value is None:
        return 0.0
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise ConfigurationError(f"{what}: {name} must be a number of seconds > 0, got {value!r}")
    return float(seconds)
