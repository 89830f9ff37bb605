"""Standard Django Tasks (``@task``, ``enqueue``, ``get_result``) on a real worker through the
toolkit's backend: Django 6's ``django.tasks``, or the ``django-tasks`` backport on 5.2."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction

from celery_workflows import get_job, list_dead_letters
from celery_workflows.clock import utcnow
from celery_workflows.testing import wait_for
from tests.proj import tasks

try:
    from django.tasks import TaskResultStatus, default_task_backend
    from django.tasks.exceptions import InvalidTask as InvalidTaskError
    from django.tasks.exceptions import TaskResultDoesNotExist
except ImportError:  # Django 5.2: the backport
    from django_tasks import TaskResultStatus, default_task_backend  # type: ignore[no-redef]
    from django_tasks.exceptions import (  # type: ignore[no-redef]
        InvalidTaskError,
        TaskResultDoesNotExist,
    )

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("transactional_db")]


@pytest.fixture(scope="module")
def tasks_worker(start_worker):
    return start_worker(["tasks.default", "tasks.emails"], concurrency=2, name="tasks")


def finished(result):
    def done():
        result.refresh()
        return result.is_finished

    wait_for(done, timeout=30, message=f"task {result.id} did not finish: {result.status}")
    return result


def test_a_task_runs_on_a_worker_and_its_result_is_read_back(tasks_worker):
    result = tasks.add.enqueue(2, 3)
    assert result.status == TaskResultStatus.READY and result.backend == "default"
    finished(result)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5
    assert result.attempts == 1 and result.errors == []
    assert result.enqueued_at <= result.started_at <= result.finished_at
    again = default_task_backend.get_result(result.id)  # from anywhere, by id
    assert again.return_value == 5 and again.task.func is tasks.add.func
    assert again.args == [2, 3]


def test_queue_names_route_tasks_and_unknown_ones_are_refused(tasks_worker):
    result = finished(tasks.send_welcome.enqueue("ann@example.com"))
    assert result.return_value["sent"] == "ann@example.com"
    assert get_job(result.id).queue == "tasks.emails"
    with pytest.raises(InvalidTaskError):
        tasks.add.using(queue_name="reports")


def test_a_failing_task_is_retried_and_its_errors_are_listed(tasks_worker):
    result = finished(tasks.flaky_mail.enqueue("k1"))
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == "delivered k1" and result.attempts == 3
    assert [e.exception_class_path for e in result.errors] == ["tests.proj.tasks.Unreachable"] * 2
    assert result.errors[0].exception_class is tasks.Unreachable
    assert "timed out" in result.errors[0].traceback


def test_a_task_that_keeps_failing_ends_failed_and_waits_in_the_dead_letters(tasks_worker):
    result = finished(tasks.always_fails.enqueue("x@"))
    assert result.status == TaskResultStatus.FAILED and result.attempts == 3
    assert [e.exception_class_path for e in result.errors] == ["builtins.ValueError"] * 3
    with pytest.raises(ValueError):
        result.return_value  # noqa: B018 - the API raises for a failed task
    assert result.id in [j.id for j in list_dead_letters("tasks.default", 50)]


def test_run_after_delays_a_task(tasks_worker):
    later = utcnow() + timedelta(seconds=2)
    result = tasks.add.using(run_after=later).enqueue(1, 1)
    finished(result)
    assert result.started_at >= later and result.return_value == 2


def test_context_async_tasks_and_priority(tasks_worker):
    assert finished(tasks.which_attempt.enqueue("c1")).return_value == 2
    assert finished(tasks.fetch_async.enqueue(21)).return_value == 42
    urgent = finished(tasks.add.using(priority=100).enqueue(4, 4))
    assert urgent.return_value == 8 and urgent.task.priority == 100


def test_a_task_enqueued_in_a_rolled_back_transaction_never_runs(tasks_worker):
    with pytest.raises(RuntimeError), transaction.atomic():
        ghost = tasks.add.enqueue(7, 7)
        raise RuntimeError("the view failed after enqueueing")
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result(ghost.id)


@pytest.mark.parametrize(
    "enqueue",
    [
        lambda: tasks.add.enqueue(2, 3),
        lambda: tasks.flaky_mail.enqueue(f"signal-{utcnow().timestamp()}"),
        lambda: tasks.always_fails.enqueue("signal@"),
    ],
    ids=["succeeded", "succeeded-after-retries", "failed"],
)
def test_task_finished_carries_the_result_get_result_reads(tasks_worker, redis_client, enqueue):
    import json

    result = finished(enqueue())
    wait_for(lambda: redis_client.get(f"task-finished:{result.id}"), timeout=10)
    seen = json.loads(redis_client.get(f"task-finished:{result.id}"))
    assert seen == {
        "status": str(result.status),
        "enqueued_at": result.enqueued_at.isoformat(),
        "started_at": result.started_at.isoformat(),
        "finished_at": result.finished_at.isoformat(),
        "last_attempted_at": result.last_attempted_at.isoformat(),
        "errors": [e.exception_class_path for e in result.errors],
        "worker_ids": result.worker_ids,
        "return_value": result.return_value
        if result.status == TaskResultStatus.SUCCESSFUL
        else None,
    }
