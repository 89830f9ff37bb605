"""Child workflows: a step starts another workflow and its run waits for the child's end.

A step calls ``ctx.start_child("invoiceRequested", payload, done_event="invoiced")``: with the
step's success, in its transaction, the child run is written (its start event and first jobs,
its row naming the parent) and the parent run waits on a gate that only the child's end
opens. Whichever write settles the child run learns its parent in the same statement, and
after its commit :func:`notify_parent` closes the parent's gate and emits ``done_event`` (the
child completed) or ``failed_event`` (it was compensated, dead-lettered or cancelled) into the
parent, with the child's id, status and result - once, since only one writer closes a gate.
A crash between the two is caught by the sweeper, which looks for ended children of waiting
parents (:func:`report_ends`).

Stopping the parent (cancel, deadline, a failure) stops its open children, which compensate
as their service says; a child stopped late is found by the sweeper too.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from . import registry, telemetry
from .approvals import CHILD_PREFIX, Gate
from .clock import utcnow
from .compensation import stop_workflow
from .errors import ConfigurationError
from .events import new_event, plan, run_start_for, write_and_publish
from .ids import new_id
from .payloads import to_json
from .records import ClaimedJob, Event, Outbox, RunStatus
from .store import Store, get_store

logger = logging.getLogger("celery_workflows.children")


def new_child(
    parent: ClaimedJob,
    source: str,
    event: str,
    payload: Any,
    done_event: str,
    failed_event: str | None,
) -> tuple[Outbox, Gate]:
    """The child run a step starts (its start event, run and first jobs, as an outbox) and
    the gate its parent waits on; validated now, so a mistake raises in the handler."""
    for name in (event, done_event, *([failed_event] if failed_event else [])):
        registry.check_name("event", name)
    if not registry.subscriptions_for(event):
        raise ConfigurationError(
            f"start_child({event!r}): nothing subscribes to it, so the child run would do nothing"
        )
    child = new_event(
        event,
        payload,
        source=source,
        correlation_id=new_id(),
        causation_id=parent.id,
        trace_id=telemetry.current_traceparent() or parent.trace_id or None,
    )
    starts = dataclasses.replace(run_start_for(child), parent=parent.correlation_id)
    outbox = plan([child], starts, priority=parent.priority)
    now = utcnow()
    gate = Gate(
        prompt=f"waiting for child run {child.correlation_id} ({starts.name})",
        approve_event=done_event,
        reject_event=failed_event or done_event,
        payload=to_json(f"start_child({event!r})", {"child": child.correlation_id}),
        opened_by_job=parent.id,
        opened_at=now.isoformat(),
        traceparent=telemetry.current_traceparent(),
        priority=parent.priority,
        awaits=f"{CHILD_PREFIX}{child.correlation_id}",
        since=now.isoformat(),
    )
    return outbox, gate


def notify_parent(child_id: str, parent_id: str | None = None) -> Event | None:
    """The child run ended: close its parent's gate and emit the parent's done or failed
    event with the child's end. Once: None if the parent is not (or no longer) waiting for
    this child, or the child has not ended."""
    store = get_store()
    end = store.run_end(child_id)
    if end is None or (parent_id is not None and end.parent != parent_id):
        return None
    with store.atomic():
        gate = store.close_gate(
            end.parent,
            "child",
            "child",
            f"child run {child_id} {end.status}",
            awaits=f"{CHILD_PREFIX}{child_id}",
        )
        if gate is None:
            return None
        done = end.status == RunStatus.COMPLETED
        name = gate["approve_event"] if done else gate["reject_event"]
        payload = {
            "child": child_id,
            "status": str(end.status),
            "result": end.result,
            "error": end.error,
        }
        event = new_event(
            name,
            payload,
            source="child",
            correlation_id=end.parent,
            causation_id=gate.get("opened_by_job"),
            trace_id=gate.get("traceparent") or None,
        )
        write_and_publish(store, [event], priority=gate.get("priority"))
    return event


def report_ends(store: Store, limit: int) -> int:
    """The sweeper's backstop: tell waiting parents of children that ended (a writer that
    died after settling a child, a child settled by a stop), and stop the open children of
    stopped parents."""
    told = sum(notify_parent(child) is not None for child in store.ended_children(limit))
    for child, parent in store.orphaned_children(limit):
        if stop_workflow(child, f"its parent run {parent} was stopped", "parent"):
            logger.info("child run %s stopped: its parent %s was stopped", child, parent)
    return told
