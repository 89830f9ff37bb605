"""Under the threads and gevent pools the lease alarm cannot stop a handler - and nothing else
changes: the lease still expires, another attempt takes over, and the overrunning attempt's
late result is rejected by the fence."""

from __future__ import annotations

from pathlib import Path

import pytest

from celery_workflows import get_job
from celery_workflows.testing import WorkerProcess, wait_for
from tests.proj.workflows import crash

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("transactional_db")]

OVERRUN = crash.queue("overrun").qualified_name


@pytest.mark.parametrize("pool", ["threads", "gevent"])
def test_an_overrunning_handler_is_taken_over_and_its_late_result_rejected(
    pool, worker_env, recorder, wait_status, tmp_path
):
    log = tmp_path / f"{pool}.log"
    worker = WorkerProcess(
        "tests.proj.celery_app",
        [OVERRUN],
        concurrency=2,
        pool=pool,
        env=worker_env,
        hostname=f"{pool}@%h",
        log_path=str(log),
    ).start()
    try:
        worker.wait_ready(timeout=90)  # the timeouts below count from a consuming worker
        job = crash.enqueue("overrun", {"seconds": 4})
        wait_status(job.job_id, "succeeded", timeout=20)
        assert [a["outcome"] for a in get_job(job.job_id).attempt_log] == [
            "lease_expired",
            "succeeded",
        ]
        # the first attempt was not interrupted: it ran to its end, then the fence refused it
        wait_for(
            lambda: any(r.get("done") and r["attempt"] == 1 for r in recorder.runs(job.job_id)),
            timeout=10,
            message="the first attempt never finished",
        )
        wait_for(lambda: "rejected" in Path(log).read_text(), timeout=10)
        record = get_job(job.job_id)
        assert record.result == "finished attempt 2"
        assert [a["outcome"] for a in record.attempt_log] == ["lease_expired", "succeeded"]
    finally:
        worker.stop()
