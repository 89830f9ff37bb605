"""A test kit for workflows, on real workers: for your tests and for ours.

Queue behaviour (leases, retries, crashes) only means something on a real worker and broker,
so the kit starts ``celery worker`` as a subprocess against your test database and waits for
conditions with a deadline instead of sleeping:

- :class:`WorkerProcess` - a worker subprocess; :func:`wait_for`, :func:`wait_for_run`,
  :func:`wait_for_step` (a gather's or a join's step, with what it received);
- :class:`TestClock` - move the toolkit's time forward (delays, deadlines, gate expiry,
  schedule slots) in the test and its workers;
- :class:`Faults` - fail chosen attempts, expire a lease now, drop a queue's broker messages;
- :mod:`celery_workflows.testing.plugin` - pytest fixtures ``workflow_worker``,
  ``workflow_clock`` and ``workflow_faults`` (``pytest_plugins = [...]`` in ``conftest.py``);
- :func:`fire_schedule` - what Celery beat does at a schedule's slot, at the test clock's time.

See ``docs/testing.md`` for a worked example.
"""

from __future__ import annotations

from datetime import datetime

from .clock import TestClock
from .faults import Faults, InjectedFault
from .process import WorkerProcess
from .waiting import FINAL, WaitTimeout, wait_for, wait_for_run, wait_for_step


def fire_schedule(name: str) -> list[datetime]:
    """Fire schedule ``name`` (``service.schedule``) as beat would now; return the slots that
    started a run. With :class:`TestClock`, "now" is the test clock's time."""
    from ..schedules import fire

    return fire(name)


__all__ = [
    "FINAL",
    "Faults",
    "InjectedFault",
    "TestClock",
    "WaitTimeout",
    "WorkerProcess",
    "fire_schedule",
    "wait_for",
    "wait_for_run",
    "wait_for_step",
]
