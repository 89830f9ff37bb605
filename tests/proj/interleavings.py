"""The workflow the stateful test drives through random interleavings (its store calls stand
in for workers; no worker consumes these queues).

    propStarted -> a -aDone-> b   (a and b are undone by undo_a and undo_b)
                         \\-> c -(map: two branches)-> e, e -(gather)-> f
    a may open an approval gate: propApproved -> d, propRejected ends the flow
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery_workflows import Gather, Job, JobContext, Lifecycle, RetryStrategy, WorkflowService
from tests.proj.celery_app import app

prop = WorkflowService("prop", app, business_key="key")
#: retries come at once, so a retried job is claimable in the same example
LIFECYCLE = Lifecycle(
    visibility_timeout=30,
    max_attempts=2,
    retry=RetryStrategy(initial_delay=0.0, max_delay=0.0, jitter_factor=0.0),
)


def _nothing(ctx: JobContext[Any], job: Job[Any]) -> None:
    """Never run: the test writes each attempt's outcome itself."""


for _name, _undo in (("a", "undo_a"), ("b", "undo_b"), ("c", None), ("d", None)):
    prop.queue_worker(
        _name,
        f"step {_name}",
        emits=["aDone", "propApproved", "propRejected"] if _name == "a" else [],
        lifecycle=LIFECYCLE,
        compensate_with=_undo,
        gather=Gather(each="e", into="f") if _name == "c" else None,
    )(_nothing)
for _name in ("e", "f"):
    prop.queue_worker(_name, f"step {_name}", lifecycle=LIFECYCLE)(_nothing)
#: how many branches c's success maps onto e
BRANCHES = 2
for _undo in ("undo_a", "undo_b"):
    prop.queue_worker(_undo, f"undoes {_undo[-1]}", lifecycle=LIFECYCLE)(_nothing)

prop.event("propStarted")
prop.event("propRejected", terminal=True)
prop.event("propTimedOut", terminal=True)
prop.subscribe("propStarted", enqueue="a")
prop.subscribe("aDone", enqueue="b")
prop.subscribe("aDone", enqueue="c")
prop.subscribe("propApproved", enqueue="d")

#: fired by the stateful test, at chosen times
prop.schedule(
    "nightly",
    every=timedelta(hours=1),
    emit="propStarted",
    payload={"key": "nightly"},
    concurrency="forbid",
)

#: steps whose completion is undone when their run stops
UNDONE = {"prop.a": "prop.undo_a", "prop.b": "prop.undo_b"}
QUEUES = sorted(spec.qualified_name for spec in prop.queues.values())
