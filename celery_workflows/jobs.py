"""Reading a job's ledger record and asking for its cancellation."""

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
