"""The explicit registries of declared services and queues (the only global state)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError, UnknownQueueError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from .service import WorkflowService
    from .subscriptions import Subscription
    from .worker import QueueWorker

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,99}$")

_services: dict[str, WorkflowService[Any]] = {}
_queues: dict[str, QueueWorker] = {}
_subscriptions: dict[str, list[Subscription]] = {}
_subscription_names: set[str] = set()
_event_schemas: dict[str, type[BaseModel]] = {}


def check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigurationError(
            f"{kind} name {name!r} is invalid: use a letter followed by letters, digits, _ or -"
        )


def register_service(service: WorkflowService[Any]) -> None:
    existing = _services.get(service.name)
    if existing is not None and existing.celery_app is not service.celery_app:
        raise ConfigurationError(f"service {service.name!r} is declared twice")
    _services[service.name] = service


def register_queue(worker: QueueWorker) -> None:
    _queues[worker.qualified_name] = worker


def queues() -> dict[str, QueueWorker]:
    """Every declared queue by ``service.queue`` name."""
    return dict(_queues)


def services() -> dict[str, WorkflowService[Any]]:
    return dict(_services)


def unknown_queue(qualified_name: str) -> UnknownQueueError:
    known = ", ".join(sorted(_queues)) or "none"
    return UnknownQueueError(f"unknown queue {qualified_name!r}; declared queues: {known}")


def get_queue(qualified_name: str) -> QueueWorker:
    try:
        return _queues[qualified_name]
    except KeyError:
        raise unknown_queue(qualified_name) from None


def register_subscription(sub: Subscription) -> None:
    if sub.name in _subscription_names:
        raise ConfigurationError(f"subscription {sub.name!r} is declared twice")
    _subscription_names.add(sub.name)
    _subscriptions.setdefault(sub.event, []).append(sub)


def subscriptions_for(event: str) -> list[Subscription]:
    return list(_subscriptions.get(event, ()))


def subscriptions() -> list[Subscription]:
    return [sub for subs in _subscriptions.values() for sub in subs]


def register_event_schema(event: str, schema: type[BaseModel]) -> None:
    existing = _event_schemas.get(event)
    if existing is not None and existing is not schema:
        raise ConfigurationError(
            f"event {event!r} already has schema {existing.__name__}; one schema per event"
        )
    _event_schemas[event] = schema


def event_schemas() -> dict[str, type[BaseModel]]:
    return dict(_event_schemas)
