"""System checks: a broken workflow graph is reported by ``manage.py check`` with a hint.

Two kinds, run at different times:

- the graph (``E001``, ``W002``) is static: it is checked by every management command, as
  Django checks models, and an error stops the command - a subscription to a queue nobody
  declares is a code mistake to fix before anything runs;
- queues declared with limits on a database that cannot enforce them (``E006``: limits are
  enforced in SQL that PostgreSQL and SQLite run) - static too, so the worker does not start
  with a limit it would fail to keep;
- atomic steps with a long lease (``W007``): their transaction can stay open that long -
  static, a warning;
- runs in flight that the declarations no longer serve (``W003``-``W005``) are read from the
  ledger, so they are only looked for where an operator asks before or after a deploy:
  ``manage.py check --deploy``, ``manage.py check --database default`` and ``manage.py
  migrate`` (which checks its database), besides the admin's queue dashboard and ``manage.py
  workflows stats``. They are warnings: a deploy that strands runs must still be able to
  migrate, serve requests and run the ``workflows`` commands that move those runs on
  (``rename-queue``, ``rename-event``, ``cancel``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections

from celery_workflows import graph, registry

from . import slots


@register()
def check_workflow_graph(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = [
        Error(
            problem,
            hint="Declare the queue with @service.queue_worker(...) or fix the subscription.",
            id="celery_workflows.E001",
        )
        for problem in graph.problems()
    ]
    return errors + [
        Warning(
            loose_end,
            hint="Subscribe to the event, declare it terminal, or remove what is unused.",
            id="celery_workflows.W002",
        )
        for loose_end in graph.warnings()
    ]


@register()
def check_limits_database(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    vendor = connections[DEFAULT_DB_ALIAS].vendor
    if vendor in slots.VENDORS:
        return []
    return [
        Error(
            f"queue {name} declares limits ({spec.limits.describe()}), which the ledger's "
            f"database ({vendor}) cannot enforce",
            hint="Keep the ledger on PostgreSQL or SQLite, or declare the queue without limits.",
            id="celery_workflows.E006",
        )
        for name, spec in sorted(registry.queues().items())
        if spec.limits is not None
    ]


#: an atomic step's transaction stays open for up to its lease: above this, W007
ATOMIC_LEASE_WARNING_SECONDS = 60.0


@register()
def check_atomic_steps(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    return [
        Warning(
            f"queue {name} is atomic with a visibility timeout of "
            f"{spec.lifecycle.visibility_timeout:g}s: its transaction, and the row locks its "
            "handler takes, can stay open that long",
            hint="Keep atomic handlers short (a lower visibility_timeout), or move slow calls "
            "to a step of their own.",
            id="celery_workflows.W007",
        )
        for name, spec in sorted(registry.queues().items())
        if spec.atomic and spec.lifecycle.visibility_timeout > ATOMIC_LEASE_WARNING_SECONDS
    ]


@register(Tags.database)
def check_runs_in_flight(
    app_configs: Any = None, databases: Sequence[str] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """With ``check --database default`` (and ``migrate``): what runs in flight need."""
    if not databases or DEFAULT_DB_ALIAS not in databases:
        return []
    return runs_in_flight_messages()


@register(deploy=True)
def check_runs_in_flight_before_deploy(
    app_configs: Any = None, databases: Sequence[str] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """With ``check --deploy``: the same, unless the database check above already ran."""
    if databases:
        return []
    return runs_in_flight_messages()


#: kind of stranded need -> (check id, what to do)
VERDICTS: dict[str, tuple[str, str]] = {
    "waiting": (
        "celery_workflows.W004",
        "Keep the queue declared until these runs drain, or move their jobs to its new "
        "name: manage.py workflows rename-queue {name} <new name>",
    ),
    "gate": (
        "celery_workflows.W005",
        "Subscribe to the event again, or point the gates at its new name: "
        "manage.py workflows rename-event {name} <new name>",
    ),
    "dead": (
        "celery_workflows.W003",
        "Keep the queue declared until these runs finish, or move them: "
        "manage.py workflows rename-queue {name} <new name>",
    ),
}
VERDICTS["completed"] = VERDICTS["dead"]
VERDICTS["gather"] = VERDICTS["waiting"]


def runs_in_flight_messages() -> list[CheckMessage]:
    """One warning per queue or event that runs in flight need and the declarations lack."""
    from .inflight import stranded

    try:
        found = stranded()
    except DatabaseError:  # no database here (a build step) or not migrated yet
        return []
    messages: list[CheckMessage] = []
    for s in found:
        check_id, hint = VERDICTS[s.kind]
        messages.append(Warning(s.describe(), hint=hint.format(name=s.name), id=check_id))
    return messages
