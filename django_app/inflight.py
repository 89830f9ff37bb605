"""What runs in flight still need from the deployed declarations (``manage.py check``).

A deploy may rename or remove a step, or an event an approval gate will emit, while runs
that need it are in flight: their waiting jobs would never be consumed, their dead letters
could not be re-driven, their completed steps could not be compensated, their gates would
emit an event nothing reacts to. :func:`stranded` finds each of those in the ledger, with
how many runs it strands, a few of them by business key, and the definition versions they
started with; :mod:`django_app.checks` reports them. The way out is in
:mod:`celery_workflows.renames`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import Count, F, QuerySet

from celery_workflows import registry
from celery_workflows.records import OPEN_RUN_STATUSES, JobStatus, RunStatus

from .models import Gather, Job, WorkflowRun

#: runs named in a message
EXAMPLES = 3
#: queues of the toolkit itself (events from other systems, schedules): never declared
INTERNAL_PREFIX = "celery_workflows."
GATE_EVENTS = ("approve_event", "reject_event", "timeout_event")


@dataclass(frozen=True)
class Stranded:
    """Something the ledger needs that the declarations no longer have."""

    #: "waiting" (jobs that would never run), "dead" (dead letters that cannot be re-driven),
    #: "completed" (steps that could not be compensated), "gate" (a gate's event), "gather"
    #: (maps whose branches gather into the queue)
    kind: str
    #: the queue or event name
    name: str
    jobs: int
    runs: int
    examples: tuple[str, ...]
    versions: tuple[str, ...]

    def describe(self) -> str:
        what = {
            "waiting": f"{self.jobs} job(s) waiting or running on queue {self.name}, which is "
            "not declared",
            "dead": f"{self.jobs} dead letter(s) on queue {self.name}, which is not declared "
            "(they cannot be re-driven)",
            "completed": f"{self.jobs} completed step(s) on queue {self.name}, which is not "
            "declared (they cannot be compensated if their runs fail)",
            "gate": f"an approval gate that will emit {self.name}, which nothing subscribes to",
            "gather": f"{self.jobs} map(s) whose branches gather into queue {self.name}, which "
            "is not declared",
        }[self.kind]
        runs = ", ".join(self.examples) + (", ..." if self.runs > len(self.examples) else "")
        versions = ", ".join(v or "unversioned" for v in self.versions)
        return f"{self.runs} run(s) in flight need {what}: {runs} (definition {versions})"


def stranded() -> list[Stranded]:
    declared = set(registry.queues())
    found: list[Stranded] = []
    unfinished = WorkflowRun.objects.filter(status__in=OPEN_RUN_STATUSES)
    groups = {
        "waiting": Job.objects.filter(status__in=[JobStatus.QUEUED, JobStatus.RUNNING]),
        "dead": Job.objects.filter(status=JobStatus.DEAD),
        "completed": Job.objects.filter(
            status=JobStatus.SUCCEEDED,
            correlation_id__in=unfinished.values("correlation_id"),
            compensates__isnull=True,
        ),
    }
    for kind, jobs in groups.items():
        missing = (
            jobs.exclude(queue__in=declared)
            .exclude(queue__startswith=INTERNAL_PREFIX)
            .order_by()
            .values("queue")
            .annotate(n=Count("id"), runs=Count("correlation_id", distinct=True))
        )
        for row in missing:
            if kind == "completed" and not _compensates(row["queue"]):
                continue
            affected = jobs.filter(queue=row["queue"]).values("correlation_id")
            found.append(Stranded(kind, row["queue"], row["n"], row["runs"], *_runs(affected)))
    # maps whose branches will gather into a queue no longer declared
    gathers = (
        Gather.objects.filter(correlation_id__in=unfinished.values("correlation_id"))
        .filter(total__gt=F("succeeded") + F("failed"))
        .exclude(into_queue__in=declared)
    )
    for into, n, counted in (
        gathers.order_by()
        .values("into_queue")
        .annotate(n=Count("id"), runs=Count("correlation_id", distinct=True))
        .values_list("into_queue", "n", "runs")
    ):
        of_maps = gathers.filter(into_queue=into).values("correlation_id")
        found.append(Stranded("gather", into, n, counted, *_runs(of_maps)))
    waiting = WorkflowRun.objects.filter(status=RunStatus.WAITING, waiting_for__isnull=False)
    by_event: dict[str, list[str]] = {}
    for correlation_id, gate in waiting.values_list("correlation_id", "waiting_for"):
        for key in GATE_EVENTS:
            event = (gate or {}).get(key)
            if event and not _handled(event):
                by_event.setdefault(event, []).append(correlation_id)
    for event, ids in sorted(by_event.items()):
        runs = WorkflowRun.objects.filter(correlation_id__in=ids).values("correlation_id")
        found.append(Stranded("gate", event, len(ids), len(set(ids)), *_runs(runs)))
    return found


def _compensates(queue: str) -> bool:
    """Whether a completed step of ``queue`` may need undoing: its service (if still there)
    compensates failed runs. A removed service's steps are reported either way."""
    service = registry.services().get(queue.split(".", 1)[0])
    return service is None or getattr(service, "on_failure", "compensate") == "compensate"


def _handled(event: str) -> bool:
    return bool(registry.subscriptions_for(event)) or event in registry.terminal_events()


Names = tuple[str, ...]


def _runs(correlation_ids: QuerySet[Any, Any]) -> tuple[Names, Names]:
    """A few of the runs (by business key, else id) and the definition versions of all."""
    runs = WorkflowRun.objects.filter(correlation_id__in=correlation_ids)
    examples = tuple(
        key or cid
        for cid, key in runs.order_by("started_at").values_list("correlation_id", "business_key")[
            :EXAMPLES
        ]
    )
    versions = tuple(
        sorted(set(runs.order_by().values_list("definition_version", flat=True).distinct()))
    )
    return examples, versions
