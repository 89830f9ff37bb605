"""Standard Django Tasks, run by the toolkit's backend (tests/e2e/test_django_tasks.py)."""

from __future__ import annotations

import asyncio
import os

from tests.proj.recorder import recorder

try:
    from django.tasks import task
    from django.tasks.signals import task_finished
except ImportError:  # Django 5.2: the backport
    from django_tasks import task  # type: ignore[no-redef]
    from django_tasks.signals import task_finished  # type: ignore[no-redef]


def _note_finished(sender: object, task_result: object, **kwargs: object) -> None:
    """What ``task_finished`` carried, kept where a test can compare it with ``get_result()``
    (the worker builds it from the attempt it just ran, without reading the ledger)."""
    import json

    r = task_result
    seen = {
        "status": str(r.status),  # type: ignore[attr-defined]
        "enqueued_at": r.enqueued_at.isoformat(),  # type: ignore[attr-defined]
        "started_at": r.started_at.isoformat(),  # type: ignore[attr-defined]
        "finished_at": r.finished_at.isoformat(),  # type: ignore[attr-defined]
        "last_attempted_at": r.last_attempted_at.isoformat(),  # type: ignore[attr-defined]
        "errors": [e.exception_class_path for e in r.errors],  # type: ignore[attr-defined]
        "worker_ids": r.worker_ids,  # type: ignore[attr-defined]
        "return_value": r._return_value,  # type: ignore[attr-defined]
    }
    recorder.redis.set(f"task-finished:{r.id}", json.dumps(seen), ex=600)  # type: ignore[attr-defined]


task_finished.connect(_note_finished, dispatch_uid="tests.proj.tasks.finished")


class Unreachable(Exception):
    """The mail server did not answer."""


@task()
def add(a: int, b: int) -> int:
    return a + b


@task(queue_name="emails")
def send_welcome(address: str) -> dict[str, str]:
    return {"sent": address, "pid": str(os.getpid())}


@task()
def flaky_mail(key: str) -> str:
    """Fails its first two attempts, then succeeds."""
    if recorder.redis.incr(f"flaky-mail:{key}") < 3:
        raise Unreachable(f"attempt for {key} timed out")
    return f"delivered {key}"


@task()
def always_fails(key: str) -> None:
    raise ValueError(f"bad address {key}")


@task(takes_context=True)
def which_attempt(context, key: str) -> int:  # type: ignore[no-untyped-def]
    if recorder.redis.incr(f"attempt:{key}") < 2:
        raise Unreachable("first attempt fails")
    return int(context.attempt)


@task()
async def fetch_async(n: int) -> int:
    await asyncio.sleep(0.01)
    return n * 2


@task(queue_name="ranked")
def ranked(label: int) -> None:
    """Notes the order tasks of the ``ranked`` queue run in (tests/e2e/test_priorities.py)."""
    recorder.redis.rpush("ranked:order", label)


# the conformance module's tasks (tests/e2e/test_tasks_contract.py), after the reference's
@task()
def noop_task(*args: object, **kwargs: object) -> None:
    return None


@task()
async def noop_task_async(*args: object, **kwargs: object) -> None:
    return None


@task()
def calculate_meaning_of_life() -> int:
    return 42


@task()
def exits() -> None:
    raise SystemExit(3)


@task(takes_context=True)
def reports_while_running(context, key: str) -> str:  # type: ignore[no-untyped-def]
    """Writes what its own running result says, then waits to be let go."""
    import json
    import time

    running = context.task_result
    recorder.redis.set(
        f"running:{key}",
        json.dumps(
            {
                "status": str(running.status),
                "started_at": running.started_at.isoformat() if running.started_at else None,
                "last_attempted_at": (
                    running.last_attempted_at.isoformat() if running.last_attempted_at else None
                ),
                "worker_ids": running.worker_ids,
            }
        ),
    )
    deadline = time.monotonic() + 20
    while not recorder.redis.exists(f"release:{key}") and time.monotonic() < deadline:
        time.sleep(0.05)
    return "released"
