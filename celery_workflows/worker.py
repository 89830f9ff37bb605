"""A queue worker: one business step, run as its own Celery task on its own queue.

The Celery message says only "job X is ready for attempt N". The worker claims that attempt in
the ledger (one conditional UPDATE), so a duplicated, stale or replayed message finds nothing to
claim and is dropped; the ledger's attempt counter is the only count that matters. The handler
then runs under a lease alarm, and its outcome is written in one fenced UPDATE.
"""

from __future__ import annotations

import json
import logging
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from . import signals
from .clock import utcnow
from .context import Job, JobContext
from .errors import (
    DeadLetterRequested,
    FatalJobError,
    JobFinished,
    LeaseExpired,
    NonRetryableError,
    PayloadError,
    RetryRequested,
)
from .events import Event, announce, check_emits, new_event, plan, publish_created
from .lease import LeaseAlarm, new_lease_token, worker_name
from .lifecycle import Lifecycle, compute_backoff
from .store import (
    AttemptOutcome,
    AttemptRecord,
    ClaimedJob,
    Dispatch,
    NewJob,
    Outbox,
    get_store,
)
from .subscriptions import SubscriptionError

if TYPE_CHECKING:
    from celery import Task

    from .service import WorkflowService

logger = logging.getLogger("celery_workflows.worker")

#: retries due within this many seconds are published at once with a countdown; later ones stay
#: in the ledger and the sweeper publishes them when due (never parked in the broker for long,
#: which on Redis/SQS would outlive the broker's visibility timeout and run twice)
PUBLISH_HORIZON_SECONDS = 60.0

Handler = Callable[[JobContext[Any], Job[Any]], Any]


@dataclass(eq=False)
class QueueWorker:
    """A declared queue: its schema, lifecycle and handler, and the Celery task that runs it."""

    service: WorkflowService[Any]
    name: str
    description: str
    payload_schema: type[BaseModel] | None
    lifecycle: Lifecycle
    handler: Handler
    #: event names this step may emit (documents the graph; emitting others is an error)
    emits: tuple[str, ...] = ()
    #: when set, a successful result is emitted as this event, with the result as payload
    result_event: str | None = None
    task: Task[Any, Any] | None = None

    @property
    def qualified_name(self) -> str:
        """``service.queue``: the ledger's queue name and the Celery queue to consume."""
        return f"{self.service.name}.{self.name}"

    @property
    def graph_emits(self) -> tuple[str, ...]:
        """Every event this step can emit, for the graph: declared ones and the result event."""
        extra = (
            (self.result_event,)
            if self.result_event and self.result_event not in self.emits
            else ()
        )
        return (*self.emits, *extra)

    @property
    def task_name(self) -> str:
        return f"celery_workflows.{self.qualified_name}"

    def new_job(
        self,
        payload: Any,
        *,
        available_at: datetime,
        correlation_id: str,
        published: bool,
        **options: Any,
    ) -> NewJob:
        """A ledger row for a fresh job on this queue (``options``: the other NewJob fields)."""
        return NewJob(
            id=uuid.uuid4().hex,
            service=self.service.name,
            queue=self.qualified_name,
            payload=payload,
            max_attempts=self.lifecycle.max_attempts,
            available_at=available_at,
            correlation_id=correlation_id,
            published=published,
            **options,
        )

    # -- publishing -------------------------------------------------------------------------

    def publish(self, dispatch: Dispatch) -> None:
        """Send the "ready for attempt N" notice to this queue."""
        assert self.task is not None
        options: dict[str, Any] = {"queue": self.qualified_name}
        if dispatch.countdown > 0:
            options["countdown"] = dispatch.countdown
        if dispatch.priority is not None:
            options["priority"] = dispatch.priority
        self.task.apply_async(args=(dispatch.job_id, dispatch.attempt), **options)

    # -- running ----------------------------------------------------------------------------

    def run_message(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Entry point of the Celery task. Malformed messages go to the DLQ with the reason."""
        if (
            len(args) != 2
            or kwargs
            or not isinstance(args[0], str)
            or not isinstance(args[1], int)
            or isinstance(args[1], bool)
        ):
            reason = "malformed message: expected args [job_id: str, attempt: int] and no kwargs"
            job_id = get_store().record_unroutable(
                self.qualified_name, {"args": list(args), "kwargs": kwargs}, reason
            )
            logger.error("%s: %s (dead-lettered as job %s)", self.qualified_name, reason, job_id)
            return
        self.run(args[0], args[1])

    def run(self, job_id: str, attempt: int) -> None:
        store = get_store()
        token = new_lease_token()
        claimed = store.claim(
            job_id, attempt, token, worker_name(), self.lifecycle.visibility_timeout
        )
        if claimed is None:
            logger.debug(
                "%s: job %s attempt %s is not claimable (done, running elsewhere or stale notice)",
                self.qualified_name,
                job_id,
                attempt,
            )
            return
        _Attempt(self, claimed).run()


def finish_if_done(sender: Any, correlation_id: str, last_job_id: str) -> None:
    """A job ended without starting another: if nothing of its workflow is pending any more,
    settle the run and send ``workflow_finished`` (exactly once per run)."""
    status = get_store().finish_workflow(correlation_id, last_job_id)
    if status is not None:
        signals.workflow_finished.send(
            sender=sender, correlation_id=correlation_id, status=status, last_job_id=last_job_id
        )


@dataclass(frozen=True)
class _Success:
    result: Any


class _Attempt:
    """One claimed attempt: run the handler, then record exactly one outcome under the lease."""

    def __init__(self, worker: QueueWorker, claimed: ClaimedJob) -> None:
        self.worker = worker
        self.claimed = claimed
        self.store = get_store()
        #: events the handler emitted whose enclosing transaction (if any) committed
        self.emitted: list[Event] = []
        self.log = logging.LoggerAdapter(
            logging.getLogger(f"celery_workflows.queue.{worker.qualified_name}"),
            {
                "job_id": claimed.id,
                "attempt": claimed.attempt,
                "queue": worker.qualified_name,
                "correlation_id": claimed.correlation_id,
            },
        )

    def run(self) -> None:
        try:
            payload = self._validated_payload()
        except ValidationError as exc:
            self._dead_letter(
                AttemptOutcome.INVALID_PAYLOAD, f"payload failed its schema: {exc}", exc
            )
            return
        try:
            with LeaseAlarm(self.worker.lifecycle.visibility_timeout) as alarm:
                outcome = self._call_handler(payload, alarm)
        except LeaseExpired as exc:  # fired between the handler's return and disarming
            outcome = exc
        self._settle(outcome)

    def _call_handler(self, payload: Any, alarm: LeaseAlarm) -> _Success | BaseException:
        """Run the handler; return its result, or the exception that ended it."""
        lifecycle = self.worker.lifecycle
        ctx: JobContext[Any] = JobContext(
            job=self._job(payload),
            claimed=self.claimed,
            store=self.store,
            resources=self.worker.service.resources,
            logger=self.log,
            on_lease_extended=alarm.reset,
            visibility_timeout=lifecycle.visibility_timeout,
            emit=self._emit,
        )
        try:
            return _Success(self.worker.handler(ctx, ctx.job))
        except JobFinished as done:
            return _Success(done.result)
        except (Exception, LeaseExpired) as exc:
            return exc

    def _settle(self, outcome: _Success | BaseException) -> None:
        """Record the one outcome of this attempt (outside the lease alarm)."""
        match outcome:
            case _Success(result=result):
                self._succeeded(result)
            case RetryRequested(reason=reason, delay_seconds=delay):
                self._failed(AttemptOutcome.RETRY_REQUESTED, reason, None, delay)
            case FatalJobError(reason=reason):
                self._dead_letter(AttemptOutcome.FATAL, reason, None)
            case DeadLetterRequested(reason=reason):
                self._dead_letter(AttemptOutcome.DEAD_LETTERED, reason, None)
            case LeaseExpired():
                self._failed(AttemptOutcome.LEASE_EXPIRED, str(outcome), outcome, None)
            case _:
                error = f"{type(outcome).__name__}: {outcome}"
                if isinstance(outcome, (NonRetryableError, *self.worker.lifecycle.non_retryable)):
                    self._dead_letter(AttemptOutcome.FATAL, f"non-retryable {error}", outcome)
                else:
                    self._failed(AttemptOutcome.FAILED, error, outcome, None)

    def _validated_payload(self) -> Any:
        schema = self.worker.payload_schema
        if schema is None:
            return self.claimed.payload
        return schema.model_validate(self.claimed.payload)

    def _job(self, payload: Any) -> Job[Any]:
        c = self.claimed
        return Job(
            id=c.id,
            queue=self.worker.qualified_name,
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
            worker=worker_name(),
            started_at=self.claimed.started_at,
            finished_at=utcnow(),
            outcome=outcome,
            error=error,
            traceback=tb,
        )

    def _emit(self, name: str, payload: Any) -> Event:
        check_emits(self.worker.qualified_name, self.worker.emits, name)
        c = self.claimed
        event = new_event(
            name,
            payload,
            source=self.worker.qualified_name,
            correlation_id=c.correlation_id,
            causation_id=c.id,
            trace_id=c.trace_id,
        )
        # inside the handler's own transaction.atomic(), the event counts only if it commits
        self.store.on_commit(lambda: self.emitted.append(event))
        return event

    def _fenced(self) -> None:
        c = self.claimed
        self.log.warning(
            "late result of job %s attempt %s rejected: its lease expired and the job was "
            "taken over",
            c.id,
            c.attempt,
        )
        signals.job_fenced.send(
            sender=self.worker, job_id=c.id, queue=self.worker.qualified_name, attempt=c.attempt
        )

    def _outbox(self, result_payload: Any = None, succeeded: bool = False) -> Outbox:
        events = list(self.emitted)
        if succeeded and self.worker.result_event is not None:
            events.append(self._result_event(result_payload))
        return plan(events)

    def _result_event(self, result: Any) -> Event:
        c = self.claimed
        assert self.worker.result_event is not None
        return new_event(
            self.worker.result_event,
            result,
            source=self.worker.qualified_name,
            correlation_id=c.correlation_id,
            causation_id=c.id,
            trace_id=c.trace_id,
        )

    def _after_write(self, outbox: Outbox, created: list[NewJob]) -> None:
        publish_created(created)
        announce(outbox.events)

    def _succeeded(self, result: Any) -> None:
        try:
            json.dumps(result, allow_nan=False)
        except (TypeError, ValueError) as exc:
            self._dead_letter(
                AttemptOutcome.FATAL,
                f"handler returned a result that is not JSON-serialisable: {exc}",
                exc,
            )
            return
        try:
            outbox = self._outbox(result, succeeded=True)
        except (SubscriptionError, PayloadError) as exc:
            self._failed(AttemptOutcome.FAILED, str(exc), exc, None)
            return
        record = self._record(AttemptOutcome.SUCCEEDED, "", None)
        created = self.store.complete(self.claimed, result, record, outbox)
        if created is None:
            self._fenced()
            return
        self._after_write(outbox, created)
        c = self.claimed
        signals.job_succeeded.send(
            sender=self.worker,
            job_id=c.id,
            queue=self.worker.qualified_name,
            attempt=c.attempt,
            result=result,
        )
        if not created:
            self._maybe_finish_workflow()

    def _failed(
        self,
        outcome: AttemptOutcome,
        error: str,
        exc: BaseException | None,
        delay_seconds: float | None,
    ) -> None:
        c = self.claimed
        if c.attempt >= c.max_attempts:
            self._dead_letter(
                outcome, f"gave up after {c.attempt} attempt(s); last error: {error}", exc
            )
            return
        outbox = self._safe_outbox()
        record = self._record(outcome, error, exc)
        if delay_seconds is None:
            delay_seconds = compute_backoff(c.attempt, self.worker.lifecycle.retry)
        available_at = utcnow() + timedelta(seconds=delay_seconds)
        publish_now = delay_seconds <= PUBLISH_HORIZON_SECONDS
        created = self.store.retry_later(c, record, available_at, publish_now, outbox)
        if created is None:
            self._fenced()
            return
        self._after_write(outbox, created)
        self.log.info("attempt %s failed (%s); retrying in %.2fs", c.attempt, error, delay_seconds)
        if publish_now:
            self.worker.publish(
                Dispatch(c.id, self.worker.qualified_name, c.attempt + 1, c.priority, delay_seconds)
            )
        signals.job_failed.send(
            sender=self.worker,
            job_id=c.id,
            queue=self.worker.qualified_name,
            attempt=c.attempt,
            error=error,
            retry_in=delay_seconds,
        )

    def _dead_letter(self, outcome: AttemptOutcome, reason: str, exc: BaseException | None) -> None:
        c = self.claimed
        outbox = self._safe_outbox()
        record = self._record(outcome, reason, exc)
        created = self.store.dead_letter(c, record, reason, outbox)
        if created is None:
            self._fenced()
            return
        self._after_write(outbox, created)
        self.log.error("job dead-lettered: %s", reason)
        signals.job_dead_lettered.send(
            sender=self.worker,
            job_id=c.id,
            queue=self.worker.qualified_name,
            attempt=c.attempt,
            reason=reason,
        )
        if not created:
            self._maybe_finish_workflow()

    def _maybe_finish_workflow(self) -> None:
        finish_if_done(self.worker, self.claimed.correlation_id, self.claimed.id)

    def _safe_outbox(self) -> Outbox:
        """Events emitted before a failure still go out (compensation); a subscription whose
        map/when breaks must not hide the original failure, so it is logged and skipped."""
        try:
            return self._outbox()
        except (SubscriptionError, PayloadError):
            self.log.exception("events of a failed attempt could not be planned; not emitted")
            return Outbox()
