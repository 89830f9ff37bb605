"""Human approval gates: a workflow waits until a person approves or rejects.

A step calls ``ctx.wait_for_human(...)``: the run's status becomes ``waiting`` and remembers
which event an approval emits and which a rejection emits. The step then finishes normally;
nothing runs until someone decides - in the admin (Approve / Reject buttons) or in code with
:func:`decide` (a link in an email, a Slack action). The decision emits the chosen event in the
run's workflow, so subscriptions continue it like any other step. A gate is decided once: a
second click finds it closed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from . import registry
from .clock import utcnow
from .errors import GateClosedError
from .events import new_event, write_and_publish
from .payloads import to_json
from .records import Event
from .store import Runs, get_store


@dataclass(frozen=True)
class Gate:
    prompt: str
    approve_event: str
    reject_event: str
    payload: Any
    opened_by_job: str
    opened_at: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Gate:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


def open_gate(
    runs: Runs,
    correlation_id: str,
    job_id: str,
    prompt: str,
    approve_event: str,
    reject_event: str,
    payload: Any,
) -> Gate:
    for name in (approve_event, reject_event):
        registry.check_name("event", name)
    gate = Gate(
        prompt=prompt,
        approve_event=approve_event,
        reject_event=reject_event,
        payload=to_json(f"approval gate {prompt!r}", payload),
        opened_by_job=job_id,
        opened_at=utcnow().isoformat(),
    )
    runs.open_gate(correlation_id, gate.to_json())
    return gate


def decide(correlation_id: str, approve: bool, actor: str, comment: str = "") -> Event:
    """Approve or reject the run's open gate; emits the gate's event in the run's workflow.

    The decision is audited with ``actor`` and ``comment`` in the same transaction. Raises
    :class:`GateClosedError` if the run is not waiting (so a double click does nothing).
    """
    store = get_store()
    with store.atomic():
        data = store.close_gate(correlation_id, actor, approve, comment)
        if data is None:
            raise GateClosedError(f"workflow {correlation_id} is not waiting for a decision")
        gate = Gate.from_json(data)
        payload = gate.payload if isinstance(gate.payload, dict) else {"value": gate.payload}
        event = new_event(
            gate.approve_event if approve else gate.reject_event,
            {**payload, "decidedBy": actor, "comment": comment},
            source="approval",
            correlation_id=correlation_id,
            causation_id=gate.opened_by_job,
            trace_id=None,
        )
        write_and_publish(store, [event])
    return event
