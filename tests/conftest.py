"""Fixtures that start real services' clients and real Celery worker processes.

Behaviour tests run against the database pytest-django creates (PostgreSQL, or a SQLite file)
and the broker named by ``CELERY_BROKER_URL`` (a Redis database, or a RabbitMQ vhost); worker
subprocesses are pointed at the same test database through ``DATABASE_URL``. Handlers report
what they did into the Redis database ``TEST_REDIS_URL`` (the broker's, when that is Redis).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from celery_workflows.testing import WorkerProcess, wait_for

BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/11")
os.environ["CELERY_BROKER_URL"] = BROKER_URL
REDIS_URL = os.environ.get(
    "TEST_REDIS_URL", BROKER_URL if BROKER_URL.startswith("redis") else "redis://127.0.0.1:6379/2"
)
os.environ["TEST_REDIS_URL"] = REDIS_URL
LOG_DIR = (
    Path(os.environ.get("TEST_ARTIFACTS", tempfile.gettempdir())) / f"cw-worker-logs-{os.getpid()}"
)


def _database_url() -> str:
    from django.db import connection

    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    scheme = {"postgresql": "postgres", "mysql": "mysql"}[connection.vendor]
    port = f":{s['PORT']}" if s.get("PORT") else ""
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    return f"{scheme}://{s['USER']}{password}@{s['HOST']}{port}/{s['NAME']}"


def reopen_if_dropped(django_db_blocker: Any) -> None:
    """Reopen this process's database connection when the server dropped it.

    Workers reconnect by themselves (``django_app.reconnect``); the test process is a plain
    Django process that never calls ``close_old_connections()``, so a connection the server
    dropped earlier (``pg_terminate_backend`` in the connection tests, a restart) would fail
    a later test for a reason that has nothing to do with it.
    """
    from django.db import connection

    if connection.connection is None or connection.in_atomic_block:
        return
    with django_db_blocker.unblock():
        if not connection.is_usable():
            connection.close()


@pytest.fixture(scope="session", autouse=True)
def _flush_despite_busy_workers() -> Iterator[None]:
    """Between transactional tests pytest-django empties every table with one TRUNCATE, while
    the session's worker processes keep sweeping and finishing jobs on the same database; now
    and then PostgreSQL picks the TRUNCATE as a deadlock's victim. It is tried again - that is
    the test database's housekeeping, not what a test checks."""
    from django.core.management.base import CommandError
    from django.db import OperationalError
    from django.test import TransactionTestCase

    flush = TransactionTestCase._fixture_teardown

    def retried(self: TransactionTestCase) -> None:
        for attempt in range(3):
            try:
                flush(self)
                return
            except (OperationalError, CommandError) as exc:
                # flush reports the database's error as a CommandError caused by it
                if "deadlock" not in f"{exc} {exc.__cause__}" or attempt == 2:
                    raise

    TransactionTestCase._fixture_teardown = retried  # type: ignore[method-assign]
    yield
    TransactionTestCase._fixture_teardown = flush  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _usable_test_connection(request: pytest.FixtureRequest) -> None:
    from django.db import connection

    if connection.connection is not None:
        reopen_if_dropped(request.getfixturevalue("django_db_blocker"))


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    """Each test starts with an empty Django cache: the admin caches figures (runs by status,
    for seconds), which a page of one test would otherwise hand to the next test's view."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(scope="session")
def redis_client() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL)
    client.ping()
    client.flushdb()
    return client


@pytest.fixture(scope="session")
def worker_env(django_db_setup: None, django_db_blocker: object) -> dict[str, str]:
    """Environment for worker subprocesses: the test database and the test broker."""
    with django_db_blocker.unblock():  # type: ignore[attr-defined]
        url = _database_url()
    return {"DATABASE_URL": url, "CELERY_BROKER_URL": BROKER_URL, "TEST_REDIS_URL": REDIS_URL}


_STARTED_IN_THIS_MODULE: list[WorkerProcess] = []


@pytest.fixture(scope="module", autouse=True)
def _stop_this_modules_workers() -> Iterator[None]:
    """The workers a module's tests start stop when the module ends (the session's own workers
    stay). Each idle worker sweeps every 0.2 s; kept to the end, the workers of earlier modules
    took a core of a two-core machine and starved the timing of later modules' tests."""
    yield
    stopping, _STARTED_IN_THIS_MODULE[:] = list(_STARTED_IN_THIS_MODULE), []
    stop_all(stopping)


def stop_all(workers: list[WorkerProcess], timeout: float = 5.0) -> None:
    """Warm shutdown for all at once (each hands back what it holds); SIGKILL after ``timeout``."""
    for worker in workers:
        worker.terminate()
    deadline = time.monotonic() + timeout
    for worker in workers:
        worker.stop(timeout=max(0.1, deadline - time.monotonic()))


@pytest.fixture(scope="session")
def start_worker(
    worker_env: dict[str, str], redis_client: redis.Redis, django_db_blocker: object
) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: start a ``celery worker`` subprocess on the given queues; all stop at the end."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    started: list[WorkerProcess] = []

    def start(
        queues: list[str],
        concurrency: int = 2,
        name: str = "w",
        republish_after: float | None = None,
        continuations: int | None = None,
        log_format: str | None = None,
        extra_env: dict[str, str] | None = None,
        for_session: bool = False,
    ) -> WorkerProcess:
        """Start a worker; it stops when the module that started it ends, unless ``for_session``."""
        env = {**worker_env, **(extra_env or {})}
        if log_format is not None:
            env["WORKFLOWS_LOG_FORMAT"] = log_format
        if republish_after is not None:
            env["WORKFLOWS_REPUBLISH_AFTER"] = str(republish_after)
        if continuations is not None:
            env["WORKFLOWS_LOCAL_CONTINUATIONS"] = str(continuations)
        worker = WorkerProcess(
            "tests.proj.celery_app",
            queues,
            concurrency=concurrency,
            env=env,
            hostname=f"{name}{len(started)}@%h",
            log_path=str(LOG_DIR / f"{name}{len(started)}.log"),
        ).start()
        started.append(worker)
        if not for_session:
            _STARTED_IN_THIS_MODULE.append(worker)
        # a test's timeouts count from a consuming worker, not from a boot slowed by a busy machine
        worker.wait_ready(timeout=90)
        return worker

    yield start
    for worker in started:
        worker.kill()
    _wait_for_worker_sessions_to_close(django_db_blocker)


def _wait_for_worker_sessions_to_close(django_db_blocker: object) -> None:
    """PostgreSQL notices killed workers' connections a moment later; dropping the test
    database before that fails, so wait (briefly) until this session is the only one."""
    from django.db import connection

    with django_db_blocker.unblock():  # type: ignore[attr-defined]
        if connection.vendor != "postgresql":
            return

        def alone() -> bool:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                return cursor.fetchone()[0] == 0

        # pytest-django's session live_server keeps one connection until after this; then
        # it reports the test database it could not drop (the next run recreates it)
        with contextlib.suppress(AssertionError):
            wait_for(alone, timeout=3, interval=0.1)


@pytest.fixture(scope="session")
def session_worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    """One worker (2 prefork children) consuming every queue of the ``t`` service."""
    from tests.proj.workflows import t

    queues = [w.qualified_name for w in t.queues.values()]
    return start_worker(queues, concurrency=2, name="session", for_session=True)


@pytest.fixture(scope="session")
def shop_workers(start_worker: Callable[..., WorkerProcess]) -> tuple[WorkerProcess, WorkerProcess]:
    """The ``shop`` service's workers: one for most queues, one of its own for backorders."""
    from celery_workflows.celery_integration import EVENTS_QUEUE
    from tests.proj.flows import MAIN_QUEUES

    main = start_worker([*MAIN_QUEUES, EVENTS_QUEUE], concurrency=2, name="shop", for_session=True)
    backorders = start_worker(
        ["shop.notifyBackorder"], concurrency=1, name="backorders", for_session=True
    )
    return main, backorders


@pytest.fixture
def recorder(redis_client: redis.Redis):  # type: ignore[no-untyped-def]
    from tests.proj.workflows import recorder

    return recorder


@pytest.fixture
def job_status(transactional_db: None) -> Callable[[str], str]:
    from django_app.models import Job

    def status(job_id: str) -> str:
        return Job.objects.values_list("status", flat=True).get(id=job_id)

    return status


@pytest.fixture
def wait_status(job_status: Callable[[str], str]) -> Callable[..., None]:
    def wait(job_id: str, *statuses: str, timeout: float = 20.0) -> None:
        wait_for(
            lambda: job_status(job_id) in statuses,
            timeout=timeout,
            message=f"job {job_id} never reached {statuses} (last: {job_status(job_id)})",
        )

    return wait


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def browser(django_db_blocker):
    # Django's live_server runs in this process's thread; Playwright's sync API needs this
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    from playwright.sync_api import sync_playwright

    assert shutil.which(CHROMIUM), "Debian's chromium is required: apt-get install -y chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        # Playwright's sync API runs the test in a context of its own, where Django finds the
        # connection it made the last time a browser ran - possibly dropped since
        reopen_if_dropped(django_db_blocker)
        yield browser
        browser.close()
