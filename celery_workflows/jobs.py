"""Reading a job's ledger record, asking for its cancellation, releasing its lease."""

from __future__ import annotations

from .records import JobRecord, JobStatus
from .store import get_store


def get_job(job_id: str) -> JobRecord:
    """The ledger's record of one job (raises ``JobNotFoundError``)."""
    return get_store().get_job(job_id)


def cancel(job_id: str, *, actor: str = "python") -> JobStatus:
    """Cancel a job: a queued job is cancelled at once; a running one sees
    ``ctx.cancel_requested`` become true and decides how to stop. Audited with ``actor``.
    Returns the job's status."""
    return get_store().request_cancel(job_id, actor)


def release_lease(job_id: str, *, actor: str = "python") -> bool:
    """End a running attempt's lease now, when its worker is known to be gone (a host that
    died with a long ``visibility_timeout``): the next sweep records the attempt as a lost
    lease and the job runs again; if the worker was alive after all, the fence rejects what
    it writes later. Audited with ``actor``. False if the job is not running."""
    return get_store().release_lease(job_id, actor)
