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
