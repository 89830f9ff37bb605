"""What a WorkflowService installs on the user's Celery app, once per app.

- a worker bootstep that runs the :class:`~celery_workflows.sweeper.Sweeper` in every
  ``celery worker`` (settings ``workflows_sweep_interval`` and ``workflows_republish_after``,
  in seconds, on the Celery app's config);
- handlers for Celery's ``task_unknown`` / ``task_rejected`` signals, so a message that names
  no registered task or cannot be read, arriving on one of our queues, is dead-lettered with
  the reason instead of being dropped.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, bootsteps
from celery.signals import task_rejected, task_unknown

from . import registry
from .store import get_store
from .sweeper import DEFAULT_INTERVAL_SECONDS, DEFAULT_REPUBLISH_AFTER_SECONDS, Sweeper

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
        self.sweeper.start()

    def stop(self, parent: Any) -> None:
        self.sweeper.stop()


def install(app: Celery) -> None:
    if id(app) in _installed:
        return
    _installed.add(id(app))
    app.steps["worker"].add(SweeperStep)


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
