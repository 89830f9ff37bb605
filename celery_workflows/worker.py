"""Running a queue's jobs: the Celery task body, the claim, the handler, the one outcome.

The Celery message says only "job X is ready for attempt N". The worker claims that attempt in
the ledger (one conditional UPDATE), so a duplicated, stale or replayed message finds nothing to
claim and is dropped; the ledger's attempt counter is the only count that matters. The handler
then runs under a lease alarm, and its outcome - with the events it emitted and the jobs they
start - is written in one fenced write, which also settles the workflow run when nothing of it
is pending any more.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from . import control, coroutines, holding, registry, signals, telemetry
from .approvals import Gate
from .children import new_child, notify_parent
from .clock import utcnow
from .compensation import undo_planner
from .context import Job, JobContext
from .continuation import claimed, lease_one, max_continuations
from .errors import (
    ConfigurationError,
    DeadLetterRequested,
    FatalJobError,
    JobFinished,
    LeaseExpired,
    LedgerUnavailableError,
    LedgerWriteError,
    NonRetryableError,
    PayloadError,
    RetryRequested,
    StepTransactionError,
    SubscriptionError,
)
from .events import announce, check_emits, new_event, plan, publish_created
from .gathers import with_branches
from .intake import notice_problem, stored_body
from .lease import LeaseAlarm, alarm_scope, new_lease_token, worker_name
from .lifecycle import after_failure
from .limits import Held
from .logs import LogContext, attempt_context
from .middleware import AttemptInfo, DeadLetterInfo
from .payloads import storable_text, to_json
from .queues import QueueSpec
from .records import (
    AttemptOutcome,
    AttemptRecord,
    ClaimedJob,
    Dispatch,
    Event,
    JobStatus,
    NewJob,
    Outbox,
    Outcome,
    Recorded,
)
from .store import Store, UndoPlanner, get_store

logger = logging.getLogger("celery_workflows.worker")


def run_message(spec: QueueSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Body of a queue's Celery task. A malformed notice goes to the DLQ with the reason (the
    toolkit's consumer refuses those before they get here; this covers other consumers)."""
    store = get_store()
    problem = notice_problem(args, kwargs)
    if problem is not None:
        body = {"args": list(args), "kwargs": kwargs}
        dead_letter_message(store, spec.qualified_name, {"body": stored_body(body)}, problem)
        return
    run(spec, store, args[0], args[1])


def dead_letter_message(store: Store, queue: str, body: Any, reason: str) -> str:
    """Record a message no job could be read from as a dead letter of ``queue``."""
    job_id = store.record_unroutable(queue, body, reason)
    logger.error("%s: %s (dead-lettered as job %s)", queue, reason, job_id)
    registry.hooks().on_dead_letter(DeadLetterInfo(job_id, queue, reason, attempt=1))
    return job_id


def run(spec: QueueSpec, store: Store, job_id: str, attempt: int) -> None:
    """Claim attempt ``attempt`` of ``job_id`` and run it; drop the notice if not claimable."""
    try:
        claimed = store.claim(
            job_id,
            attempt,
            new_lease_token(),
            worker_name(),
            spec.lifecycle.visibility_timeout,
            spec.limits,
            spec.qualified_name,
        )
    except LedgerUnavailableError:
        # the notice was consumed: send it again for later, so the job does not wait for the
        # sweeper's re-publish while the database comes back
        logger.warning(
            "%s: ledger unavailable; notice for job %s re-sent", spec.qualified_name, job_id
        )
        spec.publish(Dispatch(job_id, spec.qualified_name, attempt, None, CLAIM_RETRY_SECONDS))
        return
    if isinstance(claimed, Held):
        holding.on_held(spec, job_id, attempt, claimed)
    elif claimed is not None:
        attempt_: Attempt | None = Attempt(spec, claimed, store)
        with alarm_scope():
            while attempt_ is not None:  # local continuations: the next steps, run right here
                attempt_ = attempt_.run()
    elif control.is_paused(spec.qualified_name, store, refresh=True):
        # the claim refuses jobs of a paused queue: the job waits in the ledger and is
        # published again when the queue is resumed
        store.park(job_id, attempt)
        logger.info("%s is paused: job %s waits in the ledger", spec.qualified_name, job_id)
    elif store.knows_job(job_id):
        logger.debug(
            "%s: job %s attempt %s is not claimable (done, running elsewhere or stale notice)",
            spec.qualified_name,
            job_id,
            attempt,
        )
    else:
        DROPPED.count += 1
        logger.warning(
            "%s: dropped a notice for job %s, which the ledger does not know "
            "(%d such notice(s) in this process)",
            spec.qualified_name,
            job_id,
            DROPPED.count,
        )
        signals.notice_dropped.send(
            sender=spec.qualified_name, queue=spec.qualified_name, job_id=job_id, attempt=attempt
        )


class _Dropped:
    """How many notices for unknown jobs this process dropped (shown in its log lines)."""

    count = 0


DROPPED = _Dropped()
#: seconds before a notice that could not be claimed (database unreachable) is delivered again
CLAIM_RETRY_SECONDS = 5.0


def follow_up(
    store: Store,
    spec: QueueSpec,
    info: AttemptInfo,
    outcome: Outcome,
    recorded: Recorded,
    priority: int | None,
    log: logging.Logger | logging.LoggerAdapter[logging.Logger],
    in_sweeper: bool = False,
    release: bool = True,
) -> None:
    """What follows a recorded outcome, wherever it was recorded (a worker, or the sweeper
    for an expired lease): notices for the jobs it created and for its retry, the middleware
    hooks, and ``workflow_finished`` when it settled the run."""
    publish_created(recorded.created, store)
    if release:  # the slot this attempt held, for a job its limits held back
        holding.release(store, spec)
    control.note_outcome(store, spec, outcome, save_later=not in_sweeper)
    telemetry.record_outcome(spec.qualified_name, outcome)
    if recorded.retry_cancelled:
        log.warning(
            "job %s attempt %s failed (%s); not retried: its run was stopped",
            info.job_id,
            info.attempt,
            outcome.attempt.error,
        )
    elif outcome.status == JobStatus.QUEUED:
        log.warning(
            "job %s attempt %s failed (%s); retrying in %.2fs",
            info.job_id,
            info.attempt,
            outcome.attempt.error,
            outcome.retry_in_seconds,
        )
        if outcome.published:
            spec.publish(
                Dispatch(
                    info.job_id, info.queue, info.attempt + 1, priority, outcome.retry_in_seconds
                )
            )
    if outcome.status == JobStatus.SUCCEEDED:
        log.info("job %s attempt %s succeeded", info.job_id, info.attempt)
    hooks = registry.hooks()
    hooks.after_outcome(info, outcome)
    if outcome.status == JobStatus.DEAD:
        log.error("job %s dead-lettered: %s", info.job_id, outcome.reason)
        hooks.on_dead_letter(
            DeadLetterInfo(
                info.job_id, info.queue, outcome.reason, info.attempt, info.correlation_id
            )
        )
    if recorded.run_status is not None:
        signals.workflow_finished.send(
            sender=info.queue,
            correlation_id=info.correlation_id,
            status=str(recorded.run_status),
            last_job_id=info.job_id,
        )
    if recorded.parent is not None:  # a child run ended: its parent goes on
        try:
            notify_parent(info.correlation_id, recorded.parent)
        except Exception:
            log.exception(
                "parent run %s not told of its child's end: the sweeper tells it", recorded.parent
            )


@dataclass(frozen=True)
class _Success:
    result: Any


@dataclass(frozen=True)
class _Written:
    """An outcome write: what was written, the job leased to run next here, and the fence's
    answer (None: refused)."""

    outcome: Outcome
    outbox: Outbox
    leased: NewJob | None
    recorded: Recorded | None
    limit: int


class _RolledBack(Exception):
    """Leaves an atomic step's transaction, rolling it back; carries the failure to record
    on its own (None: the fence refused the outcome - nothing to record)."""

    def __init__(self, judged: tuple[Outcome, Outbox] | None) -> None:
        super().__init__("atomic step rolled back")
        self.judged = judged


class _Emitted:
    """What ``ctx.emit()`` registers to run when the handler's enclosing block commits."""

    def __init__(self, attempt: Attempt, event: Event) -> None:
        self.attempt = attempt
        self.event = event

    def __call__(self) -> None:
        self.attempt.emitted.append(self.event)


def _is_emitted(callback: object) -> bool:
    return isinstance(callback, _Emitted)


class Attempt:
    """One claimed attempt: run the handler, then record exactly one outcome under the lease."""

    def __init__(
        self,
        spec: QueueSpec,
        claimed: ClaimedJob,
        store: Store,
        depth: int = 0,
        limit: int | None = None,
    ) -> None:
        self.spec = spec
        self.claimed = claimed
        self.store = store
        #: how many steps ran in this process in a row before this one (local continuations)
        self.depth = depth
        #: how many may (``workflows_local_continuations`` of the app whose task runs them;
        #: read once per task, not per step)
        if limit is None:
            assert spec.task is not None
            limit = max_continuations(spec.task.app.conf)
        self.limit = limit
        #: events the handler emitted whose enclosing transaction (if any) committed
        self.emitted: list[Event] = []
        #: the approval gate the handler asked for (opened with a successful outcome)
        self.gate: Gate | None = None
        #: the items the handler mapped (branches started with a successful outcome)
        self.mapped: list[Any] | None = None
        #: the child runs the handler started (written with a successful outcome)
        self.children: list[Outbox] = []
        self.info = AttemptInfo(
            job_id=claimed.id,
            queue=spec.qualified_name,
            attempt=claimed.attempt,
            max_attempts=claimed.max_attempts,
            correlation_id=claimed.correlation_id,
            trace_id=claimed.trace_id,
            started_at=claimed.started_at,
            worker=worker_name(),
        )
        #: its records carry the attempt's fields (see :mod:`celery_workflows.logs`)
        self.log = logging.getLogger(f"celery_workflows.queue.{spec.qualified_name}")

    def run(self) -> Attempt | None:
        """Run the handler and record its outcome; return the attempt of the job this process
        continues with (see :mod:`celery_workflows.continuation`), if any."""
        c = self.claimed
        context = LogContext(c.correlation_id, c.business_key, c.queue, c.id, c.attempt)
        with attempt_context(context), telemetry.attempt_span(c) as span:
            self.span = span
            telemetry.record_start(c)
            return self._run()

    def _run(self) -> Attempt | None:
        registry.hooks().before_attempt(self.info)
        newer = self.store.newer_job(self.claimed) if self.claimed.coalesce_key else None
        if newer is not None:
            return self._write(self._superseded(newer))
        try:
            payload = self._validated_payload()
        except ValidationError as exc:
            error = f"payload failed its schema: {exc}"
            return self._write(
                self._failure(AttemptOutcome.INVALID_PAYLOAD, error, exc, give_up=True)
            )
        if self.spec.atomic:
            return self._run_atomic(payload)
        return self._write(self._outcome(self._handle(payload)))

    def _handle(self, payload: Any) -> _Success | BaseException:
        """The handler, under the lease alarm."""
        try:
            remaining = (self.claimed.lease_expires_at - utcnow()).total_seconds()
            with LeaseAlarm(remaining) as alarm:
                return self._call_handler(payload, alarm)
        except LeaseExpired as exc:  # fired between the handler's return and disarming
            return exc

    def _run_atomic(self, payload: Any) -> Attempt | None:
        """An atomic step: the handler and the successful outcome's write in one transaction.

        Anything but a recorded success rolls the handler's writes back - its exception, a
        lost lease, a result that cannot be recorded, a fenced write (a newer attempt owns the
        job), a database error - and a failure is then recorded on its own, without the
        events the attempt emitted: they were part of what was rolled back. A worker killed
        mid-handler takes its open transaction with it (the database rolls it back)."""
        try:
            with self.store.atomic_step():
                ended = self._handle(payload)
                if not isinstance(ended, _Success):
                    raise _RolledBack(self._outcome(ended))
                # events emitted in the handler's blocks that were not rolled back
                self.store.run_on_commit_now(_is_emitted)
                judged = self._outcome(ended)
                if judged[0].status != JobStatus.SUCCEEDED:
                    raise _RolledBack(judged)
                written = self._commit(judged, atomic=True)
                if written.recorded is None:
                    raise _RolledBack(None)
        except _RolledBack as rolled_back:
            self.emitted = []
            if rolled_back.judged is None:
                self._rejected()
                return None
            return self._write(rolled_back.judged)
        except StepTransactionError as exc:
            self.emitted = []
            error = f"the step's transaction was rolled back: {exc}"
            return self._write(self._failure(AttemptOutcome.FAILED, error, exc))
        return self._after(written)

    def _call_handler(self, payload: Any, alarm: LeaseAlarm) -> _Success | BaseException:
        """Run the handler; return its result, or the exception that ended it."""
        ctx: JobContext[Any] = JobContext(
            job=self._job(payload),
            claimed=self.claimed,
            store=self.store,
            resources=self.spec.resources,
            logger=self.log,
            on_lease_extended=alarm.reset,
            visibility_timeout=self.spec.lifecycle.visibility_timeout,
            emit=self._emit,
            open_gate=self._open_gate,
            start_map=self._start_map,
            start_child=self._start_child,
            atomic=self.spec.atomic,
        )
        try:
            result = self.spec.handler(ctx, ctx.job)
            if inspect.isawaitable(result):  # an async def handler
                result = coroutines.run(result)
            return _Success(result)
        except JobFinished as done:
            return _Success(done.result)
        except BaseException as exc:
            # whatever a handler raises is its attempt's failure, recorded now with its class
            # and traceback - SystemExit, KeyboardInterrupt and GeneratorExit included: left
            # to propagate they would end this pool process and leave the job to wait for
            # its lease; the lease's own LeaseExpired is judged as a lease expiry
            return exc

    def _outcome(self, ended: _Success | BaseException) -> tuple[Outcome, Outbox]:
        """Judge how the handler ended (outside the lease alarm)."""
        match ended:
            case _Success(result=result):
                return self._success(result)
            case RetryRequested(reason=reason, delay_seconds=delay):
                return self._failure(AttemptOutcome.RETRY_REQUESTED, reason, None, delay=delay)
            case FatalJobError(reason=reason):
                return self._failure(AttemptOutcome.FATAL, reason, None, give_up=True)
            case DeadLetterRequested(reason=reason):
                return self._failure(AttemptOutcome.DEAD_LETTERED, reason, None, give_up=True)
            case LeaseExpired():
                return self._failure(AttemptOutcome.LEASE_EXPIRED, str(ended), ended)
            case _:
                error = f"{type(ended).__name__}: {ended}"
                if isinstance(ended, (NonRetryableError, *self.spec.lifecycle.non_retryable)):
                    return self._failure(
                        AttemptOutcome.FATAL, f"non-retryable {error}", ended, give_up=True
                    )
                return self._failure(AttemptOutcome.FAILED, error, ended)

    def _success(self, result: Any) -> tuple[Outcome, Outbox]:
        try:
            to_json("handler result", result)
        except PayloadError as exc:
            return self._failure(
                AttemptOutcome.FATAL, f"cannot record the {exc}", exc, give_up=True
            )
        events = list(self.emitted)
        try:
            if self.spec.result_event is not None:
                events.append(self._new_event(self.spec.result_event, result))
            outbox = plan(events, priority=self.claimed.priority)
            if self.mapped is not None:
                assert self.spec.gather is not None
                outbox = with_branches(outbox, self.claimed, self.spec.gather, self.mapped)
        except (SubscriptionError, PayloadError) as exc:
            return self._failure(AttemptOutcome.FAILED, str(exc), exc)
        record = self._record(AttemptOutcome.SUCCEEDED, "", None)
        if self.gate is not None:
            outbox = dataclasses.replace(outbox, gate=self.gate.to_json(), children=self.children)
        return Outcome(JobStatus.SUCCEEDED, record, result=result), outbox

    def _start_map(self, items: Iterable[Any]) -> int:
        gather = self.spec.gather
        if gather is None:
            raise ConfigurationError(
                f"queue {self.spec.qualified_name}: ctx.map() needs "
                "gather=Gather(each=..., into=...) on its queue_worker"
            )
        if self.mapped is not None:
            raise ConfigurationError(
                f"queue {self.spec.qualified_name}: ctx.map() was already called in this attempt"
            )
        each = registry.get_queue(gather.each)
        self.mapped = [each.validate_payload(item) for item in items]
        return len(self.mapped)

    def _superseded(self, newer: str) -> tuple[Outcome, Outbox]:
        """A debounced job with a newer one of its subscription and key: done without running
        its handler (the newer job carries the latest event); nothing is emitted."""
        self.log.info("job %s superseded by job %s (debounce): not run", self.claimed.id, newer)
        record = self._record(AttemptOutcome.SUCCEEDED, "", None)
        result = {"superseded_by": newer}
        return Outcome(JobStatus.SUCCEEDED, record, result=result), Outbox()

    def _failure(
        self,
        kind: AttemptOutcome,
        error: str,
        exc: BaseException | None,
        *,
        give_up: bool = False,
        delay: float | None = None,
    ) -> tuple[Outcome, Outbox]:
        record = self._record(kind, error, exc)
        lifecycle = self.spec.lifecycle
        outcome = after_failure(
            record,
            self.claimed.max_attempts,
            lifecycle.retry,
            give_up=give_up,
            delay_seconds=delay,
            seed=self.claimed.id,
        )
        return outcome, self._failure_outbox()

    def _failure_outbox(self) -> Outbox:
        """Events emitted before a failure still go out (compensation); a subscription whose
        map/when breaks must not hide the original failure, so it is logged and skipped."""
        try:
            return plan(list(self.emitted), priority=self.claimed.priority)
        except (SubscriptionError, PayloadError):
            self.log.exception("events of a failed attempt could not be planned; not emitted")
            return Outbox()

    def _write(self, judged: tuple[Outcome, Outbox]) -> Attempt | None:
        """The one fenced write of this attempt, then what follows from it."""
        written = self._commit(judged)
        if written.recorded is None:
            self._rejected()
            return None
        return self._after(written)

    def _commit(self, judged: tuple[Outcome, Outbox], atomic: bool = False) -> _Written:
        """Write the outcome (inside an atomic step's transaction when ``atomic``)."""
        outcome, outbox = judged
        c = self.claimed
        limit = self.limit
        outbox, leased = lease_one(outbox, self.depth, limit, control.paused_queues(self.store))
        undo = undo_planner(self.spec.service)
        try:
            if atomic:  # no waiting out an outage: the transaction is lost with its connection
                recorded = self.store.record_outcome(c, outcome, outbox, undo)
            else:
                recorded = self._record_outcome(outcome, outbox, undo)
        except LedgerWriteError as exc:
            # the database refused this outcome (not a lost connection): record that instead,
            # so the job does not look like a lost worker and run again
            error = f"the attempt's outcome could not be written: {exc}"
            record = self._record(AttemptOutcome.FATAL, error, None)
            outcome = after_failure(record, c.max_attempts, self.spec.lifecycle.retry, give_up=True)
            if atomic:  # the handler's writes go with the refused outcome
                raise _RolledBack((outcome, Outbox())) from exc
            outbox, leased = Outbox(), None
            recorded = self.store.record_outcome(c, outcome, outbox, undo)
        return _Written(outcome, outbox, leased, recorded, limit)

    def _rejected(self) -> None:
        """The fence refused this attempt's outcome: a newer attempt owns the job."""
        c = self.claimed
        self.log.warning(
            "late result of job %s attempt %s rejected: its lease expired and the job was "
            "taken over",
            c.id,
            c.attempt,
        )
        registry.hooks().after_outcome(self.info, None)

    def _after(self, written: _Written) -> Attempt | None:
        """What follows a committed outcome: its notices, hooks and the next local step."""
        outcome, leased, recorded, limit = (
            written.outcome,
            written.leased,
            written.recorded,
            written.limit,
        )
        assert recorded is not None
        c = self.claimed
        telemetry.end_attempt(self.span, outcome)
        announce(written.outbox.events)
        # the slot this attempt frees goes to the best job its limits held back: run here,
        # with no broker hop, when this process may run one more job in a row
        hand_over = leased is None and self.depth < limit and holding.runs_here(self.spec)
        follow_up(
            self.store,
            self.spec,
            self.info,
            outcome,
            recorded,
            c.priority,
            self.log,
            release=not hand_over,
        )
        if hand_over:
            held = holding.take(self.store, self.spec)
            if held is None:
                return None
            return Attempt(self.spec, held, self.store, self.depth + 1, limit)
        if leased is None or leased.id not in {j.id for j in recorded.created}:
            return None
        return Attempt(
            registry.get_queue(leased.queue),
            claimed(leased, c.business_key),
            self.store,
            self.depth + 1,
            limit,
        )

    def _record_outcome(
        self, outcome: Outcome, outbox: Outbox, undo: UndoPlanner | None
    ) -> Recorded | None:
        """Write the outcome, waiting out a database outage while the lease lasts; past it the
        sweeper records the attempt as a lost lease."""
        while True:
            try:
                return self.store.record_outcome(self.claimed, outcome, outbox, undo)
            except LedgerUnavailableError:
                if utcnow() >= self.claimed.lease_expires_at:
                    raise
                self.log.warning("ledger unavailable; retrying the outcome write")

    def _validated_payload(self) -> Any:
        schema = self.spec.payload_schema
        if schema is None:
            return self.claimed.payload
        return schema.model_validate(self.claimed.payload)

    def _job(self, payload: Any) -> Job[Any]:
        c = self.claimed
        return Job(
            id=c.id,
            queue=c.queue,
            payload=payload,
            attempt=c.attempt,
            max_attempts=c.max_attempts,
            correlation_id=c.correlation_id,
            enqueued_at=c.created_at,
        )

    def _record(
        self, outcome: AttemptOutcome, error: str, exc: BaseException | None
    ) -> AttemptRecord:
        tb = "".join(traceback.format_exception(exc)) if exc is not None else ""
        return AttemptRecord(
            attempt=self.claimed.attempt,
            worker=self.info.worker,
            started_at=self.claimed.started_at,
            finished_at=utcnow(),
            outcome=outcome,
            error=storable_text(error),
            traceback=storable_text(tb),
        )

    def _new_event(self, name: str, payload: Any) -> Event:
        c = self.claimed
        with telemetry.producer_span(f"emit {name}", event=name) as traceparent:
            return new_event(
                name,
                payload,
                source=c.queue,
                correlation_id=c.correlation_id,
                causation_id=c.id,
                trace_id=traceparent or c.trace_id,
            )

    def _open_gate(self, gate: Gate) -> None:
        if self.gate is not None and self.gate != gate:
            raise ConfigurationError(
                f"queue {self.spec.qualified_name}: one attempt waits for one thing - a "
                "decision, an event or a child run - and it already waits"
            )
        self.gate = gate

    def _start_child(
        self, event: str, payload: Any, done_event: str, failed_event: str | None
    ) -> str:
        check_emits(self.spec.qualified_name, self.spec.emits, event)
        child, gate = new_child(
            self.claimed, self.spec.qualified_name, event, payload, done_event, failed_event
        )
        self._open_gate(gate)
        self.children.append(child)
        return child.events[0].correlation_id

    def _emit(self, name: str, payload: Any) -> Event:
        check_emits(self.spec.qualified_name, self.spec.emits, name)
        event = self._new_event(name, payload)
        # inside the handler's own transaction.atomic(), the event counts only if it commits
        self.store.on_commit(_Emitted(self, event))
        return event
