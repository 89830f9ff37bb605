"""Small helpers shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from celery_workflows.clock import utcnow
from celery_workflows.enqueueing import after_insert, prepare
from celery_workflows.queues import QueueSpec
from celery_workflows.records import EnqueueResult, NewJob, RunStart
from celery_workflows.store import get_store

#: screenshots and other evidence of the browser tests
ARTIFACTS = Path(
    os.environ.get("TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts")
)


#: the test project's manage.py
MANAGE = Path(__file__).resolve().parent / "proj" / "manage.py"


def manage(
    env: Mapping[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python manage.py <args>`` in a subprocess, as an operator runs it from a shell - with
    the system checks that ``call_command`` skips. ``env``: the test database and broker
    (the ``worker_env`` fixture)."""
    return subprocess.run(
        [sys.executable, str(MANAGE), *args],
        env=shell_environment(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def shell_environment(env: Mapping[str, str]) -> dict[str, str]:
    """An operator's shell environment with ``env`` added: without what the browser tests set
    in this process for Playwright (an async-unsafe switch ``check --deploy`` rightly refuses)."""
    inherited = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    return {**inherited, **env}


def postgres_only(reason: str) -> pytest.MarkDecorator:
    """Skip a test unless the test database is PostgreSQL (the test project's default)."""
    on_postgres = os.environ.get("DATABASE_URL", "postgres").startswith("postgres")
    return pytest.mark.skipif(not on_postgres, reason=reason)


def staff(username: str, *perms: str) -> Client:
    """A logged-in client of a staff user holding exactly ``perms`` (codenames)."""
    user = User.objects.create_user(username, password="pw", is_staff=True)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client = Client()
    client.force_login(user)
    return client


def write_unvalidated(spec: QueueSpec, payload: Any, correlation_id: str) -> EnqueueResult:
    """Enqueue without the schema check, as a job written by an older deploy would be."""
    store = get_store()
    job = prepare(spec, payload, available_at=utcnow(), correlation_id=correlation_id)
    result = store.insert_job(job)
    after_insert(store, spec, job, result)
    return result


def started_by_the_old_deploy(key: str, queue: str = "ver.validateStock", **job) -> str:
    """What the previous deploy (definition "v1") wrote for a run it started: the run and its
    first job, through the same store call ``enqueue()`` uses."""
    correlation_id = uuid.uuid4().hex
    get_store().insert_jobs(
        [
            NewJob(
                id=uuid.uuid4().hex,
                service="ver",
                queue=queue,
                payload={"orderId": key},
                max_attempts=3,
                available_at=utcnow(),
                correlation_id=correlation_id,
                published=True,
                starts=RunStart("ver", key, "orderPlaced", version="v1"),
                **job,
            )
        ]
    )
    return correlation_id
