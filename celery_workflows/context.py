"""What a handler receives: the job and a context to act on it.

Handlers have the signature ``handler(ctx: JobContext[R], job: Job[P]) -> result``. The job
carries the validated payload and ids; the context carries the logger, the service's resources
and the job controls (finish, retry, fail, dead-letter, extend the lease, check cancellation).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, NoReturn, TypeVar

from .approvals import Deciders, Gate, new_event_gate, new_gate
from .clock import utcnow
from .coroutines import to_async
from .errors import (
    DeadLetterRequested,
    FatalJobError,
    JobFinished,
    LeaseLostError,
    NotInAtomicStepError,
    RetryRequested,
)
from .records import ClaimedJob, Event
from .states import States
from .store import Store

P = TypeVar("P")
R = TypeVar("R")
#: seconds between two progress writes of one attempt (a report in between is not written)
PROGRESS_INTERVAL = 0.5


@dataclass(frozen=True)
class Job(Generic[P]):
    """One job as the handler sees it."""

    id: str
    queue: str
    payload: P
    #: 1 for the first attempt
    attempt: int
    max_attempts: int
    correlation_id: str
    enqueued_at: datetime

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts


class JobContext(Generic[R]):
    """The handler's handle on its attempt. Created by the worker, never by user code."""

    def __init__(
        self,
        job: Job[Any],
        claimed: ClaimedJob,
        store: Store,
        resources: R,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
        on_lease_extended: Callable[[float], None],
        visibility_timeout: float,
        emit: Callable[[str, Any], Event],
        open_gate: Callable[[Gate], None],
        start_map: Callable[[Iterable[Any]], int],
        start_child: Callable[[str, Any, str, str | None], str],
        atomic: bool = False,
    ) -> None:
        self.job = job
        self.resources = resources
        self.log = logger
        self._claimed = claimed
        self._store = store
        self._on_lease_extended = on_lease_extended
        self._visibility_timeout = visibility_timeout
        self._emit = emit
        self._open_gate = open_gate
        self._start_map = start_map
        self._start_child = start_child
        self._atomic = atomic
        #: when this attempt's progress was last written (monotonic seconds)
        self._progress_written = -PROGRESS_INTERVAL
        #: this run's own documents (deleted with the run when it is pruned)
        self.states = States(job.correlation_id, store)
        #: documents shared by every run (never pruned with a run); writes name this run
        self.shared_states = States(None, store, writer=job.correlation_id)

    @property
    def payload(self) -> Any:
        return self.job.payload

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def attempt(self) -> int:
        return self.job.attempt

    @property
    def correlation_id(self) -> str:
        return self.job.correlation_id

    @property
    def attempt_history(self) -> list[dict[str, Any]]:
        """The job's earlier attempts, oldest first, as its record keeps them (outcome,
        error, worker, started_at, finished_at, ...)."""
        return list(self._claimed.attempt_log)

    @property
    def started_at(self) -> datetime:
        """When this attempt started (its lease was taken)."""
        return self._claimed.started_at

    @property
    def compensating_for(self) -> str | None:
        """For a compensation job, the id of the job whose work it undoes; else None."""
        return self._claimed.compensates

    def emit(self, name: str, payload: Any) -> Event:
        """Announce ``name`` with ``payload``; subscriptions decide what runs next.

        The event is written with this attempt's outcome, in one transaction, and its
        subscribers' jobs are published after that commits. It goes out whatever the outcome -
        success, retry or dead letter - so a handler can emit a compensation event and then
        raise. Emitted inside ``transaction.atomic()`` it counts only if that block commits. A
        payload that fails the event's schema raises ``PayloadValidationError`` here.
        """
        return self._emit(name, payload)

    def progress(self, fraction: float, message: str = "") -> bool:
        """Report how far this attempt is: ``fraction`` from 0 to 1 and a line of text, shown
        by ``get_workflow()``, the JSON view and the run's admin page while it runs.

        Written at once, fenced by the lease - but at most once per half second, so a loop
        may call it per item: a call within half a second of the last write is not written
        (False), unless it reports completion (``fraction`` 1). Returns whether it was."""
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise ValueError(f"progress fraction must be a number from 0 to 1, got {fraction!r}")
        if not 0 <= fraction <= 1:
            raise ValueError(f"progress fraction must be from 0 to 1, got {fraction!r}")
        self._refuse_in_atomic_step("report progress")
        now = time.monotonic()
        if fraction < 1 and now - self._progress_written < PROGRESS_INTERVAL:
            return False
        self._progress_written = now
        report = {"fraction": float(fraction), "message": str(message)[:200]}
        report["at"] = utcnow().isoformat()
        return self._store.report_progress(self.job.id, self._claimed.lease_token, report)

    def map(self, items: Iterable[Any]) -> int:
        """Start one branch job per item on this step's ``gather.each`` queue; once every
        branch has ended, one job on ``gather.into`` receives all their results, in item
        order (see :mod:`celery_workflows.gathers`). Returns the number of branches.

        The branches are written with this attempt's success, in its transaction (a failed
        attempt starts none; its next attempt maps again). Each item is checked against the
        branch queue's schema here: a bad one raises ``PayloadValidationError`` and nothing
        is started. No items: the gathering job starts at once, with empty results.
        """
        return self._start_map(items)

    def wait_for_human(
        self,
        prompt: str,
        *,
        approve_event: str,
        reject_event: str,
        payload: Any = None,
        expires_in: timedelta | None = None,
        timeout_event: str | None = None,
        deciders: Deciders | None = None,
        escalate_to: Deciders | None = None,
    ) -> None:
        """Park the workflow until a person approves (emits ``approve_event``) or rejects
        (emits ``reject_event``), in the admin or with :func:`celery_workflows.decide`.

        The run shows as ``waiting`` with ``prompt`` once this step's success is recorded (a
        step that then fails or loses its lease opens nothing; its next attempt asks again).
        With ``expires_in``, a gate nobody answered in time closes by itself and emits
        ``timeout_event`` (default: ``reject_event``) - once, audited as ``expire``.
        ``deciders`` names who may decide (:class:`~celery_workflows.approvals.Deciders`:
        groups, permissions or a check; default: whoever holds ``decide_workflowrun``);
        ``escalate_to`` (with ``expires_in``) passes an undecided gate to other deciders for
        as long again when it expires, before it expires for good.
        """
        gate = new_gate(
            self.job.correlation_id,
            self.job.id,
            prompt,
            approve_event,
            reject_event,
            payload,
            expires_in,
            timeout_event,
            self._claimed.priority,
            deciders,
            escalate_to,
        )
        self._open_gate(gate)

    def start_child(
        self, event: str, payload: Any, *, done_event: str, failed_event: str | None = None
    ) -> str:
        """Start a child workflow - the run that emitting ``event`` with ``payload`` starts, of
        this service or another - and make this run wait for its end. Returns the child's
        correlation id. ``event`` must be in this step's ``emits``.

        The child is written with this attempt's success, in its transaction (a failed attempt
        starts none). When the child run ends, ``done_event`` (it completed) or
        ``failed_event`` (compensated, dead-lettered or cancelled; default: ``done_event``)
        is emitted in this run with ``{"child", "status", "result", "error"}`` - the result of
        the child's last step. Stopping this run stops the child (which compensates as its
        service says). One wait per attempt: a decision, an event or a child.
        """
        return self._start_child(event, payload, done_event, failed_event)

    def wait_for_event(
        self,
        event: str,
        *,
        timeout: timedelta | None = None,
        timeout_event: str | None = None,
        payload: Any = None,
    ) -> None:
        """Park the workflow until ``event`` comes from outside for this run - a payment
        provider's webhook, a carrier's notice - emitted with the run's correlation id or
        delivered by its business key (:func:`celery_workflows.deliver`, or the webhook view
        of :func:`django_app.webhooks.event_webhook`). Its subscriptions then continue the run.

        The general form of :meth:`wait_for_human`, fenced and durable like it: the run shows
        as ``waiting`` once this step's success is recorded, and an event that came before
        that (since this job was created) counts - it does not wait for a second one. With
        ``timeout``, a run still waiting then emits ``timeout_event`` (with ``payload``)
        instead, once, audited as ``expire``.
        """
        gate = new_event_gate(
            self.job.correlation_id,
            self.job.id,
            self._claimed.created_at,
            event,
            timeout,
            timeout_event,
            payload,
            self._claimed.priority,
        )
        self._open_gate(gate)

    def extend_lease(self, seconds: float | None = None) -> datetime:
        """Keep owning the job for ``seconds`` more (default: the queue's visibility timeout).

        Call it periodically from long work. Raises :class:`LeaseLostError` if the lease
        already expired and the job may be running elsewhere: stop at once in that case.
        """
        self._refuse_in_atomic_step("extend its lease")
        seconds = self._lease_seconds(seconds)
        expires = self._store.extend_lease(self.job.id, self._claimed.lease_token, seconds)
        return self._lease_extended(expires, seconds)

    def _refuse_in_atomic_step(self, what: str) -> None:
        # both write the job's row: inside the step's transaction nobody would see the write
        # until it commits, and its row lock, taken before the run's, could deadlock with the
        # sweeper (which locks the run, then the job)
        if self._atomic:
            raise NotInAtomicStepError(
                f"queue {self.job.queue}: an atomic step cannot {what} (its job's row is "
                "written only when the step commits); keep it shorter than its lease"
            )

    def _lease_seconds(self, seconds: float | None) -> float:
        seconds = self._visibility_timeout if seconds is None else seconds
        if seconds <= 0:
            raise ValueError("extend_lease(seconds) needs a positive number of seconds")
        return seconds

    def _lease_extended(self, expires: datetime | None, seconds: float) -> datetime:
        if expires is None:
            raise LeaseLostError(
                f"job {self.job.id} attempt {self.job.attempt}: the lease was lost; stop working"
            )
        self._on_lease_extended(seconds)  # re-arms the alarm: in the thread that owns it
        return expires

    @property
    def cancel_requested(self) -> bool:
        """True once someone asked to cancel this job; the handler decides how to stop."""
        return self._store.is_cancel_requested(self.job.id)

    # async variants, for ``async def`` handlers (Django refuses synchronous database access
    # inside a running event loop; see :mod:`celery_workflows.coroutines`)

    async def aemit(self, name: str, payload: Any) -> Event:
        """:meth:`emit`, awaitable (it consults the database's transaction state)."""
        return await to_async(self.emit)(name, payload)

    async def await_for_human(
        self,
        prompt: str,
        *,
        approve_event: str,
        reject_event: str,
        payload: Any = None,
        expires_in: timedelta | None = None,
        timeout_event: str | None = None,
        deciders: Deciders | None = None,
        escalate_to: Deciders | None = None,
    ) -> None:
        """:meth:`wait_for_human`, awaitable."""
        await to_async(self.wait_for_human)(
            prompt,
            approve_event=approve_event,
            reject_event=reject_event,
            payload=payload,
            expires_in=expires_in,
            timeout_event=timeout_event,
            deciders=deciders,
            escalate_to=escalate_to,
        )

    async def aprogress(self, fraction: float, message: str = "") -> bool:
        """:meth:`progress`, awaitable."""
        return await to_async(self.progress)(fraction, message)

    async def aextend_lease(self, seconds: float | None = None) -> datetime:
        """:meth:`extend_lease`, awaitable."""
        seconds = self._lease_seconds(seconds)
        token = self._claimed.lease_token
        expires = await to_async(self._store.extend_lease)(self.job.id, token, seconds)
        return self._lease_extended(expires, seconds)

    async def acancel_requested(self) -> bool:
        """:attr:`cancel_requested`, awaitable."""
        return await to_async(self._store.is_cancel_requested)(self.job.id)

    def finish(self, result: Any = None) -> NoReturn:
        """End the attempt successfully now, with ``result`` (must be JSON-serialisable)."""
        raise JobFinished(result)

    def retry(
        self, delay_seconds: float | None = None, reason: str = "retry requested"
    ) -> NoReturn:
        """End this attempt and run another after ``delay_seconds`` (default: the backoff).

        Counts as an attempt: when ``max_attempts`` are used the job is dead-lettered instead.
        """
        if delay_seconds is not None and delay_seconds < 0:
            raise ValueError("retry(delay_seconds) must be >= 0")
        raise RetryRequested(delay_seconds, reason)

    def fail(self, reason: str) -> NoReturn:
        """Fail for good: no more attempts, straight to the dead-letter queue with ``reason``."""
        raise FatalJobError(reason)

    def dead_letter(self, reason: str) -> NoReturn:
        """Park the job in the dead-letter queue for an operator to inspect and re-drive."""
        raise DeadLetterRequested(reason)
