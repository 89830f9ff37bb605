"""The ledger: one row per job, carrying its lease and its full attempt history.

A successful job costs three writes: the insert at enqueue, the claim (lease) and the outcome.
Attempts are kept as a JSON list on the job row (``attempt_log``), appended by the fenced
outcome write, so recording an attempt never needs a second statement. Status values come from
the enums in :mod:`celery_workflows.records`.
"""

from __future__ import annotations

from typing import Any, ClassVar

from django.db import models

from celery_workflows.clock import utcnow
from celery_workflows.records import JobStatus, RunStatus

RUN_STATUS_CHOICES = [
    (s.value, "dead-lettered" if s == RunStatus.DEAD_LETTERED else s.value.capitalize())
    for s in RunStatus
]


class Job(models.Model):
    id = models.CharField(primary_key=True, max_length=32, editable=False)
    service = models.CharField(max_length=100)
    queue = models.CharField(max_length=201, help_text="service.queue")
    status = models.CharField(
        max_length=16, choices=[(s.value, s.value.replace("_", " ")) for s in JobStatus]
    )
    payload = models.JSONField()
    result = models.JSONField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0, help_text="attempts started so far")
    max_attempts = models.PositiveIntegerField()
    priority = models.PositiveSmallIntegerField(null=True, blank=True)
    correlation_id = models.CharField(max_length=64)
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)
    available_at = models.DateTimeField(help_text="when the next attempt may start")
    published_at = models.DateTimeField(
        null=True, blank=True, help_text="when the current notice became deliverable"
    )
    lease_token = models.CharField(max_length=32, null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=255, blank=True, default="")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)
    dead_reason = models.TextField(blank=True, default="")
    attempt_log = models.JSONField(default=list, blank=True)
    caused_by = models.CharField(
        max_length=32, null=True, blank=True, help_text="id of the event that started this job"
    )
    trace_id = models.CharField(max_length=64, blank=True, default="")
    compensates = models.CharField(
        max_length=32, null=True, blank=True, help_text="the job whose work this job undoes"
    )
    redriven_from = models.CharField(
        max_length=32,
        null=True,
        blank=True,
        db_column="redriven_from_id",
        help_text="the dead letter this job re-drives",
    )
    limit_key = models.CharField(
        max_length=200,
        blank=True,
        default="",
        help_text="value of the queue's limit key in the payload (jobs with one value are capped)",
    )
    coalesce_key = models.CharField(
        max_length=420,
        blank=True,
        default="",
        help_text="debounced subscription and key: a newer job with it supersedes this one",
    )
    gather_id = models.CharField(
        max_length=32, null=True, blank=True, help_text="a branch of a map: its gather"
    )
    gather_index = models.PositiveIntegerField(
        null=True, blank=True, help_text="a branch of a map: its item's index"
    )
    progress = models.JSONField(
        null=True, blank=True, help_text="what the running attempt last reported: fraction, text"
    )
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at"]
        # partial indexes: a row is only in the index its status needs, so the hot UPDATEs
        # (claim, outcome) touch as few index entries as possible
        constraints = [
            # not partial: MySQL/MariaDB cannot create partial indexes, and every database
            # here treats NULL keys as distinct
            models.UniqueConstraint(
                fields=["queue", "idempotency_key"], name="cw_job_unique_idempotency_key"
            ),
        ]
        permissions = [
            ("redrive_job", "Can re-drive dead-lettered jobs"),
            ("discard_job", "Can discard dead-lettered jobs"),
        ]
        indexes = [
            models.Index(fields=["correlation_id", "created_at"], name="cw_job_workflow"),
            models.Index(
                fields=["available_at"],
                condition=models.Q(status=JobStatus.QUEUED),
                name="cw_job_due",
            ),
            # the sweeper's search for notices never sent or sent long ago: without it, every
            # pass (each second, in every worker) read the whole queued backlog
            models.Index(
                fields=["published_at"],
                condition=models.Q(status=JobStatus.QUEUED),
                name="cw_job_notices",
            ),
            # also how a limited queue's claim counts its slots in use (the unexpired leases,
            # a handful): no index of its own, which every claim of every queue would pay
            models.Index(
                fields=["lease_expires_at"],
                condition=models.Q(status=JobStatus.RUNNING),
                name="cw_job_leases",
            ),
            # a debounced job looks for a newer one of its subscription and key
            models.Index(
                fields=["queue", "coalesce_key", "created_at"],
                condition=~models.Q(coalesce_key=""),
                name="cw_job_coalesce",
            ),
            # the jobs a limit holds back, released in priority order when a slot frees
            models.Index(
                fields=["queue", "limit_key"],
                condition=models.Q(status=JobStatus.QUEUED, published_at__isnull=True),
                name="cw_job_held",
            ),
            # a complete gather reads its branches once, in item order
            models.Index(
                fields=["gather_id", "gather_index"],
                condition=models.Q(gather_id__isnull=False),
                name="cw_job_gather",
            ),
            models.Index(
                fields=["queue", "-finished_at"],
                condition=models.Q(status=JobStatus.DEAD),
                name="cw_job_dead_letters",
            ),
            models.Index(
                fields=["-finished_at"],
                condition=models.Q(status=JobStatus.DEAD),
                name="cw_job_dead_recent",
            ),
        ]

    def __str__(self) -> str:
        return (
            f"{self.queue} job {self.id} ({self.status}, "
            f"attempt {self.attempts}/{self.max_attempts})"
        )


class Event(models.Model):
    """One emitted event: the envelope, and which subscriptions' jobs it started."""

    id = models.CharField(primary_key=True, max_length=32, editable=False)
    name = models.CharField(max_length=100, db_index=True)
    payload = models.JSONField()
    correlation_id = models.CharField(max_length=64, db_index=True)
    causation_id = models.CharField(max_length=64, null=True, blank=True)
    trace_id = models.CharField(max_length=64, blank=True, default="")
    source = models.CharField(max_length=201)
    emitted_at = models.DateTimeField()
    deliveries = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-emitted_at"]

    def __str__(self) -> str:
        return f"{self.name} {self.id} from {self.source}"


class Gather(models.Model):
    """A map's branches and where they gather: each branch's final outcome counts itself
    here, and the one that counts the last writes the gathering job
    (:mod:`celery_workflows.gathers`)."""

    id = models.CharField(
        primary_key=True, max_length=32, editable=False, help_text="the mapping job's id"
    )
    correlation_id = models.CharField(max_length=64, db_index=True)
    into_queue = models.CharField(max_length=201, help_text="service.queue receiving the results")
    total = models.PositiveIntegerField(help_text="branches")
    succeeded = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0, help_text="dead branches gathered without")
    on_failure = models.CharField(max_length=16, help_text="what a dead branch means")
    trace_id = models.CharField(max_length=64, blank=True, default="")
    priority = models.PositiveSmallIntegerField(null=True, blank=True)
    created_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"gather {self.id}: {self.succeeded + self.failed}/{self.total} -> {self.into_queue}"


class WorkflowRun(models.Model):
    """One workflow (correlation id): created when it starts, settled once when its last job
    ends. Its steps and events are the jobs and events sharing its correlation id.

    The counters are kept by the same statement that moves one of its jobs, so the run settles
    in the statement that ends its last pending job - exactly once, whichever branch ends last.
    """

    correlation_id = models.CharField(primary_key=True, max_length=64)
    name = models.CharField(max_length=201, help_text="the service that started it")
    business_key = models.CharField(max_length=200, blank=True, default="", db_index=True)
    status = models.CharField(max_length=16, choices=RUN_STATUS_CHOICES, default=RunStatus.RUNNING)
    started_by = models.CharField(
        max_length=201, blank=True, default="", help_text="the event or queue that started it"
    )
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    last_job_id = models.CharField(max_length=32, blank=True, default="")
    waiting_for = models.JSONField(
        null=True, blank=True, help_text="the open approval gate, while the run is waiting"
    )
    pending_jobs = models.PositiveIntegerField(default=0, help_text="jobs queued or running")
    dead_jobs = models.PositiveIntegerField(default=0, help_text="jobs dead-lettered")
    cancelled_jobs = models.PositiveIntegerField(default=0, help_text="jobs cancelled")
    compensation_jobs = models.PositiveIntegerField(
        default=0, help_text="jobs that undo completed steps (declared or started by events)"
    )
    failed_compensations = models.PositiveIntegerField(
        default=0, help_text="compensation jobs that were dead-lettered"
    )
    deadline_at = models.DateTimeField(
        null=True, blank=True, help_text="when the run times out if it has not finished"
    )
    gate_expires_at = models.DateTimeField(
        null=True, blank=True, help_text="when the open approval gate expires unanswered"
    )
    ended_by = models.CharField(
        max_length=200, blank=True, default="", help_text="why the run was stopped early"
    )

    #: the definition version the run started with (WorkflowService.version)
    definition_version = models.CharField(max_length=64, blank=True, default="")
    parent_id = models.CharField(
        max_length=64,
        null=True,
        blank=True,
        db_index=True,
        help_text="the run whose step started this one as its child",
    )

    class Meta:
        ordering = ["-started_at"]
        permissions = [
            ("decide_workflowrun", "Can approve or reject waiting workflow runs"),
            ("cancel_workflowrun", "Can cancel workflow runs (their completed steps are undone)"),
            ("rerun_workflowrun", "Can rerun finished workflow runs from a step"),
        ]
        indexes = [
            # the admin orders runs by -started_at with the primary key as tie-breaker
            # (Django makes every changelist ordering total); these indexes hold that order,
            # so a page of the list reads 50 index entries instead of sorting a million rows
            models.Index(fields=["-started_at", "-correlation_id"], name="cw_run_recent"),
            models.Index(
                fields=["status", "-started_at", "-correlation_id"], name="cw_run_status_recent"
            ),
            models.Index(
                fields=["name", "-started_at", "-correlation_id"], name="cw_run_name_recent"
            ),
            models.Index(
                fields=["deadline_at"],
                condition=models.Q(deadline_at__isnull=False, finished_at__isnull=True),
                name="cw_run_deadlines",
            ),
            models.Index(
                fields=["gate_expires_at"],
                condition=models.Q(gate_expires_at__isnull=False),
                name="cw_run_gate_expiry",
            ),
            # the sweeper's backstop: open runs with nothing pending - normally none, so its
            # search each second reads an empty index
            models.Index(
                fields=["started_at"],
                condition=models.Q(
                    pending_jobs=0, status__in=[RunStatus.RUNNING, RunStatus.COMPENSATING]
                ),
                name="cw_run_idle",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.correlation_id} ({self.status})"


class StateDocument(models.Model):
    """A JSON document steps keep: a run's own (``scope`` is its correlation id), or shared by
    every run (``scope`` empty). ``version`` counts its writes."""

    scope = models.CharField(
        max_length=64,
        blank=True,
        default="",
        help_text="the run whose document it is; empty: shared by every run",
    )
    key = models.CharField(max_length=255)
    value = models.JSONField(null=True)
    version = models.PositiveIntegerField(default=1)
    written_by = models.CharField(
        max_length=64, blank=True, default="", help_text="the run of the last write"
    )
    updated_at = models.DateTimeField()

    class Meta:
        ordering = ["scope", "key"]
        verbose_name = "state document"
        constraints = [
            models.UniqueConstraint(fields=["scope", "key"], name="cw_state_once_per_scope")
        ]

    def __str__(self) -> str:
        return f"{self.key} of {self.scope or 'every run'} (v{self.version})"


class ScheduleFire(models.Model):
    """One firing of a declared schedule: did last night's run happen, and what did it start?

    ``slot`` is the schedule's time the firing stands for; one row per (schedule, slot), so a
    trigger that fires twice for the same time starts one run.
    """

    class Outcome(models.TextChoices):
        STARTED = "started"
        SKIPPED = "skipped"
        REPLACED = "replaced"
        #: not a firing: the first time the schedule was noticed late (slots before it are
        #: not missed)
        SEEN = "seen"

    schedule = models.CharField(max_length=201, help_text="service.schedule")
    slot = models.DateTimeField(help_text="the schedule time this firing stands for")
    fired_at = models.DateTimeField()
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    reason = models.CharField(max_length=200, blank=True, default="")
    correlation_id = models.CharField(
        max_length=64, blank=True, default="", help_text="the run it started"
    )

    class Meta:
        ordering = ["-slot"]
        constraints = [
            models.UniqueConstraint(fields=["schedule", "slot"], name="cw_fire_once_per_slot")
        ]
        indexes = [models.Index(fields=["schedule", "-slot"], name="cw_fire_latest")]

    def __str__(self) -> str:
        return f"{self.schedule} at {self.slot:%Y-%m-%d %H:%M} ({self.outcome})"


class QueueControl(models.Model):
    """An operator's hold on one queue: paused or not, and its run of failed attempts - and,
    for a queue with a rate limit, where its pacing stands.

    A row exists only for queues that were ever paused, failed or rate-limited; a queue
    without one runs.
    """

    queue = models.CharField(primary_key=True, max_length=201, help_text="service.queue")
    paused = models.BooleanField(default=False)
    paused_at = models.DateTimeField(null=True, blank=True)
    paused_by = models.CharField(max_length=150, blank=True, default="")
    reason = models.CharField(max_length=200, blank=True, default="")
    failures = models.PositiveIntegerField(
        default=0, help_text="consecutive failed attempts (reset by a success)"
    )
    next_start = models.FloatField(
        default=0.0, help_text="rate limit: the earliest next start (Unix seconds)"
    )
    rate_backlog = models.FloatField(
        default=0.0, help_text="rate limit: when the last job held back by the rate may start"
    )

    class Meta:
        verbose_name = "queue"
        permissions = [("pause_queue", "Can pause and resume queues")]

    def __str__(self) -> str:
        return f"{self.queue} ({'paused' if self.paused else 'running'})"


class QueueMinute(models.Model):
    """Attempts per queue and minute, summed by each worker process and added every few
    seconds - the dashboard's throughput and failure rate, without an extra write per job."""

    queue = models.CharField(max_length=201)
    minute = models.DateTimeField()
    succeeded = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0, help_text="failed attempts (retried or not)")
    dead = models.PositiveIntegerField(default=0)
    duration_ms = models.FloatField(default=0, help_text="sum of attempt durations")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["queue", "minute"], name="cw_queue_minute_once")
        ]
        indexes = [models.Index(fields=["minute"], name="cw_queue_minute_recent")]

    def __str__(self) -> str:
        return f"{self.queue} at {self.minute:%H:%M}"


class AuditEntry(models.Model):
    """An operator's action on a workflow (redrive, discard, approval), kept with the run."""

    correlation_id = models.CharField(max_length=64, db_index=True)
    job_id = models.CharField(max_length=32, blank=True, default="")
    action = models.CharField(max_length=32)
    actor = models.CharField(max_length=150)
    detail = models.JSONField(default=dict, blank=True)
    at = models.DateTimeField()

    class Meta:
        ordering = ["-at"]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.action} by {self.actor} at {self.at:%Y-%m-%d %H:%M:%S}"

    @classmethod
    def record(
        cls, correlation_id: str, job_id: str, action: str, actor: str, **detail: Any
    ) -> AuditEntry:
        """Write one entry (in the caller's transaction, beside the action it records)."""
        return cls.objects.create(
            correlation_id=correlation_id,
            job_id=job_id,
            action=action,
            actor=actor[:150],
            detail=detail,
            at=utcnow(),
        )


class DeadLetterManager(models.Manager["DeadLetter"]):
    def get_queryset(self) -> models.QuerySet[DeadLetter]:
        return super().get_queryset().filter(status=JobStatus.DEAD)


class DeadLetter(Job):
    """The dead-letter queues: jobs that gave up, for operators to inspect and re-drive."""

    objects: ClassVar[DeadLetterManager] = DeadLetterManager()  # type: ignore[assignment]

    class Meta:
        proxy = True
        verbose_name = "dead letter"
        ordering = ["-finished_at"]
