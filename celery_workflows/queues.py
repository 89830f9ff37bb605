"""A declared queue: one business step's schema, lifecycle and handler.

:class:`QueueSpec` is a declaration, not a process: ``@service.queue_worker(...)`` creates one,
and any ``celery worker`` consuming its Celery queue (named ``service.queue``) runs its jobs
(see :mod:`celery_workflows.worker`). It knows how to build its jobs' ledger rows and how to
send the "job X is ready for attempt N" notice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from . import priorities
from .ids import new_id
from .payloads import DEFAULT_MAX_PAYLOAD_BYTES, to_json, validated
from .records import Dispatch, NewJob

if TYPE_CHECKING:
    from celery import Task

    from .gathers import Gather
    from .lifecycle import Lifecycle
    from .limits import Limits

#: ``handler(ctx: JobContext[R], job: Job[P]) -> result``
Handler = Callable[..., Any]


@dataclass(eq=False)
class QueueSpec:
    """One queue's declaration and the Celery task that carries its notices."""

    #: the declaring service's name
    service: str
    name: str
    description: str
    payload_schema: type[BaseModel] | None
    lifecycle: Lifecycle
    handler: Handler
    #: the declaring service's resources, handed to the handler as ``ctx.resources``
    resources: Any = None
    #: event names this step may emit (documents the graph; emitting others is an error)
    emits: tuple[str, ...] = ()
    #: when set, a successful result is emitted as this event, with the result as payload
    result_event: str | None = None
    #: ``workflows_max_payload_bytes`` of the declaring service's Celery app
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    #: a worker that creates a job of this queue may run it itself, without a broker hop
    #: (:mod:`celery_workflows.continuation`); False: always published
    continue_locally: bool = True
    #: ``service.queue`` whose job undoes this step's work (:mod:`.compensation`)
    compensate_with: str | None = None
    #: flow control across every worker (:mod:`celery_workflows.limits`); None: none
    limits: Limits | None = None
    #: a mapping step: ``ctx.map(items)`` starts branches gathered into one job (:mod:`.gathers`)
    gather: Gather | None = None
    #: the handler runs in the transaction of its own outcome write (:mod:`celery_workflows.worker`)
    atomic: bool = False
    task: Task[Any, Any] | None = None

    @property
    def qualified_name(self) -> str:
        """``service.queue``: the ledger's queue name and the Celery queue to consume."""
        return f"{self.service}.{self.name}"

    @property
    def task_name(self) -> str:
        return f"celery_workflows.{self.qualified_name}"

    @property
    def graph_emits(self) -> tuple[str, ...]:
        """Every event this step can emit, for the graph: declared ones and the result event."""
        extra = (
            (self.result_event,)
            if self.result_event and self.result_event not in self.emits
            else ()
        )
        return (*self.emits, *extra)

    def validate_payload(self, payload: Any) -> Any:
        """The JSON form of ``payload``, or raise naming this queue and the problem."""
        what = f"queue {self.qualified_name}"
        body = to_json(what, payload, self.max_payload_bytes)
        if self.payload_schema is not None:
            validated(what, self.payload_schema, body)
        return body

    def new_job(
        self,
        payload: Any,
        *,
        available_at: datetime,
        correlation_id: str,
        published: bool,
        **options: Any,
    ) -> NewJob:
        """A ledger row for a fresh job on this queue (``options``: the other NewJob fields)."""
        if self.limits is not None:
            options["limit_key"] = self.limits.key_of(f"queue {self.qualified_name}", payload)
        return NewJob(
            id=new_id(),
            service=self.service,
            queue=self.qualified_name,
            payload=payload,
            max_attempts=self.lifecycle.max_attempts,
            available_at=available_at,
            correlation_id=correlation_id,
            published=published,
            **options,
        )

    def publish(self, dispatch: Dispatch, producer: Any = None) -> None:
        """Send the "ready for attempt N" notice to this queue (with the broker's form of the
        job's priority: see :mod:`celery_workflows.priorities`)."""
        assert self.task is not None
        app = self.task.app
        priorities.declare(app, [self.qualified_name])
        options: dict[str, Any] = {
            "queue": self.qualified_name,
            "priority": priorities.broker_priority(app, dispatch.priority),
        }
        if dispatch.countdown > 0:
            options["countdown"] = dispatch.countdown
        if producer is not None:
            options["producer"] = producer
        self.task.apply_async(args=(dispatch.job_id, dispatch.attempt), **options)

    def publish_many(self, dispatches: list[Dispatch]) -> None:
        """Send several notices over one broker connection."""
        if len(dispatches) == 1:
            self.publish(dispatches[0])
            return
        assert self.task is not None
        with self.task.app.producer_or_acquire() as producer:
            for dispatch in dispatches:
                self.publish(dispatch, producer)

    def broker_depth(self) -> int | None:
        """Messages waiting in this queue at the broker (0 if it does not exist), or None when
        the broker cannot say. One round trip; the sweeper asks only when notices look lost."""
        assert self.task is not None
        try:
            with self.task.app.connection_for_read() as conn, conn.channel() as channel:
                declared = channel.queue_declare(  # type: ignore[attr-defined]
                    queue=self.qualified_name, passive=True
                )
                return int(declared[1])
        except Exception as exc:
            if "NOT_FOUND" in str(exc) or getattr(exc, "code", None) == 404:
                return 0
            return None
