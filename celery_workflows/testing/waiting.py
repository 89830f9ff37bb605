"""Waiting with a deadline instead of sleeping: for a condition, or for a run to finish."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from ..records import HistoryEntry, WorkflowStatus

T = TypeVar("T")

#: statuses a run does not leave by itself
FINAL = ("completed", "compensated", "dead_lettered", "cancelled")


class WaitTimeout(AssertionError):
    """The awaited condition did not hold before the deadline."""


def wait_for(
    predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, message: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(message or f"condition not met within {timeout}s")
        time.sleep(interval)


def wait_for_run(
    id_or_business_key: str, status: str | Iterable[str] = FINAL, timeout: float = 30.0
) -> WorkflowStatus:
    """Wait until the run is in ``status`` (by default: any final status) and return it.

    On timeout the error says where the run stands - its status and current step - which is
    usually the first thing a failing test needs to know.
    """
    from ..errors import WorkflowNotFoundError
    from ..status import get_workflow

    wanted = {status} if isinstance(status, str) else set(status)
    seen: list[WorkflowStatus] = []

    def reached() -> WorkflowStatus | None:
        try:
            run = get_workflow(id_or_business_key)
        except WorkflowNotFoundError:
            return None
        seen[:] = [run]
        return run if run.status in wanted else None

    try:
        found = wait_for(reached, timeout=timeout, interval=0.1)
    except WaitTimeout:
        where = (
            f"it is {seen[0].status} at step {seen[0].current_step or '-'}"
            if seen
            else "no such run exists"
        )
        raise WaitTimeout(
            f"run {id_or_business_key} did not reach {sorted(wanted)} within {timeout}s: {where}"
        ) from None
    assert found is not None  # wait_for returns only a truthy value
    return found


def wait_for_step(
    id_or_business_key: str, queue: str, status: str = "succeeded", timeout: float = 30.0
) -> HistoryEntry:
    """Wait until a job of ``queue`` (``service.queue``) in the run is in ``status``, and
    return it (the newest such job): a gather's or a join's step, whose ``payload`` is what it
    received - every branch's result, every event's payload.

    On timeout the error lists the run's jobs of that queue and their statuses.
    """
    from ..errors import WorkflowNotFoundError
    from ..status import get_workflow

    seen: list[HistoryEntry] = []

    def reached() -> HistoryEntry | None:
        try:
            run = get_workflow(id_or_business_key)
        except WorkflowNotFoundError:
            return None
        seen[:] = [h for h in run.history if h.kind == "job" and h.name == queue]
        done = [h for h in seen if h.status == status]
        return done[-1] if done else None

    try:
        found = wait_for(reached, timeout=timeout, interval=0.1)
    except WaitTimeout:
        where = ", ".join(h.status for h in seen) or "none yet"
        raise WaitTimeout(
            f"run {id_or_business_key}: no {queue} job {status} within {timeout}s "
            f"(its {queue} jobs: {where})"
        ) from None
    assert found is not None  # wait_for returns only a truthy value
    return found
