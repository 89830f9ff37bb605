"""Deploying a changed workflow while runs are in flight.

A run records the definition version it started with (:attr:`WorkflowService.version`). The
code that runs its next steps is always the deployed code, so what matters is whether that
code still has everything the run needs: the queues its waiting jobs, dead letters and
completed steps (for compensation) are on, and the events its open approval gates will emit.
``manage.py check --deploy`` warns about what a deploy would strand (``celery_workflows.W003``
to ``W005``, naming the runs; see :mod:`django_app.inflight`), as do the queue dashboard and
``manage.py workflows stats``. Two ways out, both documented in
``docs/operations.md``:

- keep the old step declared under its old name until ``manage.py workflows stats`` shows it
  drained (its handler may simply call the new one), then remove it; or
- map the old name to the new one in the ledger: :func:`rename_queue` / :func:`rename_event`
  (``manage.py workflows rename-queue|rename-event``), audited per run.
"""

from __future__ import annotations

from . import registry
from .errors import ConfigurationError
from .store import get_store


def rename_queue(old: str, new: str, *, actor: str = "python") -> dict[str, int]:
    """Move what runs in flight need of queue ``old`` to the declared queue ``new``.

    Waiting jobs (published again on ``new``), dead letters (re-drivable on ``new``) and the
    completed steps of unfinished runs (so their compensation is found) move; jobs running
    right now finish where they are - run it again once they have. Returns the counts moved
    (``waiting``, ``dead``, ``completed``, ``runs``) and ``running`` (left in place).
    """
    if old == new:
        raise ConfigurationError("rename_queue: old and new name are the same")
    registry.get_queue(new)  # raises UnknownQueueError naming it
    return get_store().rename_queue(old, new, actor)


def rename_event(old: str, new: str, *, actor: str = "python") -> int:
    """Make open approval gates that would emit ``old`` emit ``new``; return how many."""
    if old == new:
        raise ConfigurationError("rename_event: old and new name are the same")
    if not registry.subscriptions_for(new) and new not in registry.terminal_events():
        raise ConfigurationError(
            f"rename_event: nothing subscribes to {new!r} and it is not declared terminal"
        )
    return get_store().rename_event(old, new, actor)
