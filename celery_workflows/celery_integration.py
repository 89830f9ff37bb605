"""What a WorkflowService installs on the user's Celery app, once per app.

- the ``celery_workflows.deliver_event`` task on the :data:`EVENTS_QUEUE` queue: other
  services (or hosts, or languages) publish event envelopes to it; delivering one envelope
  any number of times starts each subscription's job once;
- a start-up check of the workflow graph: a worker refuses to start if a subscription targets
  a queue no service declares;
- a worker started without ``-Q`` consumes every declared queue (besides Celery's default);
- a consumer bootstep that runs the :mod:`~celery_workflows.sweeper` on the worker's timer in
  every ``celery worker`` (settings ``workflows_sweep_interval`` and
  ``workflows_republish_after``, in seconds, on the Celery app's config);
- handlers for Celery's ``task_unknown`` / ``task_rejected`` signals and a consumer whose
  ``on_decode_error`` records the message first, so a message that names no registered task
  or cannot be read, arriving on one of our queues, is dead-lettered with the reason instead
  of being dropped.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from celery import Celery, bootsteps
from celery.signals import task_rejected, task_unknown
from celery.worker.consumer import Consumer

from . import graph, registry
from .errors import PayloadError
from .events import event_payload, run_start_for, write_and_publish
from .records import Event
from .retention import PRUNE_TASK, prune_finished_runs
from .store import get_store
from .sweeper import DEFAULT_INTERVAL_SECONDS, DEFAULT_REPUBLISH_AFTER_SECONDS, Sweeper
from .worker import dead_letter_message

#: the queue external event envelopes arrive on; add it to a worker's ``-Q``
EVENTS_QUEUE = "celery_workflows.events"
DELIVER_EVENT_TASK = "celery_workflows.deliver_event"

DEFAULT_CONSUMER = "celery.worker.consumer:Consumer"
logger = logging.getLogger("celery_workflows.celery_integration")

_installed: set[int] = set()


class GraphCheck(bootsteps.StartStopStep):
    """Refuse to start a worker whose workflow graph is broken, naming the problem."""

    def start(self, parent: Any) -> None:
        graph.validate()


class ConsumeDeclaredQueues(bootsteps.Step):
    """A worker started without ``-Q`` consumes every declared workflow queue too.

    Plain ``celery -A proj worker`` then runs every step, as users expect from their usual
    worker; with ``-Q`` the worker consumes exactly what it was told (to scale steps apart).
    """

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        queues = parent.app.amqp.queues
        # Celery keeps the -Q selection in _consume_from; None means "no -Q given"
        if getattr(queues, "_consume_from", None) is None:
            for name in registry.queues():
                queues.select_add(name)


class SweeperStep(bootsteps.StartStopStep):
    """Run the sweeper on the consumer's timer while the worker consumes."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        conf = parent.app.conf
        self.interval = float(conf.get("workflows_sweep_interval") or DEFAULT_INTERVAL_SECONDS)
        self.sweeper = Sweeper(
            float(conf.get("workflows_republish_after") or DEFAULT_REPUBLISH_AFTER_SECONDS)
        )
        self.tref: Any = None

    def start(self, parent: Any) -> None:
        self.tref = parent.timer.call_repeatedly(self.interval, self.sweeper.safe_sweep)

    def stop(self, parent: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    shutdown = stop


class DeadLetteringConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, except that a message on one of our queues whose body cannot be
    decoded (broken JSON, a body without task headers) is dead-lettered, not only logged."""

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        try:
            _dead_letter_message(message, f"message body could not be decoded: {exc}")
        except Exception:  # recording must never stop the consumer; Celery still logs it
            logger.exception("could not dead-letter an undecodable message")
        super().on_decode_error(message, exc)


def install(app: Celery) -> None:
    if id(app) in _installed:
        return
    _installed.add(id(app))
    if app.conf.worker_consumer == DEFAULT_CONSUMER:
        app.conf.worker_consumer = f"{__name__}:DeadLetteringConsumer"
    else:
        logger.info("worker_consumer is customised; undecodable messages are not dead-lettered")
    app.steps["worker"].add(GraphCheck)
    app.steps["worker"].add(ConsumeDeclaredQueues)
    app.steps["consumer"].add(SweeperStep)
    app.task(name=DELIVER_EVENT_TASK, ignore_result=True, typing=False, shared=False)(
        _deliver_event
    )
    app.task(name=PRUNE_TASK, ignore_result=True, shared=False)(prune_finished_runs)


def _deliver_event(*args: Any, **kwargs: Any) -> None:
    """Write an event received through the broker and start its subscriptions' jobs."""
    try:
        if len(args) != 1 or kwargs or not isinstance(args[0], dict):
            raise ValueError("expected one argument: the event envelope as a JSON object")
        received = Event.from_json(args[0])
        event = dataclasses.replace(
            received, payload=event_payload(received.name, received.payload)
        )
    except (ValueError, TypeError, PayloadError) as exc:
        dead_letter_message(
            get_store(),
            EVENTS_QUEUE,
            {"args": _jsonable(list(args)), "kwargs": _jsonable(kwargs)},
            f"malformed event envelope: {exc}",
        )
        return
    write_and_publish(get_store(), [event], run_start_for(event))


def publish_event(app: Celery, event: Event) -> None:
    """Send an envelope to the events queue (used by other services and by the tests)."""
    app.send_task(DELIVER_EVENT_TASK, args=[event.to_json()], queue=EVENTS_QUEUE)


def _dead_letter_message(message: Any, reason: str) -> None:
    info = getattr(message, "delivery_info", None) or {}
    queue = info.get("routing_key") or ""
    if queue not in registry.queues():
        return  # not one of our queues: Celery's own handling applies
    try:
        body: Any = message.decode()
    except Exception:
        raw = getattr(message, "body", b"")
        body = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else repr(raw)
    headers = getattr(message, "headers", None) or {}
    dead_letter_message(
        get_store(), queue, {"headers": _jsonable(headers), "body": _jsonable(body)}, reason
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


@task_unknown.connect
def _on_unknown_task(sender: Any = None, message: Any = None, name: str = "", **kw: Any) -> None:
    _dead_letter_message(message, f"unknown task {name!r}: no worker registers it")


@task_rejected.connect
def _on_rejected(sender: Any = None, message: Any = None, exc: Any = None, **kw: Any) -> None:
    _dead_letter_message(message, f"message rejected as invalid: {exc or 'unknown message format'}")
