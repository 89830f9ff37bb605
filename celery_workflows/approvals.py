"""Human approval gates: a workflow waits until a person approves or rejects.

A step calls ``ctx.wait_for_human(...)`` and finishes normally; with its successful outcome -
in the same fenced write - the run's status becomes ``waiting`` and remembers which event an
approval emits and which a rejection emits (a step that fails after asking, or an attempt
whose lease was taken over, opens no gate). Nothing runs until someone decides - in the
admin (Approve / Reject buttons) or in code with :func:`decide` (a link in an email, a Slack
action). The decision emits the chosen event in the
run's workflow, so subscriptions continue it like any other step. A gate is decided once: a
second click finds it closed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from . import registry, telemetry
from .clock import utcnow
from .errors import ConfigurationError, GateClosedError
from .events import new_event, write_and_publish
from .payloads import to_json
from .records import Event
from .store import get_store


@dataclass(frozen=True)
class Gate:
    prompt: str
    approve_event: str
    reject_event: str
    payload: Any
    opened_by_job: str
    opened_at: str
    #: ISO time after which the gate closes unanswered, emitting ``timeout_event``
    expires_at: str | None = None
    timeout_event: str | None = None
    #: the W3C traceparent of the attempt that opened the gate: the decision continues it
    traceparent: str | None = None
    #: the priority of the step that opened it: the decision's jobs inherit it
    priority: int | None = None
    #: a gate that waits for an event from outside (not a decision): its name
    awaits: str | None = None
    #: for such a gate: an event of that name in the run since then (the step's job was
    #: created) counts, even one that came before the gate opened
    since: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Gate:
        values: dict[str, Any] = {f.name: data.get(f.name) for f in dataclasses.fields(cls)}
        return cls(**values)


def new_gate(
    correlation_id: str,
    job_id: str,
    prompt: str,
    approve_event: str,
    reject_event: str,
    payload: Any,
    expires_in: timedelta | None = None,
    timeout_event: str | None = None,
    priority: int | None = None,
) -> Gate:
    """The gate a step opens (validated now: a bad event name or expiry raises in the
    handler). It is written with the step's successful outcome, behind its fence: a step that
    fails, or a zombie attempt, opens nothing."""
    for name in (approve_event, reject_event, *([timeout_event] if timeout_event else [])):
        registry.check_name("event", name)
    if expires_in is not None and (
        not isinstance(expires_in, timedelta) or expires_in.total_seconds() <= 0
    ):
        raise ConfigurationError(
            f"approval gate {prompt!r}: expires_in must be a positive timedelta, got {expires_in!r}"
        )
    now = utcnow()
    return Gate(
        prompt=prompt,
        approve_event=approve_event,
        reject_event=reject_event,
        payload=to_json(f"approval gate {prompt!r}", payload),
        opened_by_job=job_id,
        opened_at=now.isoformat(),
        expires_at=(now + expires_in).isoformat() if expires_in else None,
        timeout_event=(timeout_event or reject_event) if expires_in else None,
        traceparent=telemetry.current_traceparent(),
        priority=priority,
    )


def new_event_gate(
    correlation_id: str,
    job_id: str,
    since: datetime,
    event: str,
    timeout: timedelta | None,
    timeout_event: str | None,
    payload: Any,
    priority: int | None = None,
) -> Gate:
    """The gate a step opens to wait for ``event`` from outside (see
    :meth:`JobContext.wait_for_event`), validated now; written with the step's success."""
    registry.check_name("event", event)
    if timeout_event is not None:
        registry.check_name("event", timeout_event)
    if (timeout is None) != (timeout_event is None):
        raise ConfigurationError(
            f"waiting for {event!r}: timeout and timeout_event go together (a wait that can "
            "time out must say what its timeout emits)"
        )
    if timeout is not None and (not isinstance(timeout, timedelta) or timeout <= timedelta(0)):
        raise ConfigurationError(
            f"waiting for {event!r}: timeout must be a positive timedelta, got {timeout!r}"
        )
    now = utcnow()
    return Gate(
        prompt=f"waiting for {event}",
        approve_event="",
        reject_event="",
        payload=to_json(f"waiting for {event!r}", payload),
        opened_by_job=job_id,
        opened_at=now.isoformat(),
        expires_at=(now + timeout).isoformat() if timeout else None,
        timeout_event=timeout_event,
        traceparent=telemetry.current_traceparent(),
        priority=priority,
        awaits=event,
        since=since.isoformat(),
    )


def queued_behind(current: dict[str, Any], gate: dict[str, Any]) -> dict[str, Any]:
    """The run's open gate with ``gate`` waiting behind it: a second step of the run (another
    branch) asked while the run already waits. Gates open one after the other, in the order
    asked; each is decided, expires or is answered by its own event or child."""
    return {**current, "queued": [*current.get("queued", []), gate]}


def next_gate(closed: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A gate being closed, without the gates queued behind it, and the one that opens now."""
    queued = list(closed.get("queued", []))
    gate = {k: v for k, v in closed.items() if k != "queued"}
    if not queued:
        return gate, None
    following = dict(queued[0])
    if queued[1:]:
        following["queued"] = queued[1:]
    return gate, following


#: how a gate names the child run it waits for (event names cannot hold ":")
CHILD_PREFIX = "child:"


def awaits_event(gate: dict[str, Any]) -> bool:
    """A gate that an event from outside answers (not a decision, not a child run)."""
    awaits = gate.get("awaits") or ""
    return bool(awaits) and not awaits.startswith(CHILD_PREFIX)


def decide(correlation_id: str, approve: bool, actor: str, comment: str = "") -> Event:
    """Approve or reject the run's open gate; emits the gate's event in the run's workflow.

    The decision is audited with ``actor`` and ``comment`` in the same transaction. Raises
    :class:`GateClosedError` if the run is not waiting (so a double click does nothing).
    """
    event = _close(correlation_id, "approve" if approve else "reject", actor, comment)
    if event is None:
        raise GateClosedError(f"workflow {correlation_id} is not waiting for a decision")
    return event


def expire_gate(correlation_id: str) -> Event | None:
    """Close a gate whose expiry passed, emitting its timeout event - once, audited as
    ``expire`` by ``system``. None if the run was decided meanwhile (or is not expired)."""
    return _close(correlation_id, "expire", "system", "no decision before the gate expired")


def _close(correlation_id: str, action: str, actor: str, comment: str) -> Event | None:
    store = get_store()
    with store.atomic():
        data = store.close_gate(correlation_id, actor, action, comment, expired=action == "expire")
        if data is None:
            return None
        gate = Gate.from_json(data)
        name = {
            "approve": gate.approve_event,
            "reject": gate.reject_event,
            "expire": gate.timeout_event or gate.reject_event,
        }[action]
        payload = gate.payload if isinstance(gate.payload, dict) else {"value": gate.payload}
        traceparent = telemetry.new_traceparent(f"{action} {name}", gate.traceparent, event=name)
        event = new_event(
            name,
            {**payload, "decidedBy": actor, "comment": comment},
            source="approval",
            correlation_id=correlation_id,
            causation_id=gate.opened_by_job,
            trace_id=traceparent or None,
        )
        write_and_publish(store, [event], priority=gate.priority)
    return event
