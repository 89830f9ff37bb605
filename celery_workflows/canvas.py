"""From Celery tasks to queue workers: an existing ``@shared_task`` becomes a step unchanged.

A team that runs ``chain(reserve.s(order), charge.s(), ship.s())`` today moves one chain at a
time: :meth:`WorkflowService.from_task <celery_workflows.WorkflowService.from_task>` declares
a queue worker whose handler calls the task's own function, and the chain becomes events and
subscriptions. The task stays a Celery task - ``charge.delay(...)`` elsewhere in the project
keeps working - so nothing has to move at once (``docs/canvas.md`` maps each canvas primitive).

What is carried over from the task:

- **its arguments**: a job's payload is a JSON object of the task's keyword arguments,
  checked against the function's signature (and its annotations) when the job is enqueued,
  so a missing or unexpected argument is refused before anything is written;
- **its retry policy**: ``autoretry_for`` with ``max_retries``, ``retry_backoff``,
  ``retry_backoff_max``, ``retry_jitter`` and ``default_retry_delay`` become the queue's
  :class:`~celery_workflows.lifecycle.Lifecycle`; an exception outside ``autoretry_for``
  fails the job without a retry, as it failed the task (``lifecycle=`` overrides all this);
- **its time limit**: ``soft_time_limit`` (or ``time_limit``) becomes the lease.

What the task may not do inside a step: call ``self.retry()`` or read ``self.request`` (there
is no Celery request around it - raise an exception listed in ``autoretry_for`` instead).
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, create_model

from .context import Job, JobContext
from .errors import ConfigurationError, NonRetryableError
from .lifecycle import Jitter, Lifecycle, RetryStrategy

#: Celery's defaults, for a task that does not set them
CELERY_MAX_RETRIES = 3
CELERY_RETRY_BACKOFF_MAX = 600
CELERY_DEFAULT_RETRY_DELAY = 180


class TaskFailed(NonRetryableError):
    """The task raised an exception outside its ``autoretry_for``: as under Celery, the job
    fails without another attempt (the original exception is its cause)."""


def check_task(task: Any) -> str:
    """The task's name, or raise: ``task`` must be a Celery task object."""
    name = getattr(task, "name", None)
    if not (callable(getattr(task, "run", None)) and isinstance(name, str) and name):
        raise ConfigurationError(
            f"from_task: {task!r} is not a Celery task (decorate it with @shared_task or @app.task)"
        )
    return name


def payload_schema(task: Any) -> type[BaseModel]:
    """A pydantic model of the task's keyword arguments, from its function's signature."""
    fields: dict[str, Any] = {}
    extra: Literal["allow", "forbid"] = "forbid"
    for param in inspect.signature(task.run).parameters.values():
        if param.kind in (param.POSITIONAL_ONLY, param.VAR_POSITIONAL):
            raise ConfigurationError(
                f"from_task({task.name}): parameter {param.name!r} cannot be given by name; "
                "a step's payload is a JSON object of the task's keyword arguments"
            )
        if param.kind == param.VAR_KEYWORD:
            extra = "allow"
            continue
        annotation = Any if param.annotation is param.empty else param.annotation
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (annotation, default)
    name = "".join(part.title() for part in task.name.rsplit(".", 1)[-1].split("_")) + "Args"
    return create_model(name, __config__=ConfigDict(extra=extra), **fields)  # type: ignore[call-overload,no-any-return]


def lifecycle_of(task: Any) -> Lifecycle:
    """The task's retry policy and time limit as a :class:`Lifecycle`."""
    autoretry = tuple(getattr(task, "autoretry_for", ()) or ())
    retries = getattr(task, "max_retries", CELERY_MAX_RETRIES)
    if autoretry and retries is None:
        raise ConfigurationError(
            f"from_task({task.name}): max_retries=None retries for ever; give the step a "
            "lifecycle=Lifecycle(max_attempts=...) instead"
        )
    backoff = getattr(task, "retry_backoff", False)
    if backoff:
        factor = 1 if backoff is True else float(backoff)
        cap = float(getattr(task, "retry_backoff_max", CELERY_RETRY_BACKOFF_MAX))
        retry = RetryStrategy(
            initial_delay=factor,
            max_delay=max(cap, factor),
            multiplier=2,
            jitter=Jitter.FULL if getattr(task, "retry_jitter", True) else Jitter.BAND,
            jitter_factor=0.0 if not getattr(task, "retry_jitter", True) else 0.1,
        )
    else:
        delay = float(getattr(task, "default_retry_delay", CELERY_DEFAULT_RETRY_DELAY) or 0)
        retry = RetryStrategy(initial_delay=delay, max_delay=delay, multiplier=1, jitter_factor=0.0)
    limit = getattr(task, "soft_time_limit", None) or getattr(task, "time_limit", None)
    return Lifecycle(
        visibility_timeout=float(limit) if limit else Lifecycle().visibility_timeout,
        max_attempts=(int(retries) + 1) if autoretry else 1,
        retry=retry,
    )


def task_handler(task: Any) -> Any:
    """The handler that runs ``task``'s function with the job's payload as its arguments."""
    autoretry = tuple(getattr(task, "autoretry_for", ()) or ())

    def handler(ctx: JobContext[Any], job: Job[Any]) -> Any:
        payload = job.payload
        kwargs = payload.model_dump() if isinstance(payload, BaseModel) else dict(payload)
        try:
            return task.run(**kwargs)
        except autoretry:
            raise  # retried as the task's autoretry_for said
        except NonRetryableError:
            raise
        except Exception as exc:
            raise TaskFailed(f"{type(exc).__name__}: {exc}") from exc

    handler.__name__ = handler.__qualname__ = f"run_{task.name.rsplit('.', 1)[-1]}"
    handler.__doc__ = task.run.__doc__
    return handler
