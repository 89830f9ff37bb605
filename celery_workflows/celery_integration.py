"""What a WorkflowService installs on the user's Celery app, once per app.

- the ``celery_workflows.deliver_event`` task on the :data:`EVENTS_QUEUE` queue: other
  services (or hosts, or languages) publish event envelopes to it; delivering one envelope
  any number of times starts each subscription's job once;
- a start-up check of the workflow graph: a worker refuses to start if a subscription targets
  a queue no service declares;
- a worker bootstep that runs the :class:`~celery_workflows.sweeper.Sweeper` in every
  ``celery worker`` (settings ``workflows_sweep_interval`` and ``workflows_republish_after``,
  in seconds, on the Celery app's config);
- handlers for Celery's ``task_unknown`` / ``task_rejected`` signals, so a message that names
  no registered task or cannot be read, arriving on one of our queues, is dead-lettered with
  the reason instead of being dropped.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from celery import Celery, bootsteps
from celery.signals import task_rejected, task_unknown

from . import graph, registry
from .errors import PayloadError
from .events import Event, event_payload, write_and_publish
from .store import RunStart, get_store
from .sweeper import DEFAULT_INTERVAL_SECONDS, DEFAULT_REPUBLISH_AFTER_SECONDS, Sweeper

#: the queue external event envelopes arrive on; add it to a worker's ``-Q``
EVENTS_QUEUE = "celery_workflows.events"
DELIVER_EVENT_TASK = "celery_workflows.deliver_event"

_installed: set[int] = set()


class SweeperStep(bootsteps.StartStopStep):
    """Start the sweeper thread with the worker and stop it on shutdown."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        conf = parent.app.conf
        self.sweeper = Sweeper(
            interval=float(conf.get("workflows_sweep_interval") or DEFAULT_INTERVAL_SECONDS),
            republish_after=float(
                conf.get("workflows_republish_after") or DEFAULT_REPUBLISH_AFTER_SECONDS
            ),
        )

    def start(self, parent: Any) -> None:
        graph.validate()
        self.sweeper.start()

    def stop(self, parent: Any) -> None:
        self.sweeper.stop()


def install(app: Celery) -> None:
    if id(app) in _installed:
        return
    _installed.add(id(app))
    app.steps["worker"].add(SweeperStep)
    app.task(name=DELIVER_EVENT_TASK, ignore_result=True, typing=False, shared=False)(
        _deliver_event
    )


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
        get_store().record_unroutable(
            EVENTS_QUEUE,
            {"args": _jsonable(list(args)), "kwargs": _jsonable(kwargs)},
            f"malformed event envelope: {exc}",
        )
        return
    write_and_publish([event], RunStart(event.source, "", event.name))


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
    get_store().record_unroutable(
        queue, {"headers": _jsonable(headers), "body": _jsonable(body)}, reason
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
