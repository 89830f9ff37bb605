"""What a WorkflowService installs on the user's Celery app, once per app.

- the ``celery_workflows.deliver_event`` task on the :data:`EVENTS_QUEUE` queue: other
  services (or hosts, or languages) publish event envelopes to it; delivering one envelope
  any number of times starts each subscription's job once;
- a start-up check of the workflow graph: a worker refuses to start if a subscription targets
  a queue no service declares;
- a worker started without ``-Q`` consumes every declared queue (besides Celery's default),
  the events queue and the schedules queue;
- the ``celery_workflows.fire_schedule`` task that Celery beat sends for declared schedules
  (see :mod:`celery_workflows.schedules`), and a catch-up of missed slots when beat starts;
- a consumer bootstep that runs the :mod:`~celery_workflows.sweeper` on the worker's timer in
  every ``celery worker`` (settings ``workflows_sweep_interval`` and
  ``workflows_republish_after``, in seconds, on the Celery app's config);
- the consumer of :mod:`celery_workflows.consumer` as ``worker_consumer``: no message can stop
  the worker, and one that cannot be run is dead-lettered with its reason and raw body;
- a pool process that stops saves its per-minute queue figures (:mod:`.control`);
- log records made during an attempt carry its workflow, business key, queue, job and
  attempt, shown as ``workflows_log_format`` says (:mod:`.logs`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from celery import Celery, bootsteps
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    beat_init,
    celeryd_init,
    worker_process_shutdown,
)

from . import control, graph, logs, priorities, registry
from .consumer import DELIVER_EVENT_TASK, EVENTS_QUEUE
from .continuation import max_continuations
from .errors import ConfigurationError, WorkflowError
from .events import event_payload, run_start_for, write_and_publish
from .intake import envelope_problem, stored_body
from .payloads import max_payload_bytes, storable_text
from .records import Event
from .retention import PRUNE_TASK, prune_finished_runs
from .schedules import FIRE_TASK, SCHEDULES_QUEUE, FireScheduleTask, fire
from .store import get_store
from .sweeper import (
    DEFAULT_INTERVAL_SECONDS,
    DEFAULT_REPUBLISH_AFTER_SECONDS,
    Sweeper,
    idle_run_grace,
)
from .worker import dead_letter_message

DEFAULT_CONSUMER = "celery.worker.consumer:Consumer"
logger = logging.getLogger("celery_workflows.celery_integration")

_installed: set[int] = set()


class GraphCheck(bootsteps.StartStopStep):
    """Refuse to start a worker whose workflow graph is broken, naming the problem."""

    def start(self, parent: Any) -> None:
        graph.validate()


class ConsumeDeclaredQueues(bootsteps.Step):
    """A worker started without ``-Q`` consumes every declared workflow queue too.

    Plain ``celery -A proj worker`` then runs every step, as users expect from their usual
    worker; with ``-Q`` the worker consumes exactly what it was told (to scale steps apart).
    """

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        queues = parent.app.amqp.queues
        # Celery keeps the -Q selection in _consume_from; None means "no -Q given"
        selected = getattr(queues, "_consume_from", None)
        if selected is None:
            priorities.declare(parent.app, list(registry.queues()))
            for name in [*registry.queues(), EVENTS_QUEUE, SCHEDULES_QUEUE]:
                queues.select_add(queues[name])
        elif registry.schedules() and SCHEDULES_QUEUE not in selected:
            logger.warning(
                "schedules are declared (%s) and this worker does not consume %s, where beat "
                "sends their firings: make sure one worker does (add it to its -Q, or start "
                "it without -Q)",
                ", ".join(sorted(registry.schedules())),
                SCHEDULES_QUEUE,
            )


def positive_seconds(conf: Any, name: str, default: float) -> float:
    """A duration setting in seconds: a number > 0 (unset: ``default``)."""
    value = conf.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(f"{name} must be a number of seconds > 0, got {value!r}")
    return float(value)


class SweeperStep(bootsteps.StartStopStep):
    """Run the sweeper on the consumer's timer while the worker consumes."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        conf = parent.app.conf
        # every workflows_* setting is checked here, so a wrong value stops the worker at
        # start with the setting named, not in the middle of a job
        self.interval = positive_seconds(conf, "workflows_sweep_interval", DEFAULT_INTERVAL_SECONDS)
        republish = positive_seconds(
            conf, "workflows_republish_after", DEFAULT_REPUBLISH_AFTER_SECONDS
        )
        max_payload_bytes(conf)
        max_continuations(conf)
        priorities.queue_max_priority(conf)
        grace = idle_run_grace(conf)
        logs.log_format(conf)
        self.sweeper = Sweeper(republish, grace)
        self.tref: Any = None

    def start(self, parent: Any) -> None:
        self.tref = parent.timer.call_repeatedly(self.interval, self.sweeper.safe_sweep)

    def stop(self, parent: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    shutdown = stop


def install(app: Celery) -> None:
    if id(app) in _installed:
        return
    _installed.add(id(app))
    logs.install_record_factory()
    logs.log_format(app.conf)  # a wrong value is refused when the service is declared
    registry.set_max_payload_bytes(max_payload_bytes(app.conf))
    if app.conf.worker_consumer == DEFAULT_CONSUMER:
        app.conf.worker_consumer = "celery_workflows.consumer:DeadLetteringConsumer"
    else:
        logger.info("worker_consumer is customised; undecodable messages are not dead-lettered")
    app.steps["worker"].add(GraphCheck)
    app.steps["worker"].add(ConsumeDeclaredQueues)
    app.steps["consumer"].add(SweeperStep)
    app.task(name=DELIVER_EVENT_TASK, ignore_result=True, typing=False, shared=False)(
        _deliver_event
    )
    app.task(name=PRUNE_TASK, ignore_result=True, shared=False)(prune_finished_runs)
    app.task(name=FIRE_TASK, base=FireScheduleTask, ignore_result=True, typing=False, shared=False)(
        fire
    )


def _deliver_event(*args: Any, **kwargs: Any) -> None:
    """Write an event received through the broker and start its subscriptions' jobs."""
    store = get_store()
    try:
        problem = envelope_problem(args, kwargs)
        if problem is not None:
            raise ValueError(problem)
        received = Event.from_json(args[0])
        registry.check_name("event", received.name)
        event = dataclasses.replace(
            received, payload=event_payload(received.name, received.payload)
        )
    except (ValueError, TypeError, WorkflowError) as exc:
        body = {"args": list(args), "kwargs": kwargs}
        reason = storable_text(f"malformed event envelope: {exc}")
        dead_letter_message(store, EVENTS_QUEUE, {"body": stored_body(body)}, reason)
        return
    if not registry.subscriptions_for(event.name):
        logger.warning("event %r (%s) has no subscriber here; recorded only", event.name, event.id)
    write_and_publish(store, [event], run_start_for(event))


def publish_event(app: Celery, event: Event) -> None:
    """Send an envelope to the events queue (used by other services and by the tests)."""
    app.send_task(DELIVER_EVENT_TASK, args=[event.to_json()], queue=EVENTS_QUEUE)


@beat_init.connect
def _catch_up_schedules(sender: Any = None, **kwargs: Any) -> None:
    """When beat starts, have each declared schedule look at the slots it missed while beat
    was down (its ``missed`` policy decides what runs)."""
    app = getattr(sender, "app", None)
    if app is None or FIRE_TASK not in app.tasks:
        return
    for name in registry.schedules():
        app.tasks[FIRE_TASK].apply_async(
            args=[name], kwargs={"catch_up": True}, queue=SCHEDULES_QUEUE
        )


@celeryd_init.connect
def _declare_queues(sender: Any = None, instance: Any = None, **kwargs: Any) -> None:
    """Before a worker selects its queues (``-Q``), the toolkit's queues are declared with
    their priority argument (see :mod:`.priorities`)."""
    app = getattr(instance, "app", None)
    if app is not None and id(app) in _installed:
        priorities.declare(app, list(registry.queues()))


@worker_process_shutdown.connect
def _save_queue_figures(**kwargs: Any) -> None:
    """A pool process that stops cleanly saves its last per-minute queue figures."""
    try:
        control.flush(get_store())
    except Exception:
        logger.debug("queue figures not saved at shutdown", exc_info=True)


@after_setup_logger.connect
@after_setup_task_logger.connect
def _format_logs(logger: logging.Logger | None = None, **kwargs: Any) -> None:
    """Apply ``workflows_log_format`` to the handlers Celery set up (see :mod:`.logs`)."""
    from celery import current_app

    app = current_app._get_current_object()  # type: ignore[attr-defined]  # a Proxy
    if logger is not None and id(app) in _installed:
        logs.apply_format(logger, logs.log_format(app.conf))
