"""Middleware: hooks around every attempt, for concerns that are not a step's business.

Subclass :class:`Middleware`, override the hooks you need and register an instance with
:func:`celery_workflows.add_middleware` at import time (e.g. in a ``workflows`` module). What
plugs in where, as it stands:

- the attempt signals (``job_succeeded``, ``job_failed``, ``job_fenced``,
  ``job_dead_lettered``) are sent by a built-in middleware (:mod:`celery_workflows.signals`),
  and so is the Django Tasks backend's ``task_finished``;
- tracing, metrics and the log context wrap the whole attempt - its claim, handler and outcome
  write - so the worker opens and closes them itself (:mod:`.telemetry`, :mod:`.logs`), not
  through these hooks, which see the attempt once it is claimed;
- the other signals (``job_enqueued``, ``event_emitted``, ``workflow_finished``,
  ``notice_dropped``, ``queue_paused``, ``queue_resumed``) are sent where those things happen.

No hook wraps the handler call itself: ``before_attempt`` and ``after_outcome`` bracket it.
A hook that raises is logged and skipped: middleware can never change a job's outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .records import Event, NewJob, Outcome

logger = logging.getLogger("celery_workflows.middleware")


@dataclass
class AttemptInfo:
    """One attempt, as middleware sees it."""

    job_id: str
    queue: str
    attempt: int
    max_attempts: int
    correlation_id: str
    trace_id: str
    started_at: datetime
    #: ``host:pid`` of the process that held the lease
    worker: str
    #: True when this process ran the handler; False when the sweeper settles an expired lease
    ran_here: bool = True
    #: for middleware to keep what it needs between its hooks (a span, a timer)
    scratch: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeadLetterInfo:
    """A job that reached the dead-letter queue, whichever way it got there."""

    job_id: str
    queue: str
    reason: str
    attempt: int
    #: the workflow run; "" for a message that never belonged to one (unroutable)
    correlation_id: str = ""


class Middleware:
    """Override any of these; the defaults do nothing."""

    def on_enqueue(self, job: NewJob) -> NewJob:
        """A job is about to be written by ``enqueue()`` or an event's subscription; return it,
        or a replacement (``dataclasses.replace``) carrying extra context."""
        return job

    def before_attempt(self, attempt: AttemptInfo) -> None:
        """The attempt was claimed; its handler is about to run in this process."""

    def after_outcome(self, attempt: AttemptInfo, outcome: Outcome | None) -> None:
        """The attempt's outcome was written (``None``: the fence rejected it - the lease had
        expired and another attempt owns the job). Also called by the sweeper for an expired
        lease (``attempt.ran_here`` is False)."""

    def on_emit(self, event: Event) -> Event:
        """An event was emitted and is about to be written; return it or a replacement."""
        return event

    def on_dead_letter(self, dead: DeadLetterInfo) -> None:
        """A job reached the dead-letter queue (after its attempt's ``after_outcome``)."""


class Chain:
    """The registered middleware, called in order (``after_outcome`` in reverse, so a hook
    that wraps an attempt closes in the opposite order it opened); a hook that raises is
    logged and skipped."""

    def __init__(self, middleware: Iterable[Middleware]) -> None:
        self.middleware = tuple(middleware)

    def on_enqueue(self, job: NewJob) -> NewJob:
        for m in self.middleware:
            job = _safe(m.on_enqueue, job, default=job)
        return job

    def on_emit(self, event: Event) -> Event:
        for m in self.middleware:
            event = _safe(m.on_emit, event, default=event)
        return event

    def before_attempt(self, attempt: AttemptInfo) -> None:
        self._notify("before_attempt", attempt)

    def after_outcome(self, attempt: AttemptInfo, outcome: Outcome | None) -> None:
        self._notify("after_outcome", attempt, outcome, reverse=True)

    def on_dead_letter(self, dead: DeadLetterInfo) -> None:
        self._notify("on_dead_letter", dead)

    def _notify(self, hook: str, *args: Any, reverse: bool = False) -> None:
        for m in reversed(self.middleware) if reverse else self.middleware:
            _safe(getattr(m, hook), *args, default=None)


def _safe(hook: Any, *args: Any, default: Any) -> Any:
    try:
        return hook(*args)
    except Exception:
        logger.exception("middleware hook %s failed; ignored", getattr(hook, "__qualname__", hook))
        return default
