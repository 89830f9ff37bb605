"""The ledger: one row per job, carrying its lease and its full attempt history.

A successful job costs three writes: the insert at enqueue, the claim (lease) and the outcome.
Attempts are kept as a JSON list on the job row (``attempt_log``), appended by the fenced
outcome write, so recording an attempt never needs a second statement.
"""

from __future__ import annotations

from django.db import models

from celery_workflows.store import JobStatus


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
    correlation_id = models.CharField(max_length=64, db_index=True)
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
    redriven_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="redrives"
    )
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at"]
        # partial indexes: a row is only in the index its status needs, so the hot UPDATEs
        # (claim, outcome) touch as few index entries as possible
        constraints = [
            models.UniqueConstraint(
                fields=["queue", "idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="cw_job_unique_idempotency_key",
            ),
        ]
        indexes = [
            models.Index(
                fields=["available_at"], condition=models.Q(status="queued"), name="cw_job_due"
            ),
            models.Index(
                fields=["lease_expires_at"],
                condition=models.Q(status="running"),
                name="cw_job_leases",
            ),
            models.Index(
                fields=["queue", "-finished_at"],
                condition=models.Q(status="dead"),
                name="cw_job_dead_letters",
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


class WorkflowRun(models.Model):
    """One workflow (correlation id): created when it starts, settled once when its last job
    ends. Its steps and events are the jobs and events sharing its correlation id."""

    class Status(models.TextChoices):
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"

    correlation_id = models.CharField(primary_key=True, max_length=64)
    name = models.CharField(max_length=201, help_text="what started it: an event or a queue")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    last_job_id = models.CharField(max_length=32, blank=True, default="")

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["status", "-started_at"], name="cw_run_status")]

    def __str__(self) -> str:
        return f"{self.name} {self.correlation_id} ({self.status})"
