"""Priorities: one meaning everywhere - 0 to 9, higher runs first.

A job's priority orders it among the jobs *waiting* on its queue: when a worker takes the next
job, a waiting job of priority 9 goes before one of priority 0. A job without one counts as 0.
A run's later steps inherit the priority of the step (or start) that caused them, unless their
subscription sets its own (``subscribe(..., priority=...)``); compensations inherit the step
they undo; a decision continues with the priority of the step that opened the gate.

Brokers disagree, so the notice carries whatever makes the broker agree with that meaning:

- Redis (kombu's transport) takes *lower* numbers first: the notice carries ``9 - priority``.
  By default it keeps four levels (``priority_steps`` ``[0, 3, 6, 9]``: priorities 9-7, 6-4,
  3-1 and 0); ``broker_transport_options = {"priority_steps": list(range(10))}`` gives all ten.
- RabbitMQ takes higher numbers first, but only on queues declared with ``x-max-priority``:
  the toolkit declares its queues with ``x-max-priority`` = :func:`queue_max_priority`
  (setting ``workflows_queue_max_priority``, default 9). RabbitMQ refuses to re-declare a queue
  with other arguments (``PRECONDITION_FAILED``): queues declared by an earlier version must be
  drained and deleted once, or the setting set to ``None`` (then RabbitMQ ignores priorities).

A job with a priority is never continued locally by the process that wrote it (see
:mod:`celery_workflows.continuation`): it waits its turn in the broker with the others.
"""

from __future__ import annotations

from typing import Any

from kombu import Exchange, Queue

from .errors import ConfigurationError

#: priorities accepted by ``enqueue``, ``emit`` and ``subscribe``: higher runs first
PRIORITY_RANGE = range(0, 10)
#: the highest priority
HIGHEST = PRIORITY_RANGE[-1]
#: default of ``workflows_queue_max_priority``
DEFAULT_QUEUE_MAX_PRIORITY = HIGHEST

_lower_first: dict[int, bool] = {}
_declared: set[tuple[int, str]] = set()


def check(what: str, priority: Any) -> int | None:
    """``priority`` if it is None or an int 0-9; else a :class:`ConfigurationError`."""
    if priority is None:
        return None
    if (
        isinstance(priority, bool)
        or not isinstance(priority, int)
        or priority not in PRIORITY_RANGE
    ):
        raise ConfigurationError(
            f"{what}: priority must be an int 0-9 (higher runs first), got {priority!r}"
        )
    return int(priority)


def queue_max_priority(conf: Any) -> int | None:
    """``workflows_queue_max_priority``, validated: the ``x-max-priority`` of the toolkit's
    queues on RabbitMQ (None: declared without, as before version 0.2)."""
    value = conf.get("workflows_queue_max_priority", DEFAULT_QUEUE_MAX_PRIORITY)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not HIGHEST <= value <= 255:
        raise ConfigurationError(
            f"workflows_queue_max_priority must be None or an int {HIGHEST}-255, got {value!r}"
        )
    return value


def broker_priority(app: Any, priority: int | None) -> int:
    """What a notice of a job with ``priority`` carries to ``app``'s broker."""
    ours = priority or 0
    lower_first = _lower_first.get(id(app))
    if lower_first is None:
        with app.connection_for_write() as connection:
            lower_first = connection.transport.driver_type == "redis"
        _lower_first[id(app)] = lower_first
    return HIGHEST - ours if lower_first else ours


def declare(app: Any, names: list[str]) -> None:
    """Make ``app`` declare the toolkit's queues ``names`` with ``x-max-priority`` (unless the
    setting is None, or you declared the queue yourself in ``task_queues``). Called when a
    worker starts, before it selects its queues, and before a process publishes."""
    fresh = [name for name in names if (id(app), name) not in _declared]
    if not fresh:
        return  # every publish asks: answered without reading the configuration
    maximum = queue_max_priority(app.conf)
    if maximum is None:
        return
    queues = app.amqp.queues
    for name in fresh:
        _declared.add((id(app), name))
        if dict.get(queues, name) is not None:
            continue  # declared by the user's task_queues
        arguments = {"x-max-priority": maximum}
        queues.add(Queue(name, Exchange(name, type="direct"), name, queue_arguments=arguments))
