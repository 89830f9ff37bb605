"""What operators do to jobs - read, re-drive, discard, cancel, prune - each action audited in
the transaction that performs it, whichever door (Python, admin, command) it came through."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.db.models.functions import Greatest

from celery_workflows.clock import utcnow
from celery_workflows.errors import JobNotFoundError, NotDeadLetteredError, RenameError
from celery_workflows.records import (
    OPEN_RUN_STATUSES,
    CopiedStep,
    EnqueueResult,
    JobRecord,
    JobStatus,
    NewJob,
    Outbox,
    RunStatus,
)
from celery_workflows.records import (
    Event as EventRecord,
)
from celery_workflows.store import UndoPlanner

from .ledger import SqlLedger
from .models import AuditEntry, Event, Gather, Job, StateDocument, WorkflowRun
from .outcomes import lock_run, stop
from .rows import dt, event_values, job_values, js
from .runcounters import RunDelta, change_run
from .statements import EVENT, EVENT_COLUMNS, JOB, JOB_COLUMNS, insert_rows


class OperatorActions:
    """:class:`celery_workflows.store.Operations` for the Django ledger."""

    def get_job(self, job_id: str) -> JobRecord:
        try:
            return job_record(Job.objects.get(id=job_id))
        except Job.DoesNotExist:
            raise JobNotFoundError(f"no job with id {job_id!r}") from None

    def list_dead_letters(self, queue: str | None, limit: int) -> list[JobRecord]:
        rows = Job.objects.filter(status=JobStatus.DEAD)
        if queue is not None:
            rows = rows.filter(queue=queue)
        return [job_record(row) for row in rows.order_by("-finished_at")[:limit]]

    def redrive(
        self, job_id: str, new_job: NewJob, actor: str, detail: dict[str, Any]
    ) -> EnqueueResult:
        with transaction.atomic():
            lock_run(new_job.correlation_id)
            if not Job.objects.filter(id=job_id, status=JobStatus.DEAD).update(
                status=JobStatus.REDRIVEN
            ):
                raise NotDeadLetteredError(f"job {job_id} is no longer dead-lettered")
            # the new job replaces the dead letter: counted pending by insert_job. A
            # re-driven compensation carries on undoing: its run is compensating again
            undoing = new_job.compensates is not None
            WorkflowRun.objects.filter(correlation_id=new_job.correlation_id).update(
                status=RunStatus.COMPENSATING if undoing else RunStatus.RUNNING,
                finished_at=None,
                dead_jobs=Greatest(F("dead_jobs") - 1, 0),
                failed_compensations=(
                    Greatest(F("failed_compensations") - 1, 0)
                    if undoing
                    else F("failed_compensations")
                ),
            )
            SqlLedger().insert_job(new_job)
            AuditEntry.record(new_job.correlation_id, job_id, "redrive", actor, **detail)
        return EnqueueResult(new_job.id, True, new_job.correlation_id)

    def start_rerun(
        self,
        of: str,
        copies: list[CopiedStep],
        events: list[EventRecord],
        job: NewJob,
        actor: str,
        detail: dict[str, Any],
    ) -> EnqueueResult:
        now = utcnow()
        with transaction.atomic():
            insert_rows(EVENT, EVENT_COLUMNS, [event_values(e) for e in events])
            result = SqlLedger().insert_job(job)  # the new run, with its one pending job
            rows = []
            for copy in copies:
                values = job_values(copy.job, now)
                values.update(
                    status=JobStatus.SUCCEEDED.value,
                    attempts=copy.attempts,
                    result=js(copy.result),
                    attempt_log=js(copy.attempt_log),
                    finished_at=dt(copy.finished_at),
                    published_at=None,
                    created_at=dt(copy.created_at),
                )
                rows.append(values)
            insert_rows(JOB, JOB_COLUMNS, rows)
            AuditEntry.record(job.correlation_id, job.id, "rerun", actor, **detail)
            AuditEntry.record(of, "", "rerun", actor, **detail)
        return result

    def discard(self, job_id: str, actor: str) -> None:
        with transaction.atomic():
            job = Job.objects.select_for_update().filter(id=job_id).first()
            if job is None:
                raise JobNotFoundError(f"no job with id {job_id!r}")
            if job.status != JobStatus.DEAD:
                raise NotDeadLetteredError(f"job {job_id} is {job.status}, not dead-lettered")
            Job.objects.filter(id=job_id).update(status=JobStatus.DISCARDED)
            AuditEntry.record(
                job.correlation_id,
                job_id,
                "discard",
                actor,
                queue=job.queue,
                reason=job.dead_reason,
            )

    def request_cancel(self, job_id: str, actor: str) -> JobStatus:
        now = utcnow()
        correlation_id = Job.objects.filter(id=job_id).values_list("correlation_id", flat=True)
        with transaction.atomic():
            if correlation_id:
                lock_run(correlation_id[0])  # the run first, as every write of a run
            job = Job.objects.select_for_update().filter(id=job_id).first()
            if job is None:
                raise JobNotFoundError(f"no job with id {job_id!r}")
            if job.status == JobStatus.QUEUED:
                Job.objects.filter(id=job_id).update(
                    status=JobStatus.CANCELLED, finished_at=now, cancel_requested=True
                )
            elif job.status == JobStatus.RUNNING:
                Job.objects.filter(id=job_id).update(cancel_requested=True)
            else:
                return JobStatus(job.status)
            AuditEntry.record(job.correlation_id, job_id, "cancel", actor, was=job.status)
            if job.status == JobStatus.QUEUED:
                change_run(job.correlation_id, job_id, now, RunDelta(pending=-1, cancelled=1))
                return JobStatus.CANCELLED
        return JobStatus.RUNNING

    def release_lease(self, job_id: str, actor: str) -> bool:
        with transaction.atomic():
            running = Job.objects.select_for_update().filter(id=job_id, status=JobStatus.RUNNING)
            job = running.first()
            if job is None:
                return False
            # an operator ends a lease because the attempt is stuck: it counts, even for a
            # step handed over by local continuation (which counts from its outcome otherwise)
            Job.objects.filter(id=job_id).update(
                lease_expires_at=utcnow(), attempts=Greatest(F("attempts"), 1)
            )
            AuditEntry.record(job.correlation_id, job_id, "release_lease", actor, worker=job.worker)
        return True

    def stop_run(
        self,
        correlation_id: str,
        reason: str,
        actor: str,
        outbox: Outbox,
        undo: UndoPlanner | None,
    ) -> list[NewJob] | None:
        return stop(correlation_id, reason, actor, outbox, undo)

    def rename_queue(self, old: str, new: str, actor: str) -> dict[str, int]:
        jobs = Job.objects.filter(queue=old)
        unfinished = WorkflowRun.objects.filter(status__in=OPEN_RUN_STATUSES).values(
            "correlation_id"
        )
        moves = {
            # published again by the sweeper of a worker that consumes the new queue
            "waiting": (jobs.filter(status=JobStatus.QUEUED), {"published_at": None}),
            "dead": (jobs.filter(status=JobStatus.DEAD), {}),
            "completed": (
                jobs.filter(status=JobStatus.SUCCEEDED, correlation_id__in=unfinished),
                {},
            ),
        }
        counts = {"running": jobs.filter(status=JobStatus.RUNNING).count()}
        service = new.split(".", 1)[0]
        try:
            with transaction.atomic():
                runs: set[str] = set()
                for kind, (rows, extra) in moves.items():
                    runs.update(rows.values_list("correlation_id", flat=True).distinct())
                    counts[kind] = rows.update(queue=new, service=service, **extra)
                # maps still gathering into the old name gather into the new one
                gathers = Gather.objects.filter(into_queue=old, correlation_id__in=unfinished)
                runs.update(gathers.values_list("correlation_id", flat=True).distinct())
                counts["gathers"] = gathers.update(into_queue=new)
                for correlation_id in sorted(runs):
                    AuditEntry.record(correlation_id, "", "rename_queue", actor, old=old, new=new)
        except IntegrityError as exc:
            raise RenameError(
                f"cannot move jobs of {old} to {new}: jobs with the same idempotency key exist "
                f"on both queues ({exc})"
            ) from exc
        counts["runs"] = len(runs)
        return counts

    def rename_event(self, old: str, new: str, actor: str) -> int:
        moved = 0
        with transaction.atomic():
            waiting = WorkflowRun.objects.select_for_update().filter(
                status=RunStatus.WAITING, waiting_for__isnull=False
            )
            for run in waiting:
                gate = dict(run.waiting_for or {})
                keys = ("approve_event", "reject_event", "timeout_event")
                changed = [k for k in keys if gate.get(k) == old]
                if not changed:
                    continue
                gate.update({k: new for k in changed})
                WorkflowRun.objects.filter(correlation_id=run.correlation_id).update(
                    waiting_for=gate
                )
                AuditEntry.record(run.correlation_id, "", "rename_event", actor, old=old, new=new)
                moved += 1
        return moved

    def prune_finished(self, finished_before: datetime, batch_size: int, actor: str) -> int:
        finished = WorkflowRun.objects.exclude(status__in=OPEN_RUN_STATUSES).filter(
            finished_at__lt=finished_before
        )
        total = 0
        while True:
            with transaction.atomic():
                batch = list(finished.values_list("correlation_id", flat=True)[:batch_size])
                if batch:
                    Job.objects.filter(correlation_id__in=batch).delete()
                    Event.objects.filter(correlation_id__in=batch).delete()
                    # a run's own documents go with it; shared ones stay (other runs use them)
                    StateDocument.objects.filter(scope__in=batch).delete()
                    WorkflowRun.objects.filter(correlation_id__in=batch).delete()
                    total += len(batch)
            if not batch:
                break
        AuditEntry.record(
            "", "", "prune", actor, runs=total, finished_before=finished_before.isoformat()
        )
        return total


def job_record(row: Job) -> JobRecord:
    return JobRecord(
        id=row.id,
        service=row.service,
        queue=row.queue,
        status=JobStatus(row.status),
        payload=row.payload,
        result=row.result,
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        correlation_id=row.correlation_id,
        available_at=row.available_at,
        created_at=row.created_at,
        finished_at=row.finished_at,
        worker=row.worker,
        dead_reason=row.dead_reason,
        idempotency_key=row.idempotency_key,
        cancel_requested=row.cancel_requested,
        redriven_from=row.redriven_from,
        caused_by=row.caused_by,
        attempt_log=list(row.attempt_log or []),
        compensates=row.compensates,
        trace_id=row.trace_id,
        priority=row.priority,
        started_at=row.started_at,
        gather_id=row.gather_id,
        gather_index=row.gather_index,
    )
