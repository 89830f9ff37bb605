"""A Django Tasks backend: standard ``@task`` functions run as leased, retried, dead-lettered
queue workers, with results read back through the standard API.

Django 6 ships the API as ``django.tasks``; on Django 5.2 the ``django-tasks`` package
backports it (``django_tasks``). Configure::

    TASKS = {
        "default": {
            "BACKEND": "celery_workflows.contrib.tasks.Backend",
            "QUEUES": ["default", "emails"],
            "OPTIONS": {"max_attempts": 3, "visibility_timeout": 300},
        }
    }

Each Tasks queue is a queue worker of the service ``tasks`` (``tasks_<alias>`` for another
alias than ``default``), so the Celery queue is ``tasks.default``, ``tasks.emails``, ... and
``celery worker`` consumes them like any declared queue. A job's ledger row is the task
result: ``get_result()`` reads it, any process may call it.

Semantics, as the API documents them:

- ``enqueue()`` writes the job in the caller's transaction and publishes it when that commits
  (what ``transaction.on_commit(lambda: task.enqueue(...))`` is for elsewhere; here a rolled
  back transaction enqueues nothing).
- ``run_after`` delays the job (it waits in the ledger, not in the broker).
- ``priority`` (-100 to 100, higher first) maps evenly to the toolkit's 0-9 (higher first on
  every broker; see :mod:`celery_workflows.priorities`): -100 -> 0, 0 (the default) -> 5, 100
  -> 9.
- A task that raises (anything, ``SystemExit`` included) is retried with the queue's backoff
  up to ``max_attempts``; the result is ``READY`` between attempts and ``FAILED`` once it is
  dead-lettered - where the admin shows it and an operator can re-drive it. ``errors`` lists
  every failed attempt.
- ``async def`` tasks and ``takes_context=True`` (``context.attempt`` counts attempts) work.
- ``get_result()`` gives back the task as ``using()`` set it, ``enqueued_at`` as stored, and
  for a running task the attempt under way; a row that names something else than a task is a
  ``SuspiciousOperation``.
- Signals: ``task_enqueued`` when the job is there to run (on commit), ``task_started`` at
  every attempt, ``task_finished`` once, when the result is final.

``OPTIONS``: ``max_attempts`` (default 1, as the Tasks API has no retries of its own),
``visibility_timeout`` (seconds, default 300), ``initial_delay``/``max_delay``/``jitter``
(the retry backoff), ``celery_app`` (dotted path; default: Celery's current app).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured, SuspiciousOperation
from django.db.transaction import on_commit
from django.utils.module_loading import import_string

from .. import registry
from ..clock import utcnow
from ..errors import JobNotFoundError, NonRetryableError
from ..lease import worker_name
from ..lifecycle import Lifecycle, RetryStrategy
from ..middleware import AttemptInfo, Middleware
from ..records import JobRecord, JobStatus, Outcome
from ..service import WorkflowService

try:  # Django 6
    from django.tasks import TaskResultStatus, task_backends
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import Task, TaskContext, TaskError, TaskResult
    from django.tasks.exceptions import TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
except ImportError:  # Django 5.2 with the django-tasks backport
    from django_tasks import TaskResultStatus, task_backends  # type: ignore[no-redef,assignment]
    from django_tasks.backends.base import BaseTaskBackend  # type: ignore[no-redef,assignment]
    from django_tasks.base import (  # type: ignore[no-redef,assignment]
        Task,
        TaskContext,
        TaskError,
        TaskResult,
    )
    from django_tasks.exceptions import TaskResultDoesNotExist  # type: ignore[no-redef,assignment]
    from django_tasks.signals import (  # type: ignore[no-redef,assignment]
        task_enqueued,
        task_finished,
        task_started,
    )

if TYPE_CHECKING:  # Django 6's generics (the backport's TaskResult takes one parameter)
    AnyTask = Task[Any, Any]
    AnyResult = TaskResult[Any, Any]
BACKEND_PATH = "celery_workflows.contrib.tasks.Backend"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,99}$")

_STATUS = {
    JobStatus.QUEUED: TaskResultStatus.READY,
    JobStatus.RUNNING: TaskResultStatus.RUNNING,
    JobStatus.SUCCEEDED: TaskResultStatus.SUCCESSFUL,
    JobStatus.DEAD: TaskResultStatus.FAILED,
    JobStatus.CANCELLED: TaskResultStatus.FAILED,
}


class Backend(BaseTaskBackend):
    """Runs Django Tasks on Celery workers through the ledger (see the module docstring)."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        options = {k.lower(): v for k, v in self.options.items()}
        app_path = options.get("celery_app")
        if app_path:
            celery_app = import_string(app_path)
        else:
            from celery._state import get_current_app

            celery_app = get_current_app()
            if celery_app.main in (None, "default"):  # Celery's fallback: no app was created
                raise ImproperlyConfigured(
                    f"TASKS[{alias!r}]: no Celery app is loaded yet; set OPTIONS['CELERY_APP'] "
                    "to its dotted path (e.g. 'shop.celery.app')"
                )
        try:
            lifecycle = Lifecycle(
                visibility_timeout=float(options.get("visibility_timeout", 300)),
                max_attempts=int(options.get("max_attempts", 1)),
                retry=RetryStrategy(
                    initial_delay=float(options.get("initial_delay", 5)),
                    max_delay=float(options.get("max_delay", 300)),
                    jitter=options.get("jitter", "band"),
                ),
            )
        except (TypeError, ValueError) as exc:
            raise ImproperlyConfigured(f"TASKS[{alias!r}]['OPTIONS']: {exc}") from exc
        name = "tasks" if alias == "default" else f"tasks_{alias}"
        if not _aliases:
            registry.add_middleware(_signals)
        _aliases[name] = alias
        existing = registry.services().get(name)
        if isinstance(existing, WorkflowService):
            self.service = existing  # settings reloaded in the same process
        else:
            self.service = WorkflowService(name, celery_app)
        for queue in sorted(self.queues):
            if not _NAME.match(queue):
                raise ImproperlyConfigured(
                    f"TASKS[{alias!r}]['QUEUES']: {queue!r} is not a valid queue name "
                    "(a letter, then letters, digits, '_' or '-')"
                )
            if queue not in self.service.queues:
                self.service.queue_worker(
                    queue, f"Django Tasks queue {queue!r}", lifecycle=lifecycle
                )(_run)

    def enqueue(self, task: AnyTask, args: Any, kwargs: Any) -> AnyResult:  # type: ignore[override]
        self.validate_task(task)
        result: AnyResult = TaskResult(
            task=task,
            id="pending",
            status=TaskResultStatus.READY,
            enqueued_at=None,
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=args,
            kwargs=kwargs,
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        # what using() set travels with the job, so get_result() gives back the same task
        payload = {
            "task": task.module_path,
            "args": result.args,
            "kwargs": result.kwargs,
            "priority": task.priority,
            "run_after": task.run_after.isoformat() if task.run_after else None,
        }
        job = self.service.enqueue(
            task.queue_name,
            payload,
            eta=task.run_after if task.run_after and task.run_after > utcnow() else None,
            priority=job_priority(task.priority),
        )
        object.__setattr__(result, "id", job.job_id)
        object.__setattr__(result, "enqueued_at", job.created_at)  # as stored
        # sent when the job is there to be run: at once, or when the caller's transaction
        # commits (a rolled-back enqueue announces nothing)
        on_commit(lambda: task_enqueued.send(type(self), task_result=result))
        return result

    def get_result(self, result_id: str) -> AnyResult:
        from ..jobs import get_job

        try:
            job = get_job(result_id)
        except JobNotFoundError:
            raise TaskResultDoesNotExist(result_id) from None
        if job.service != self.service.name or not isinstance(job.payload, dict):
            raise TaskResultDoesNotExist(result_id)
        return _result(self._task_of(job), job, self.alias)

    def _task_of(self, job: JobRecord) -> AnyTask:
        """The task a job runs, as ``using()`` set it when it was enqueued."""
        path = job.payload.get("task")
        try:
            task = import_string(path) if isinstance(path, str) else None
        except ImportError as exc:
            raise TaskResultDoesNotExist(f"{job.id}: its task is gone ({exc})") from None
        if not isinstance(task, Task):
            # a row that names something else than a task: not something to call or trust
            raise SuspiciousOperation(f"task result {job.id}: {path!r} is not a Task")
        run_after = job.payload.get("run_after")
        return task.using(
            priority=job.payload.get("priority"),
            queue_name=job.queue.split(".", 1)[1],
            run_after=datetime.fromisoformat(run_after) if run_after else None,
            backend=self.alias,
        )


def declare_configured_backends() -> None:
    """Create this package's backends named in ``settings.TASKS`` now, so that every process
    - a worker that never enqueues, too - declares their queues when Django starts."""
    from django.conf import settings

    for alias, config in (getattr(settings, "TASKS", None) or {}).items():
        if config.get("BACKEND") == BACKEND_PATH:
            task_backends[alias]  # creating it declares the queues


def job_priority(priority: int) -> int:
    """Tasks' -100..100 as the toolkit's 0..9 - both higher first, evenly: -100 -> 0, the
    default 0 -> 5, 100 -> 9 (see :mod:`celery_workflows.priorities`)."""
    return max(0, min(9, math.floor((priority + 100) * 9 / 200 + 0.5)))


def _run(ctx: Any, job: Any) -> Any:
    """The queue worker behind every Tasks queue: call the task, return its JSON result."""
    payload = job.payload
    try:
        task = import_string(payload["task"])
    except (ImportError, KeyError, TypeError) as exc:
        raise NonRetryableError(f"cannot import the task of job {job.id}: {exc}") from exc
    if not isinstance(task, Task):
        raise NonRetryableError(f"{payload['task']} is not a Django Tasks task")
    args, kwargs = payload.get("args", []), payload.get("kwargs", {})
    backend = task_backends[task.backend]
    current = _running_result(task, ctx, job, backend.alias)
    _running[job.id] = current  # what task_finished reports, once the outcome is written
    task_started.send(type(backend), task_result=current)
    if task.takes_context:
        value = task.call(TaskContext(task_result=current), *args, **kwargs)
    else:
        value = task.call(*args, **kwargs)
    return _normalize(value)


def _running_result(task: AnyTask, ctx: Any, job: Any, alias: str) -> AnyResult:
    """The task's result while this attempt runs, from what the claim read - no query."""
    earlier = ctx.attempt_history
    started = ctx.started_at
    result: AnyResult = TaskResult(
        task=task,
        id=job.id,
        status=TaskResultStatus.RUNNING,
        enqueued_at=job.enqueued_at,
        started_at=_at(earlier[0]["started_at"]) if earlier else started,
        finished_at=None,
        last_attempted_at=started,
        args=job.payload.get("args", []),
        kwargs=job.payload.get("kwargs", {}),
        backend=alias,
        errors=list(_errors(earlier)),
        worker_ids=[*(a.get("worker", "") for a in earlier), worker_name()],
    )
    return result


class TaskSignals(Middleware):
    """Sends ``task_finished`` once a Tasks job's result is final - succeeded, or failed for
    good - after the outcome is written (a retried attempt is not the task's end)."""

    def after_outcome(self, attempt: AttemptInfo, outcome: Outcome | None) -> None:
        running = _running.pop(attempt.job_id, None)
        if outcome is None or outcome.status not in (JobStatus.SUCCEEDED, JobStatus.DEAD):
            return
        alias = _aliases.get(attempt.queue.split(".", 1)[0])
        if alias is None:
            return
        backend = task_backends[alias]
        # the result as get_result() would read it back, from the attempt that just ran here
        # (no query); an outcome the sweeper wrote (an expired lease) reads the ledger
        result = (
            _finished(running, outcome)
            if running is not None
            else backend.get_result(attempt.job_id)
        )
        task_finished.send(type(backend), task_result=result)


#: Tasks service name -> its backend's alias
_aliases: dict[str, str] = {}
_signals = TaskSignals()
#: job id -> its task's result while an attempt of it runs in this process
_running: dict[str, AnyResult] = {}


def _finished(running: AnyResult, outcome: Outcome) -> AnyResult:
    """The running result, ended by ``outcome`` (succeeded, or dead-lettered)."""
    attempt = outcome.attempt.to_json()
    failed = outcome.status != JobStatus.SUCCEEDED
    result: AnyResult = dataclasses.replace(
        running,
        status=_STATUS[outcome.status],
        finished_at=outcome.attempt.finished_at,
        errors=[*running.errors, *_errors([attempt])] if failed else list(running.errors),
    )
    if not failed:
        object.__setattr__(result, "_return_value", outcome.result)
    return result


def _normalize(value: Any) -> Any:
    try:  # Django 6
        from django.utils.json import normalize_json  # type: ignore[attr-defined]
    except ImportError:
        from django_tasks.utils import normalize_json
    return normalize_json(value)


def _result(task: AnyTask, job: JobRecord, alias: str) -> AnyResult:
    log = job.attempt_log
    workers = [a.get("worker", "") for a in log]
    status = _STATUS.get(job.status, TaskResultStatus.READY)
    first = _at(log[0]["started_at"]) if log else None
    last = _at(log[-1]["started_at"]) if log else None
    if job.status == JobStatus.RUNNING:  # the attempt under way is not in the log yet
        workers.append(job.worker)
        first = first or job.started_at
        last = job.started_at
    result: AnyResult = TaskResult(
        task=task,
        id=job.id,
        status=status,
        enqueued_at=job.created_at,
        started_at=first,
        finished_at=job.finished_at if job.status in _FINISHED else None,
        last_attempted_at=last,
        args=job.payload.get("args", []),
        kwargs=job.payload.get("kwargs", {}),
        backend=alias,
        errors=list(_errors(log)),
        worker_ids=workers,
    )
    if job.status == JobStatus.SUCCEEDED:
        object.__setattr__(result, "_return_value", job.result)
    return result


_FINISHED = (JobStatus.SUCCEEDED, JobStatus.DEAD, JobStatus.CANCELLED)


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _errors(log: Iterable[dict[str, Any]]) -> Iterable[TaskError]:
    for attempt in log:
        if attempt.get("outcome") == "succeeded":
            continue
        traceback = attempt.get("traceback") or attempt.get("error", "")
        yield TaskError(exception_class_path=_exception_path(attempt), traceback=traceback)


def _exception_path(attempt: dict[str, Any]) -> str:
    """The raised class's dotted path, read from the traceback's last line (``module.Class:
    message``; built-ins carry no module). An attempt without one lost its lease."""
    lines = (attempt.get("traceback") or "").strip().splitlines()
    if not lines:
        return "celery_workflows.errors.LeaseExpired"
    name = lines[-1].split(":", 1)[0].strip()
    return name if "." in name else f"builtins.{name}"
