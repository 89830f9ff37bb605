"""The explicit registries of declarations and middleware (the toolkit's only global state).

Everything here is filled at import time by declarations (``WorkflowService``,
``queue_worker``, ``subscribe``, ``event``, ``add_middleware``) and only read afterwards.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from pydantic import BaseModel

from .errors import ConfigurationError, UnknownQueueError
from .middleware import Chain, Middleware
from .payloads import DEFAULT_MAX_PAYLOAD_BYTES
from .queues import QueueSpec
from .records import RunStart
from .signals import SignalsMiddleware
from .subscriptions import Subscription

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,99}$")


class Service(Protocol):
    """What the registry needs of a :class:`~celery_workflows.service.WorkflowService`."""

    name: str
    celery_app: Any
    #: what a failure of one of its runs means: "compensate" or "stop"
    on_failure: str
    #: event emitted when one of its runs passes its deadline (None: none)
    timeout_event: str | None
    #: what starting a run does while one with the same business key is open
    on_duplicate_key: str

    def business_key_of(self, payload: Any) -> str: ...

    def run_start(self, started_by: str, payload: Any, deadline: Any = None) -> RunStart: ...


_services: dict[str, Service] = {}
_queues: dict[str, QueueSpec] = {}
_subscriptions: dict[str, list[Subscription]] = {}
_subscription_names: set[str] = set()
_event_schemas: dict[str, type[BaseModel]] = {}
#: events declared with ``service.event(...)``: may be emitted from outside any step
_entry_events: set[str] = set()
#: events declared ``terminal=True``: nothing is expected to subscribe to them
_terminal_events: set[str] = set()
_schedules: dict[str, Any] = {}
_middleware: list[Middleware] = [SignalsMiddleware()]
_limits = {"max_payload_bytes": DEFAULT_MAX_PAYLOAD_BYTES}
_chain = Chain(_middleware)


def check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigurationError(
            f"{kind} name {name!r} is invalid: use a letter followed by letters, digits, _ or -"
        )


def register_service(service: Service) -> None:
    existing = _services.get(service.name)
    if existing is not None and existing.celery_app is not service.celery_app:
        raise ConfigurationError(f"service {service.name!r} is declared twice")
    _services[service.name] = service


def services() -> dict[str, Service]:
    return dict(_services)


def register_queue(spec: QueueSpec) -> None:
    _queues[spec.qualified_name] = spec


def queues() -> dict[str, QueueSpec]:
    """Every declared queue by ``service.queue`` name."""
    return dict(_queues)


def unknown_queue(qualified_name: str) -> UnknownQueueError:
    known = ", ".join(sorted(_queues)) or "none"
    return UnknownQueueError(f"unknown queue {qualified_name!r}; declared queues: {known}")


def get_queue(qualified_name: str) -> QueueSpec:
    try:
        return _queues[qualified_name]
    except KeyError:
        raise unknown_queue(qualified_name) from None


def register_subscription(sub: Subscription) -> None:
    if sub.name in _subscription_names:
        raise ConfigurationError(f"subscription {sub.name!r} is declared twice")
    _subscription_names.add(sub.name)
    for event in sub.events:
        _subscriptions.setdefault(event, []).append(sub)


def subscriptions_for(event: str) -> list[Subscription]:
    """The subscriptions ``event`` feeds (a join among them for each of its events)."""
    return list(_subscriptions.get(event, ()))


def subscriptions() -> list[Subscription]:
    """Every declared subscription, once (a join is listed under each of its events)."""
    found = {sub.name: sub for subs in _subscriptions.values() for sub in subs}
    return list(found.values())


def subscription_count() -> int:
    """How many subscriptions are declared (it only grows: a cheap "has anything changed")."""
    return len(_subscription_names)


def subscription_target(sub: Subscription) -> QueueSpec:
    """The queue a subscription enqueues, or a ConfigurationError naming both."""
    try:
        return _queues[sub.queue]
    except KeyError:
        raise ConfigurationError(
            f"subscription {sub.name!r} to event {sub.event!r} enqueues {sub.queue!r}, "
            "which no service declares"
        ) from None


def register_event_schema(event: str, schema: type[BaseModel]) -> None:
    existing = _event_schemas.get(event)
    if existing is not None and existing is not schema:
        raise ConfigurationError(
            f"event {event!r} already has schema {existing.__name__}; one schema per event"
        )
    _event_schemas[event] = schema


def event_schemas() -> dict[str, type[BaseModel]]:
    return dict(_event_schemas)


def declare_event(event: str, terminal: bool) -> None:
    _entry_events.add(event)
    if terminal:
        _terminal_events.add(event)


def entry_events() -> set[str]:
    return set(_entry_events)


def terminal_events() -> set[str]:
    return set(_terminal_events)


def add_middleware(middleware: Middleware) -> None:
    """Register ``middleware`` after those already registered (signals are always first)."""
    global _chain
    if not isinstance(middleware, Middleware):
        raise ConfigurationError(
            f"add_middleware() takes a celery_workflows.Middleware instance, got {middleware!r}"
        )
    _middleware.append(middleware)
    _chain = Chain(_middleware)


def hooks() -> Chain:
    """The registered middleware, to call a hook on all of them."""
    return _chain


def set_max_payload_bytes(max_bytes: int) -> None:
    """The limit on event payloads (from the Celery app's ``workflows_max_payload_bytes``)."""
    _limits["max_payload_bytes"] = max_bytes


def max_payload_bytes() -> int:
    return _limits["max_payload_bytes"]


def register_schedule(spec: Any) -> None:
    """A :class:`~celery_workflows.schedules.ScheduleSpec`, by ``service.schedule`` name."""
    if spec.qualified_name in _schedules:
        raise ConfigurationError(f"schedule {spec.qualified_name!r} is declared twice")
    _schedules[spec.qualified_name] = spec


def schedules() -> dict[str, Any]:
    return dict(_schedules)
