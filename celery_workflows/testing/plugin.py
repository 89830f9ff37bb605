"""pytest fixtures for testing your workflows on a real worker.

Enable them in your ``conftest.py``::

    pytest_plugins = ["celery_workflows.testing.plugin"]

They need pytest-django (the worker must see the rows the test writes, so tests that use a
worker run on ``transactional_db``) and the broker your settings name. A test database on
SQLite must be a file (``DATABASES["default"]["TEST"]["NAME"]``): a worker process cannot see
an in-memory one.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .. import registry
from ..errors import ConfigurationError
from ..queues import QueueSpec
from ..service import WorkflowService
from .bootstrap import DATABASES_ENV
from .clock import TestClock
from .faults import Faults
from .process import WorkerProcess

APP_INI = "celery_workflows_app"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        APP_INI,
        "the -A argument of test workers (default: the main name of the queues' Celery app)",
        default="",
    )


@pytest.fixture
def workflow_clock() -> Iterator[TestClock]:
    """The toolkit's clock, moved forward by ``advance()`` in this process and its workers."""
    test_clock = TestClock().install()
    yield test_clock
    test_clock.uninstall()


@pytest.fixture
def workflow_faults() -> Iterator[Faults]:
    """Failing attempts, expiring leases and dropping broker messages on demand."""
    faults = Faults()
    yield faults
    faults.remove()


@pytest.fixture
def workflow_worker(
    request: pytest.FixtureRequest,
    transactional_db: None,
    workflow_clock: TestClock,
    workflow_faults: Faults,
    tmp_path: Path,
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start a real ``celery worker`` for the test's queues: ``workflow_worker(orders)``.

    Arguments are services (all their queues), queue specs or ``"service.queue"`` names.
    The worker uses the test database, follows ``workflow_clock`` and ``workflow_faults``,
    and is stopped when the test ends. Its log is ``worker.log_path``.
    """
    started: list[WorkerProcess] = []

    def start(
        *queues: Any,
        app: str | None = None,
        concurrency: int = 1,
        pool: str = "prefork",
        env: dict[str, str] | None = None,
        ready_timeout: float = 60.0,
    ) -> WorkerProcess:
        specs = _specs(queues)
        app_name = app or request.config.getini(APP_INI) or _app_name(specs)
        n = len(started)
        environment = {
            "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", ""),
            DATABASES_ENV: json.dumps(_test_databases()),
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p and os.path.isdir(p)),
            **workflow_clock.environment,
            **workflow_faults.environment,
            **(env or {}),
        }
        worker = WorkerProcess(
            app_name,
            [s.qualified_name for s in specs],
            concurrency=concurrency,
            pool=pool,
            env=environment,
            hostname=f"testkit{n}-{os.getpid()}@%h",
            log_path=str(tmp_path / f"worker{n}.log"),
            launcher=("-m", "celery_workflows.testing.bootstrap"),
        )
        started.append(worker.start())
        return worker.wait_ready(ready_timeout)

    yield start
    for worker in started:
        worker.stop()


def _specs(queues: Iterable[Any]) -> list[QueueSpec]:
    declared = registry.queues()
    specs: list[QueueSpec] = []
    for each in queues:
        if isinstance(each, QueueSpec):
            specs.append(each)
        elif isinstance(each, str):
            if each not in declared:
                raise ConfigurationError(f"no queue {each!r} is declared")
            specs.append(declared[each])
        elif isinstance(each, WorkflowService):
            specs.extend(each.queues.values())
        else:
            raise ConfigurationError(f"not a service, queue spec or queue name: {each!r}")
    if not specs:
        raise ConfigurationError("workflow_worker() needs at least one queue or service")
    return specs


def _app_name(specs: list[QueueSpec]) -> str:
    apps = {s.task.app.main for s in specs if s.task is not None}
    if len(apps) != 1 or None in apps:
        raise ConfigurationError(
            f"cannot tell the worker's -A argument from the queues' Celery apps {apps}: pass "
            f"app='your_project' or set {APP_INI} in your pytest configuration"
        )
    return str(apps.pop())


def _test_databases() -> dict[str, str]:
    from django.db import connections

    names = {}
    for alias in connections:
        settings = connections[alias].settings_dict
        name = str(settings["NAME"])
        if settings["ENGINE"].endswith("sqlite3") and ("memory" in name or not name):
            raise ConfigurationError(
                f"the test database {alias!r} is an in-memory SQLite database, which a worker "
                f"process cannot see: set DATABASES[{alias!r}]['TEST']['NAME'] to a file path"
            )
        names[alias] = name
    return names
