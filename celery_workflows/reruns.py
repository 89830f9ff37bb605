"""Rerun from a step: a new run of a finished one, starting at a chosen step, with the earlier
steps' recorded results kept - what Temporal's reset and DBOS's fork give.

:func:`rerun` copies the steps that had started by the time the chosen step's job was created
(siblings of a fan-out included) and completed into a new run - succeeded, with their results,
attempts and the events they emitted, so a join in the new run counts them; they do not run
again - and starts the chosen step there with its payload, or an edited one (validated first).
The new run has the
old one's service and business key, and says what it reruns in ``started_by``; both runs'
audit trails record who did it, from which step, and the payload before and after. The old
run is not touched.

Only a finished run can be rerun (an open one is still being decided), and not from after a
step whose work its compensation undid: that step's recorded result no longer holds. Rerun
from that step, or earlier, instead.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from . import registry
from .clock import utcnow
from .deadletter import DEFAULT_ACTOR, KEEP_PAYLOAD
from .enqueueing import after_insert
from .errors import RerunRefusedError
from .ids import new_id
from .records import CopiedStep, Event, HistoryEntry, JobStatus, RunStatus
from .store import get_store


def rerun(
    run: str,
    from_step: str,
    payload: Any = KEEP_PAYLOAD,
    *,
    actor: str = DEFAULT_ACTOR,
) -> str:
    """Start a new run of finished run ``run`` (correlation id or business key) from
    ``from_step`` - a job id of that run, or a queue (``service.queue``: its latest job) -
    with that step's payload or ``payload``; return the new run's correlation id. Raises
    :class:`RerunRefusedError` (nothing written) when the run is open, the step is not one of
    its forward steps, or an earlier step was undone; a bad payload raises as ``enqueue`` does.
    """
    store = get_store()
    status = store.get_workflow(run)
    if not RunStatus(status.status).is_final:
        raise RerunRefusedError(
            f"run {status.correlation_id} is {status.status}: only a finished run is rerun"
        )
    jobs = [h for h in status.history if h.kind == "job"]
    chosen = _step(jobs, from_step, status.correlation_id)
    undone = {h.compensates for h in jobs if h.compensates and h.status == JobStatus.SUCCEEDED}
    # started no later than the chosen step (siblings of a fan-out included) and completed
    earlier = [
        h
        for h in jobs
        if not h.compensates
        and h.status == JobStatus.SUCCEEDED
        and h.at <= chosen.at
        and h.id != chosen.id
    ]
    if any(h.id in undone for h in earlier):
        first = min((h for h in earlier if h.id in undone), key=lambda h: h.at)
        raise RerunRefusedError(
            f"run {status.correlation_id}: step {first.name} (job {first.id}) before "
            f"{chosen.name} was undone by its compensation, so its result no longer holds; "
            f"rerun from {first.name} or earlier"
        )
    spec = registry.get_queue(chosen.name)
    edited = payload is not KEEP_PAYLOAD
    body = spec.validate_payload(payload if edited else chosen.payload)
    correlation_id = new_id()
    owner = registry.services()[spec.service]
    start = dataclasses.replace(
        owner.run_start(spec.qualified_name, body),  # the service's deadline and version
        name=status.name,
        business_key=status.business_key,
        started_by=f"rerun of {status.correlation_id} from {chosen.name}"[:201],
    )
    job = spec.new_job(
        body,
        available_at=utcnow(),
        correlation_id=correlation_id,
        published=True,
        starts=start,
        trace_id="",
    )
    copies = [_copy(h, correlation_id) for h in earlier]
    # the events the kept steps emitted come along (a join in the new run counts them)
    new_ids = {h.id: c.job.id for h, c in zip(earlier, copies, strict=True)}
    events = [
        Event(
            id=new_id(),
            name=h.name,
            payload=h.payload,
            correlation_id=correlation_id,
            causation_id=new_ids[h.caused_by],
            trace_id="",
            emitted_at=h.at,
            source=h.status,
        )
        for h in status.history
        if h.kind == "event" and h.caused_by in new_ids
    ]
    detail: dict[str, Any] = {
        "rerun_of": status.correlation_id,
        "new_run": correlation_id,
        "from_step": chosen.name,
        "from_job": chosen.id,
        "copied_jobs": [h.id for h in earlier],
    }
    if edited:
        detail.update(payload_before=chosen.payload, payload_after=body)
    result = store.start_rerun(status.correlation_id, copies, events, job, actor, detail)
    after_insert(store, spec, job, result)
    return correlation_id


def _step(jobs: list[HistoryEntry], from_step: str, correlation_id: str) -> HistoryEntry:
    forward = [h for h in jobs if not h.compensates]
    by_id = [h for h in forward if h.id == from_step]
    if by_id:
        return by_id[0]
    of_queue = [h for h in forward if h.name == from_step]
    if of_queue:
        return max(of_queue, key=lambda h: h.at)
    steps = ", ".join(sorted({h.name for h in forward})) or "none"
    raise RerunRefusedError(
        f"run {correlation_id} has no forward step {from_step!r} (a job id, or one of: {steps})"
    )


def _copy(step: HistoryEntry, correlation_id: str) -> CopiedStep:
    spec = registry.get_queue(step.name)
    attempts = step.attempts or [{}]
    finished = attempts[-1].get("finished_at")
    return CopiedStep(
        job=spec.new_job(
            step.payload,
            available_at=step.at,
            correlation_id=correlation_id,
            published=False,
            caused_by=None,
        ),
        result=step.result,
        attempts=len(step.attempts),
        attempt_log=list(step.attempts),
        finished_at=datetime.fromisoformat(finished) if finished else step.at,
        created_at=step.at,
    )
