"""Faults a test injects into real workers: failing attempts, lost leases, lost messages."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import task_prerun

from .. import registry
from ..jobs import release_lease
from ..queues import QueueSpec

#: environment variable naming the fault plan a worker process follows
FAULTS_FILE_ENV = "CELERY_WORKFLOWS_FAULTS_FILE"


class InjectedFault(Exception):
    """Raised in a worker, in place of a handler, by :meth:`Faults.fail`."""


class Faults:
    """Inject faults into the workers a test started (with :attr:`environment`).

    - :meth:`fail` makes chosen attempts of a queue raise :class:`InjectedFault` before the
      handler runs - an ordinary failure, retried or dead-lettered by the queue's lifecycle;
    - :meth:`expire_lease` ends a running attempt's lease now, as if its worker had been
      partitioned: the sweeper records a lost attempt and another one runs; whatever the first
      attempt writes later is fenced off;
    - :meth:`drop_messages` deletes the queue's messages from the broker, as a broker restart
      without persistence would; the ledger still has the jobs, and the sweeper publishes them
      again after ``workflows_republish_after``.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        if path is None:
            handle, name = tempfile.mkstemp(prefix="cw-faults-", suffix=".json")
            os.close(handle)
            path = name
        self.path = Path(path)
        self._plan: dict[str, dict[str, Any]] = {}
        self._write()

    @property
    def environment(self) -> dict[str, str]:
        return {FAULTS_FILE_ENV: str(self.path)}

    def fail(
        self, queue: str | QueueSpec, attempts: tuple[int, ...] = (1,), error: str = ""
    ) -> None:
        """Attempts ``attempts`` of every job of ``queue`` raise instead of running."""
        name = queue.qualified_name if isinstance(queue, QueueSpec) else queue
        if name not in registry.queues():
            raise ValueError(f"no queue {name!r} is declared")
        self._plan[name] = {
            "attempts": sorted(set(attempts)),
            "error": error or f"fault injected into {name}",
        }
        self._write()

    def clear(self) -> None:
        self._plan = {}
        self._write()

    def expire_lease(self, job_id: str) -> bool:
        """End the lease of ``job_id``'s running attempt now. False if it was not running."""
        return release_lease(job_id, actor="test kit")

    def drop_messages(self, queue: str | QueueSpec, app: Celery | None = None) -> int:
        """Delete ``queue``'s waiting messages from the broker; return how many."""
        spec = queue if isinstance(queue, QueueSpec) else registry.queues().get(queue)
        if spec is None:
            raise ValueError(f"no queue {queue!r} is declared")
        assert spec.task is not None
        celery_app = app or spec.task.app
        with celery_app.connection_for_write() as connection:
            channel = connection.default_channel
            return int(channel.queue_purge(spec.qualified_name) or 0)  # type: ignore[attr-defined]

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    def _write(self) -> None:
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self._plan))
        os.replace(temporary, self.path)


def install_from_environment() -> None:
    """In a worker process: follow the plan named by ``CELERY_WORKFLOWS_FAULTS_FILE``."""
    path = os.environ.get(FAULTS_FILE_ENV)
    if path:
        task_prerun.connect(_wrap_handlers, weak=False)
        _state["path"] = path


_state: dict[str, Any] = {"path": None, "wrapped": False}


def _wrap_handlers(**_: Any) -> None:
    """Before the first task of this process, put a fault check in front of every handler."""
    if _state["wrapped"]:
        return
    _state["wrapped"] = True
    for spec in registry.queues().values():
        spec.handler = _faulty(spec.qualified_name, spec.handler)


def _faulty(queue: str, handler: Any) -> Any:
    def run(ctx: Any, job: Any) -> Any:
        try:
            plan = json.loads(Path(_state["path"]).read_text() or "{}").get(queue)
        except (OSError, ValueError):
            plan = None
        if plan and job.attempt in plan["attempts"]:
            raise InjectedFault(f"{plan['error']} (attempt {job.attempt})")
        return handler(ctx, job)

    return run
