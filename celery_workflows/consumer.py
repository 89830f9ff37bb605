"""The worker's consumer: Celery's, made so that no message can stop it or vanish unseen.

Installed as ``worker_consumer`` by :func:`celery_workflows.celery_integration.install` unless
you configured your own. What it adds to Celery's consumer:

- queue items that are not messages at all (empty, not UTF-8, not JSON, JSON that is not a
  message) are caught in the Redis transport (:mod:`celery_workflows.intake`);
- messages for our tasks are checked before they are dispatched: wrong content type, a body
  that is not ``[args, kwargs, embed]``, a notice that is not ``[job id, attempt]``;
- anything Celery's own handling of one message raises is caught for that message;
- undecodable bodies, unknown task names on our queues and invalid messages are recorded.

Each such message is dead-lettered with its reason and raw body and acknowledged; the worker
goes on. If even the dead-letter write fails (the database is down), the message is logged in
full - base64 included - at ERROR, so it is never lost without a trace.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from celery.signals import task_rejected, task_unknown
from celery.worker.consumer import Consumer

from . import registry
from .intake import (
    envelope_problem,
    guard_redis_transport,
    message_problem,
    message_record,
    notice_problem,
    stored_body,
)
from .payloads import storable_text
from .schedules import SCHEDULES_QUEUE
from .store import get_store
from .worker import dead_letter_message

logger = logging.getLogger("celery_workflows.consumer")

#: the events task (other services publish envelopes to it); defined here so both the consumer
#: and :mod:`celery_workflows.celery_integration` name it the same
DELIVER_EVENT_TASK = "celery_workflows.deliver_event"
#: the queue external event envelopes arrive on; add it to a worker's ``-Q``
EVENTS_QUEUE = "celery_workflows.events"


def toolkit_queue(queue: str) -> bool:
    """Whether ``queue`` is one of the toolkit's: a declared step's, the events queue or the
    schedules queue - whatever arrives on those and cannot run is dead-lettered."""
    return queue in registry.queues() or queue in (EVENTS_QUEUE, SCHEDULES_QUEUE)


def record(queue: str, body: Any, reason: str) -> None:
    """Dead-letter what arrived on ``queue``; never raises (the consumer must go on)."""
    try:
        dead_letter_message(get_store(), queue, body, reason)
    except Exception:
        logger.exception(
            "could not dead-letter a message from %r (%s); its content: %s",
            queue,
            reason,
            json.dumps(body, default=repr),
        )


def queue_of(message: Any) -> str:
    """The queue a message came from: the Redis list it was popped from, or its routing key."""
    queue = getattr(message, "consumed_from", "")
    if not queue:
        info = getattr(message, "delivery_info", None)
        queue = info.get("routing_key") if isinstance(info, dict) else None
    return storable_text(str(queue or "?"))


def checks() -> dict[str, Callable[[Any, Any], str | None]]:
    """Task name -> the check of its arguments, for every task of ours."""
    found: dict[str, Callable[[Any, Any], str | None]] = {
        spec.task_name: notice_problem for spec in registry.queues().values()
    }
    found[DELIVER_EVENT_TASK] = envelope_problem
    return found


def take_notices_without_acks(app: Any) -> None:
    """Consume the declared steps' queues ``no_ack`` (Redis only; see
    :mod:`celery_workflows.held`): set on the queue entities the task consumer is built from,
    before it is."""
    steps = registry.queues()
    for name, queue in app.amqp.queues.items():
        if name in steps:
            queue.no_ack = True


class DeadLetteringConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer; see the module docstring for what it adds."""

    def ensure_connected(self, conn: Any) -> Any:
        if guard_redis_transport(conn.transport, self._unreadable):
            take_notices_without_acks(self.app)
        return super().ensure_connected(conn)

    def _unreadable(self, queue: str, raw: Any, reason: str) -> None:
        logger.error("%s: %s; dead-lettered", queue, reason)
        record(storable_text(queue or "?"), {"body": stored_body(raw)}, storable_text(reason))

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        handle = super().create_task_handler(*args, **kwargs)
        ours = checks()
        # broker connection trouble is Celery's to handle (it reconnects)
        let_through = tuple(getattr(self, "connection_errors", ())) + tuple(
            getattr(self, "channel_errors", ())
        )

        def on_task_received(message: Any) -> Any:
            try:
                headers = message.headers
                name = headers.get("task") if isinstance(headers, dict) else None
                check = ours.get(name) if isinstance(name, str) else None
                problem = message_problem(message, check) if check is not None else None
            except Exception as exc:
                problem = f"message could not be read: {exc!r}"
            if problem is not None:
                return self._refuse(message, problem)
            try:
                return handle(message)
            except let_through:
                raise
            except Exception as exc:
                logger.exception("Celery could not handle a message; it is dead-lettered")
                return self._refuse(message, f"message could not be handled: {exc!r}")

        return on_task_received

    def _refuse(self, message: Any, reason: str) -> None:
        queue = queue_of(message)
        logger.error("%s: %s; dead-lettered", queue, reason)
        record(queue, message_record(message), storable_text(reason))
        if not getattr(message, "acknowledged", True):
            message.ack()

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        if toolkit_queue(queue_of(message)):
            record(
                queue_of(message),
                message_record(message),
                storable_text(f"message body could not be decoded: {exc}"),
            )
        super().on_decode_error(message, exc)


@task_unknown.connect
def _on_unknown_task(sender: Any = None, message: Any = None, name: str = "", **kw: Any) -> None:
    if toolkit_queue(queue_of(message)):
        reason = f"unknown task {storable_text(repr(name))}: no worker registers it"
        record(queue_of(message), message_record(message), reason)


@task_rejected.connect
def _on_rejected(sender: Any = None, message: Any = None, exc: Any = None, **kw: Any) -> None:
    if toolkit_queue(queue_of(message)):
        reason = f"message rejected as invalid: {exc or 'unknown message format'}"
        record(queue_of(message), message_record(message), storable_text(reason))
