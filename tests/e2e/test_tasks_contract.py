"""The Django Tasks contract, kept by the toolkit's backend with a real worker.

The backend-agnostic expectations of the reference - Django 6's ``django.tasks`` and the
django-tasks backport (``RealOrangeOne/django-tasks``: ``tests/tests/test_tasks.py`` and the
database backend's ``tests/tests/test_database_backend.py``) - ported here. Each test names the
reference test it follows. Run on Django 5.2 with the backport (``make test-postgres``,
``make test-sqlite``) and on Django 6 with ``django.tasks`` (``make test-django6``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from datetime import timedelta

import django
import pytest
from django.core.exceptions import SuspiciousOperation

from celery_workflows.clock import utcnow
from celery_workflows.testing import wait_for
from tests.proj import tasks as test_tasks

try:
    from django.tasks import TaskResultStatus, default_task_backend, signals
    from django.tasks.exceptions import TaskResultDoesNotExist
    from django.tasks.exceptions import TaskResultMismatch as WrongTask

    API = "django.tasks"
except ImportError:  # Django 5.2: the backport
    from django_tasks import TaskResultStatus, default_task_backend, signals  # type: ignore
    from django_tasks.exceptions import TaskResultDoesNotExist  # type: ignore[no-redef]
    from django_tasks.exceptions import TaskResultMismatch as WrongTask  # type: ignore

    API = "django_tasks"

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("transactional_db")]


@pytest.fixture(scope="module")
def contract_worker(start_worker):
    worker = start_worker(["tasks.default", "tasks.queue-1"], concurrency=2, name="contract")
    yield worker
    worker.stop()


def later():
    """A run_after an hour away: the result stays as enqueue() left it."""
    return utcnow() + timedelta(hours=1)


def finished(result):
    def done():
        result.refresh()
        return result.is_finished

    wait_for(done, timeout=30, message=f"task {result.id} did not finish: {result.status}")
    return result


def test_the_api_under_test_is_djangos_own_on_django_6():
    # make test-django6 runs this module against django.tasks, not the backport
    assert ("django.tasks" if django.VERSION >= (6, 0) else "django_tasks") == API
    assert type(test_tasks.noop_task).__module__.startswith(API)


# test_tasks.py: test_enqueue_task; test_database_backend.py: test_enqueue_task
@pytest.mark.parametrize("task", ["noop_task", "noop_task_async"])
def test_enqueue_task(task):
    chosen = getattr(test_tasks, task).using(run_after=utcnow() + timedelta(hours=1))
    result = chosen.enqueue(1, two=3)
    assert result.status == TaskResultStatus.READY
    assert result.started_at is None and result.finished_at is None
    with pytest.raises(ValueError, match="Task has not finished yet"):
        result.return_value  # noqa: B018
    assert result.task == chosen
    assert (result.args, result.kwargs) == ([1], {"two": 3})


# test_tasks.py: test_enqueue_task_async
def test_enqueue_task_async():
    result = asyncio.run(test_tasks.noop_task.using(run_after=later()).aenqueue())
    assert result.status == TaskResultStatus.READY
    assert (result.args, result.kwargs) == ([], {})


# test_tasks.py: test_get_result; test_database_backend.py: test_get_result
def test_get_result():
    result = default_task_backend.enqueue(test_tasks.noop_task.using(run_after=later()), [], {})
    assert default_task_backend.get_result(result.id) == result


# test_tasks.py: test_get_result_async
def test_get_result_async():
    result = default_task_backend.enqueue(test_tasks.noop_task.using(run_after=later()), [], {})
    assert asyncio.run(default_task_backend.aget_result(result.id)) == result


# test_tasks.py: test_refresh_result
def test_refresh_result():
    result = test_tasks.noop_task.using(run_after=later()).enqueue()
    original = dataclasses.asdict(result)
    result.refresh()
    assert dataclasses.asdict(result) == original
    asyncio.run(result.arefresh())
    assert dataclasses.asdict(result) == original


# test_tasks.py: test_using_priority, test_using_queue_name, test_using_run_after - and what
# using() set comes back with the result
def test_what_using_set_comes_back_with_the_result():
    later = utcnow() + timedelta(hours=2)
    chosen = test_tasks.noop_task.using(priority=37, queue_name="queue-1", run_after=later)
    result = chosen.enqueue()
    again = default_task_backend.get_result(result.id)
    assert again.task == chosen
    assert (again.task.priority, again.task.queue_name, again.task.run_after) == (
        37,
        "queue-1",
        later,
    )


# test_tasks.py: test_get_missing_result; test_database_backend.py: test_invalid_uuid
@pytest.mark.parametrize("result_id", ["123", "0" * 32])
def test_get_missing_result(result_id):
    with pytest.raises(TaskResultDoesNotExist):
        test_tasks.noop_task.get_result(result_id)
    with pytest.raises(TaskResultDoesNotExist):
        asyncio.run(test_tasks.noop_task.aget_result(result_id))


# test_tasks.py: test_get_incorrect_result
def test_get_incorrect_result():
    result = default_task_backend.enqueue(
        test_tasks.noop_task_async.using(run_after=later()), [], {}
    )
    with pytest.raises(WrongTask):
        test_tasks.noop_task.get_result(result.id)


# test_database_backend.py: test_invalid_task_path
def test_invalid_task_path():
    from django_app.models import Job

    result = test_tasks.noop_task.using(run_after=later()).enqueue()
    row = Job.objects.get(id=result.id)
    Job.objects.filter(id=result.id).update(
        payload={**row.payload, "task": "subprocess.check_output", "args": [["exit", "1"]]}
    )
    with pytest.raises(SuspiciousOperation, match=r"'subprocess\.check_output' is not a Task"):
        default_task_backend.get_result(result.id)


# test_database_backend.py: test_run_enqueued_task
@pytest.mark.parametrize("task", ["noop_task", "noop_task_async"])
def test_run_enqueued_task(contract_worker, task):
    result = getattr(test_tasks, task).enqueue()
    finished(result)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert result.return_value is None and result.attempts == 1


# test_database_backend.py: test_doesnt_process_different_queue (its queue is "queue-1")
def test_a_queue_named_with_a_hyphen_runs_its_tasks(contract_worker):
    result = test_tasks.calculate_meaning_of_life.using(queue_name="queue-1").enqueue()
    assert finished(result).return_value == 42


# test_database_backend.py: test_enqueue_logs - and Django's own signals
def test_signals_and_their_log_lines(contract_worker, caplog):
    enqueued = []

    def note(sender, task_result, **kwargs):
        enqueued.append(task_result)

    signals.task_enqueued.connect(note)
    try:
        with caplog.at_level(logging.DEBUG, logger=API):
            result = test_tasks.calculate_meaning_of_life.enqueue()
    finally:
        signals.task_enqueued.disconnect(note)
    assert [r.id for r in enqueued] == [result.id]
    assert any("enqueued" in line and result.id in line for line in caplog.messages)
    finished(result)
    # started and finished are sent in the worker that ran it: its log has the framework's
    # own lines (any worker of the session consuming tasks.default may have run it)
    from tests.conftest import LOG_DIR

    def logs() -> str:
        return "".join(path.read_text(errors="replace") for path in LOG_DIR.glob("*.log"))

    line = f"Task id={result.id} path={result.task.module_path} state="
    wait_for(lambda: f"{line}SUCCESSFUL" in logs(), timeout=10)
    assert f"{line}RUNNING" in logs()


def test_a_running_result_reports_the_attempt_under_way(contract_worker, redis_client):
    result = test_tasks.reports_while_running.enqueue("r-1")
    wait_for(lambda: redis_client.get("running:r-1"), timeout=20)
    seen_inside = json.loads(redis_client.get("running:r-1"))
    result.refresh()
    try:
        assert result.status == TaskResultStatus.RUNNING
        assert result.started_at is not None and result.last_attempted_at is not None
        assert len(result.worker_ids) == 1 and result.attempts == 1
        # and the task's own context says the same
        assert seen_inside["status"] == "RUNNING"
        assert seen_inside["started_at"] == result.started_at.isoformat()
        assert seen_inside["worker_ids"] == result.worker_ids
    finally:
        redis_client.set("release:r-1", 1)
    assert finished(result).return_value == "released"


def test_system_exit_in_a_task_fails_it_at_once_and_the_worker_goes_on(contract_worker):
    result = test_tasks.exits.enqueue()
    finished(result)  # three attempts (MAX_ATTEMPTS) in seconds, not one per 30 s lease
    assert result.status == TaskResultStatus.FAILED
    assert len(result.errors) == 3 and result.attempts == 3
    for error in result.errors:
        assert error.exception_class_path == "builtins.SystemExit"
        assert "SystemExit: 3" in error.traceback
    assert finished(test_tasks.calculate_meaning_of_life.enqueue()).return_value == 42
