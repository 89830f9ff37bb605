"""Callbacks from other systems: an event from outside, delivered into the run it belongs to.

Long workflows wait for other systems - a payment provider's webhook, a carrier's delivery
notice. A step parks its run with ``ctx.wait_for_event("paymentConfirmed", timeout=...)``;
:func:`deliver` brings the event in, matched to its run by correlation id or by business key
(the order id the provider echoes back), and the run goes on from its subscriptions. The
Django side (:mod:`django_app.webhooks`) turns a verified webhook request into a delivery.
"""

from __future__ import annotations

from typing import Any

from . import registry
from .errors import ConfigurationError, WorkflowNotFoundError
from .records import OPEN_RUN_STATUSES, Event
from .service import emit
from .store import get_store


def deliver(
    event: str,
    payload: Any,
    *,
    correlation_id: str | None = None,
    business_key: str | None = None,
    service: str | None = None,
    source: str = "external",
) -> Event:
    """Emit ``event`` from outside into one open run: the run with ``correlation_id``, or the
    newest open run of ``service`` with ``business_key`` (``service`` defaults to the one whose
    steps the event's subscriptions start). A run waiting for the event (``ctx.wait_for_event``)
    goes on; one not waiting yet takes it as well - when its step's success comes, it does not
    wait for a second one. Raises :class:`WorkflowNotFoundError` when no open run matches (a
    webhook should answer 404: the sender retries or gives up), and the event's schema errors
    as :func:`emit` does; nothing is written then."""
    if (correlation_id is None) == (business_key is None):
        raise ConfigurationError(f"deliver({event!r}): give a correlation_id or a business_key")
    store = get_store()
    with store.atomic():
        if correlation_id is None:
            assert business_key is not None
            name = service or _owner(event)
            found = store.open_run_for_key(name, str(business_key))
            if found is None:
                raise WorkflowNotFoundError(
                    f"no open run of service {name!r} has business key {business_key!r}"
                )
            correlation_id = found[0]
        elif store.run_status(correlation_id) not in OPEN_RUN_STATUSES:
            raise WorkflowNotFoundError(
                f"no open workflow run has correlation id {correlation_id!r}"
            )
        return emit(event, payload, correlation_id=correlation_id, source=source)


def _owner(event: str) -> str:
    queues = registry.queues()
    for queue in sorted(sub.queue for sub in registry.subscriptions_for(event)):
        if queue in queues:
            return queues[queue].service
    raise ConfigurationError(
        f"deliver({event!r}): nothing subscribes to it, so its service cannot be told: "
        "pass service="
    )
