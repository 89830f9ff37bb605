"""Standard Django Tasks, run by the toolkit's backend (tests/e2e/test_django_tasks.py)."""

from __future__ import annotations

import asyncio
import os

from tests.proj.recorder import recorder

try:
    from django.tasks import task
except ImportError:  # Django 5.2: the backport
    from django_tasks import task  # type: ignore[no-redef]


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
