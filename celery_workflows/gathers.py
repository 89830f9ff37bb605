"""Map and gather: a step starts one branch job per item of a list, and a later step receives
every branch's result, in item order - a chord whose callback cannot be lost or fire twice.

The mapping step declares ``gather=Gather(each="resize", into="collect")`` and its handler calls
``ctx.map(items)``. With the step's success, in one transaction, the ledger writes a gather
(how many branches, where they gather, what a failed branch means) and one job per item on
``each``, each marked with the gather and its item's index. Each branch's final outcome counts
itself on the gather's row in the outcome's own transaction - one ``UPDATE`` under the run's
lock, the same lock every write of the run takes first - and the outcome that counts the last
branch reads the branches' results (once, by the gather's index) and writes the ``into`` job
with them. So a gather of a thousand branches costs each branch one more statement, never a
scan; a crash before a branch's outcome commits leaves it to be run again, counted once.

``on_failure`` says what a branch that dead-letters means: ``"fail"`` (the default) fails the
run like any dead step - the service compensates or stops, and the queued branches are
cancelled; ``"continue"`` gathers anyway, with ``None`` in that item's place and the failure
listed. The ``into`` step's payload is ``{"results": [...], "failures": [{"index", "error"}]}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from . import registry
from .clock import utcnow
from .errors import ConfigurationError
from .ids import new_id
from .lifecycle import Lifecycle
from .records import ClaimedJob, NewJob, Outbox

#: what a branch that dead-letters means for its gather
ON_BRANCH_FAILURE = ("fail", "continue")
#: (item index, job status, result, dead reason) of one branch job, as the ledger keeps it
BranchRow = tuple[int, str, Any, str]


@dataclass(frozen=True)
class Gather:
    """A mapping step's declaration: branches on ``each``, gathered into ``into``."""

    #: the queue each item runs on (``queue`` of this service, or ``service.queue``)
    each: str
    #: the queue that receives every branch's result
    into: str
    #: ``"fail"``: a dead-lettered branch fails the run; ``"continue"``: gather without it
    on_failure: str = "fail"

    def __post_init__(self) -> None:
        for what, name in (("each", self.each), ("into", self.into)):
            if not isinstance(name, str) or not name:
                raise ConfigurationError(f"Gather: {what} must name a queue, got {name!r}")
        if self.on_failure not in ON_BRANCH_FAILURE:
            raise ConfigurationError(
                f"Gather: on_failure must be one of {ON_BRANCH_FAILURE}, got {self.on_failure!r}"
            )

    def qualified(self, service: str) -> Gather:
        """This declaration with its queue names as ``service.queue``."""
        each, into = (q if "." in q else f"{service}.{q}" for q in (self.each, self.into))
        return Gather(each, into, self.on_failure)


@dataclass(frozen=True)
class GatherStart:
    """A gather a step's success opens: written with its branch jobs, in one transaction."""

    #: the mapping job's id (one gather per mapping job)
    id: str
    correlation_id: str
    #: ``service.queue`` that receives the results
    into: str
    total: int
    on_failure: str
    trace_id: str = ""
    priority: int | None = None


@dataclass(frozen=True)
class Tally:
    """A gather's row after a branch counted itself on it."""

    start: GatherStart
    succeeded: int
    failed: int

    @property
    def complete(self) -> bool:
        return self.succeeded + self.failed >= self.start.total

    @property
    def tolerates_failure(self) -> bool:
        return self.start.on_failure == "continue"


def with_branches(outbox: Outbox, mapping: ClaimedJob, gather: Gather, items: list[Any]) -> Outbox:
    """``outbox`` of the mapping job's success with the gather ``ctx.map(items)`` opens and
    its branch jobs - or, for no items, the gathering job itself."""
    start = GatherStart(
        mapping.id,
        mapping.correlation_id,
        gather.into,
        len(items),
        gather.on_failure,
        mapping.trace_id,
        mapping.priority,
    )
    now = utcnow()
    if not items:
        return replace(outbox, jobs=[*outbox.jobs, gathered_job(start, [], now)])
    branches = branch_jobs(start, gather.each, items, now)
    return replace(outbox, jobs=[*outbox.jobs, *branches], gathers=[start])


def branch_jobs(
    start: GatherStart, each: str, payloads: Sequence[Any], available_at: datetime
) -> list[NewJob]:
    """One job per item on ``each``, marked with the gather and the item's index."""
    spec = registry.get_queue(each)
    return [
        spec.new_job(
            payload,
            available_at=available_at,
            correlation_id=start.correlation_id,
            published=True,
            trace_id=start.trace_id,
            priority=start.priority,
            gather_id=start.id,
            gather_index=index,
        )
        for index, payload in enumerate(payloads)
    ]


def gathered_job(start: GatherStart, branches: Sequence[BranchRow], now: datetime) -> NewJob:
    """The ``into`` job of a complete gather: every item's result in item order (a branch
    re-driven after it died counts by its latest success), and the failures listed."""
    results: list[Any] = [None] * start.total
    errors: dict[int, str] = {}
    for index, status, result, reason in branches:
        if not 0 <= index < start.total:
            continue
        if status == "succeeded":
            results[index] = result
            errors.pop(index, None)
        elif status == "dead" and results[index] is None:
            errors[index] = reason
    failures = [{"index": i, "error": errors[i]} for i in sorted(errors)]
    payload = {"results": results, "failures": failures}
    options: dict[str, Any] = {
        "idempotency_key": f"gather:{start.id}",
        "trace_id": start.trace_id,
        "priority": start.priority,
    }
    spec = registry.queues().get(start.into)
    if spec is None:
        # a deploy removed the queue while the branches ran: the job is written all the same
        # and waits there, where manage.py check's runs-in-flight warnings name it
        return NewJob(
            id=new_id(),
            service=start.into.split(".", 1)[0],
            queue=start.into,
            payload=payload,
            max_attempts=Lifecycle().max_attempts,
            available_at=now,
            correlation_id=start.correlation_id,
            published=False,
            **options,
        )
    return spec.new_job(
        payload, available_at=now, correlation_id=start.correlation_id, published=True, **options
    )
