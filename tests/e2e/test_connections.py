"""A dropped database connection costs a reconnect, never a failed attempt or a stalled worker.

Workers keep their connection between jobs (``CELERY_DB_REUSE_MAX``, as the README
recommends), so the server can drop it under them: a failover, a pooler restart, an idle
timeout, ``pg_terminate_backend``. PostgreSQL only - SQLite has no server to drop anything.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connection

from celery_workflows import get_job, get_workflow
from celery_workflows.testing import WorkerProcess, wait_for
from tests.helpers import postgres_only
from tests.proj.flows import MAIN_QUEUES, shop
from tests.proj.workflows import crash

pytestmark = [
    pytest.mark.worker,
    pytest.mark.usefixtures("transactional_db"),
    postgres_only("needs a database server that can drop connections (PostgreSQL)"),
]


def terminate_other_backends() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return int(cursor.fetchone()[0])


def failed_attempts(job_ids: list[str]) -> list[dict]:
    return [
        a for job_id in job_ids for a in get_job(job_id).attempt_log if a["outcome"] != "succeeded"
    ]


def test_a_terminated_connection_is_reopened_and_no_job_fails(start_worker, wait_status):
    # crash.slow is consumed by no session worker: this worker runs every job below
    worker = start_worker([crash.queue("slow").qualified_name], concurrency=2, name="reconnect")
    warm = crash.enqueue("slow", {"seconds": 0})
    wait_status(warm.job_id, "succeeded", timeout=20)  # the worker now holds connections
    assert terminate_other_backends() >= 1
    started = time.monotonic()
    jobs = [crash.enqueue("slow", {"seconds": 0}).job_id for n in range(10)]
    for job_id in jobs:
        wait_status(job_id, "succeeded", timeout=20)
    # seconds, not the sweeper's re-publish delay: no notice was consumed by a failing task
    assert time.monotonic() - started < 10
    assert failed_attempts(jobs) == []
    log = Path(worker.log_path).read_text()
    assert "raised unexpected" not in log
    assert "failed (" in log and "retrying" in log  # it noticed, reconnected and went on
    worker.stop()


def test_connections_cut_while_handlers_run_cost_no_attempt(start_worker, wait_status):
    # handlers longer than the queue controls' refresh (1 s): the first statement after the
    # cut, in the outcome path, is the pause check - it must reconnect like every other
    from django_app.models import Job

    worker = start_worker([crash.queue("slow").qualified_name], concurrency=2, name="midjob")
    warm = crash.enqueue("slow", {"seconds": 0})
    wait_status(warm.job_id, "succeeded", timeout=20)
    jobs = [crash.enqueue("slow", {"seconds": 1.3}).job_id for n in range(6)]
    cuts = 0
    for _ in range(3):
        wait_for(lambda: Job.objects.filter(id__in=jobs, status="running").exists(), timeout=20)
        time.sleep(0.4)  # inside the handlers' sleep
        cuts += terminate_other_backends()
    for job_id in jobs:
        wait_status(job_id, "succeeded", timeout=30)
    assert cuts >= 3
    assert failed_attempts(jobs) == []
    assert "raised unexpected" not in Path(worker.log_path).read_text()
    worker.stop()


@pytest.fixture
def pgbouncer() -> Iterator[int]:
    """PgBouncer in transaction mode on a free loopback port, in front of the test server."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    assert os.path.exists(binary), "PgBouncer is required: apt-get install -y pgbouncer"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = Path(tempfile.mkdtemp(prefix="cw-pgbouncer-"))
    (folder / "users.txt").write_text('"postgres" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n* = host=127.0.0.1 port=5432\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        "pool_mode = transaction\nmax_client_conn = 200\ndefault_pool_size = 10\n"
        f"admin_users = postgres\nlogfile = {folder / 'pgbouncer.log'}\n"
        f"pidfile = {folder / 'pgbouncer.pid'}\n"
    )
    os.chmod(folder, 0o777)
    for child in folder.iterdir():
        os.chmod(child, 0o666)
    user = ["-u", "postgres"] if os.geteuid() == 0 else []  # it refuses to run as root
    process = subprocess.Popen([binary, *user, str(folder / "pgbouncer.ini")])
    try:
        wait_for(lambda: _listening(port), timeout=10, message="pgbouncer did not start")
        yield port
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_workflows_run_behind_pgbouncer_in_transaction_mode_and_survive_its_restart(
    pgbouncer, worker_env
):
    database = connection.settings_dict["NAME"]
    env = {
        **worker_env,
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:{pgbouncer}/{database}",
        # PgBouncer < 1.21 in transaction mode cannot keep prepared statements: Django's default
        "DATABASE_PREPARE_THRESHOLD": "none",
    }
    worker = WorkerProcess(
        "tests.proj.celery_app",
        MAIN_QUEUES,
        concurrency=2,
        env=env,
        hostname="pgbouncer@%h",
        log_path=str(Path(tempfile.gettempdir()) / "cw-pgbouncer-worker.log"),
    ).start()
    try:
        worker.wait_ready(timeout=90)  # the timeouts below count from a consuming worker
        first = shop.emit("orderPlaced", {"orderId": "pgb-1"})
        wait_for(lambda: get_workflow("pgb-1").status == "completed", timeout=30)
        # drop every server and client connection PgBouncer holds, as a pooler restart would
        subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-p",
                str(pgbouncer),
                "-U",
                "postgres",
                "pgbouncer",
                "-c",
                f"KILL {database}",
                "-c",
                f"RESUME {database}",
            ],
            check=True,
            capture_output=True,
        )
        orders = [shop.emit("orderPlaced", {"orderId": f"pgb-{n}"}) for n in range(2, 7)]
        for n in range(2, 7):
            wait_for(lambda n=n: get_workflow(f"pgb-{n}").status == "completed", timeout=30)
        runs = [get_workflow(e.correlation_id) for e in [first, *orders]]
        jobs = [h.id for run in runs for h in run.history if h.kind == "job"]
        assert failed_attempts(jobs) == []
    finally:
        worker.stop()
