"""When a pool process dies, its leases end at once - not a whole visibility timeout later.

A prefork child killed by the kernel's OOM killer, a segfault or SIGKILL takes its running
attempt with it - and, with local continuation, possibly a job it had just been handed. The
worker's main process learns of it right away: Celery fails the child's current task with
``WorkerLostError``, in the main process. For the toolkit's tasks that failure ends every
lease the dead child (``host:pid``, the name it claimed under) still holds, so the next pass of
this worker's sweeper (within ``workflows_sweep_interval``) settles them - a lost attempt is
charged as one, a job handed over but never started is queued again uncharged - instead of
waiting for each lease to run out. Only the pid the pool reports as dead is touched, so no
live process loses a lease.
"""

from __future__ import annotations

import logging
from typing import Any

from billiard.exceptions import WorkerLostError
from celery.worker.request import Request

from .clock import utcnow
from .lease import worker_name_of
from .store import get_store

logger = logging.getLogger("celery_workflows.worker")


class LeaseReleasingRequest(Request):  # type: ignore[misc]
    """Celery's request for the toolkit's tasks, ending a dead pool process's leases."""

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        pid = self.worker_pid
        exc = getattr(exc_info, "exception", None)
        exc = getattr(exc, "exc", exc)  # billiard wraps it in an ExceptionWithTraceback
        if isinstance(exc, WorkerLostError) and pid:
            release_leases_of(worker_name_of(int(pid)))
        return super().on_failure(exc_info, send_failed_event, return_ok)


def release_leases_of(worker: str) -> None:
    """End the leases of a dead process now (never raises: the worker goes on either way)."""
    try:
        ended = get_store().expire_held_by(worker, utcnow())
    except Exception:
        logger.exception("the leases of %s could not be ended; they expire in time", worker)
        return
    if ended:
        logger.warning("%s died holding %d lease(s): ended now, settled next", worker, ended)
