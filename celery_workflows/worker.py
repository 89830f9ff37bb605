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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from . import signals
from .context import Job, JobContext
from .errors import (
    DeadLetterRequested,
    FatalJobError,
    JobFinished,
    LeaseExpired,
    NonRetryableError,
    RetryRequested,
)
from .lease import LeaseAlarm, new_lease_token, worker_name
from .lifecycle import Lifecycle, compute_backoff
from .store import AttemptOutcome, AttemptRecord, ClaimedJob, Dispatch, get_store

if TYPE_CHECKING:
    from celery import Task

    from .service import WorkflowService

logger = logging.getLogger("celery_workflows.worker")

#: retries due within this many seconds are published at once with a countdown; later ones stay
#: in the ledger and the sweeper publishes them when due (never parked in the broker for long,
#: which on Redis/SQS would outlive the broker's visibility timeout and run twice)
PUBLISH_HORIZON_SECONDS = 60.0

Handler = Callable[[JobContext[Any], Job[Any]], Any]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(eq=False)
class QueueWorker:
    """A declared queue: its schema, lifecycle and handler, and the Celery task that runs it."""

    service: WorkflowService[Any]
    name: str
    description: str
    payload_schema: type[BaseModel] | None
    lifecycle: Lifecycle
    handler: Handler
    task: Task[Any, Any] | None = None

    @property
    def qualified_name(self) -> str:
        """``service.queue``: the ledger's queue name and the Celery queue to consume."""
        return f"{self.service.name}.{self.name}"

    @property
    def task_name(self) -> str:
        return f"celery_workflows.{self.qualified_name}"

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


@dataclass(frozen=True)
class _Success:
    result: Any


class _Attempt:
    """One claimed attempt: run the handler, then record exactly one outcome under the lease."""

    def __init__(self, worker: QueueWorker, claimed: ClaimedJob) -> None:
        self.worker = worker
        self.claimed = claimed
        self.store = get_store()
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

    def _succeeded(self, result: Any) -> None:
        try:
            json.dumps(result)
        except (TypeError, ValueError) as exc:
            self._dead_letter(
                AttemptOutcome.FATAL,
                f"handler returned a result that is not JSON-serialisable: {exc}",
                exc,
            )
            return
        record = self._record(AttemptOutcome.SUCCEEDED, "", None)
        if not self.store.complete(self.claimed, result, record):
            self._fenced()
            return
        signals.job_succeeded.send(
            sender=self.worker,
            job_id=self.claimed.id,
            queue=self.worker.qualified_name,
            attempt=self.claimed.attempt,
            result=result,
        )

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
        record = self._record(outcome, error, exc)
        if delay_seconds is None:
            delay_seconds = compute_backoff(c.attempt, self.worker.lifecycle.retry)
        available_at = utcnow() + timedelta(seconds=delay_seconds)
        publish_now = delay_seconds <= PUBLISH_HORIZON_SECONDS
        if not self.store.retry_later(c, record, available_at, publish_now):
            self._fenced()
            return
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
        record = self._record(outcome, reason, exc)
        if not self.store.dead_letter(c, record, reason):
            self._fenced()
            return
        self.log.error("job dead-lettered: %s", reason)
        signals.job_dead_lettered.send(
            sender=self.worker,
            job_id=c.id,
            queue=self.worker.qualified_name,
            attempt=c.attempt,
            reason=reason,
        )
