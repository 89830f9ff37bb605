"""from_task reads a Celery task as it is: its signature becomes the payload's schema, its
autoretry policy and time limit the lifecycle; what cannot be carried over is refused when
the step is declared."""

from __future__ import annotations

import pytest
from celery import Celery

from celery_workflows import ConfigurationError
from celery_workflows.canvas import TaskFailed, lifecycle_of, payload_schema, task_handler

app = Celery("canvas-unit", set_as_current=False)


@app.task(default_retry_delay=7, autoretry_for=(KeyError,), max_retries=2, soft_time_limit=45)
def fixed(order_id: str, count: int = 1) -> int:
    return count


@app.task(bind=True)
def bound(self, order_id: str, **extra: object) -> str:  # type: ignore[no-untyped-def]
    return f"{self.name}:{order_id}:{sorted(extra)}"


@app.task(autoretry_for=(KeyError,))
def flaky(order_id: str) -> None:
    raise KeyError(order_id)


@app.task(autoretry_for=(KeyError,))
def broken(order_id: str) -> None:
    raise ValueError("no such order")


@app.task
def positional(order_id, /):  # type: ignore[no-untyped-def]
    return order_id


def test_a_fixed_retry_delay_and_a_soft_time_limit_carry_over():
    lifecycle = lifecycle_of(fixed)
    assert lifecycle.max_attempts == 3 and lifecycle.visibility_timeout == 45
    assert (lifecycle.retry.initial_delay, lifecycle.retry.max_delay) == (7, 7)
    assert lifecycle.retry.multiplier == 1 and lifecycle.retry.jitter_factor == 0


def test_the_payload_is_the_tasks_keyword_arguments():
    schema = payload_schema(fixed)
    assert schema.model_validate({"order_id": "o", "count": "2"}).count == 2
    with pytest.raises(ValueError, match="order_id"):
        schema.model_validate({"count": 2})
    with pytest.raises(ValueError, match="colour"):
        schema.model_validate({"order_id": "o", "colour": "red"})
    # a bound task's self is not an argument; **extra lets other keys through to it
    assert set(payload_schema(bound).model_fields) == {"order_id"}
    assert payload_schema(bound).model_validate({"order_id": "o", "note": 1})


def test_a_bound_task_runs_with_itself_and_a_failure_outside_autoretry_is_final():
    handler = task_handler(bound)
    job = type("J", (), {"payload": {"order_id": "o-1", "note": "x"}})()
    assert handler(None, job) == f"{bound.name}:o-1:['note']"
    job = type("J", (), {"payload": {"order_id": "o-1"}})()
    with pytest.raises(KeyError):  # in autoretry_for: the lifecycle retries it
        task_handler(flaky)(None, job)
    with pytest.raises(TaskFailed, match="ValueError: no such order") as failed:
        task_handler(broken)(None, job)
    assert isinstance(failed.value.__cause__, ValueError)


def test_what_cannot_be_a_step_is_refused():
    with pytest.raises(ConfigurationError, match="cannot be given by name"):
        payload_schema(positional)
    from celery_workflows import WorkflowService

    service = WorkflowService("canvasUnit", app)
    with pytest.raises(ConfigurationError, match="is not a Celery task"):
        service.from_task(lambda order_id: order_id)
    spec = service.from_task(fixed, name="fixedStep")
    assert spec.qualified_name == "canvasUnit.fixedStep" and spec.lifecycle.max_attempts == 3
