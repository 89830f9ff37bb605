"""A deploy that strands runs in flight is reported where an operator looks - never by
locking them out: ``manage.py migrate``, ``check``, ``runserver`` and every ``workflows``
command keep working, run as an operator runs them (``manage.py`` in a shell, with the system
checks that ``call_command`` skips)."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
import uuid

import pytest
from django.core.checks import run_checks
from django.db import connection
from django.test.utils import CaptureQueriesContext

from celery_workflows.testing import wait_for
from django_app.models import Job
from tests.helpers import MANAGE, manage, shell_environment, staff, started_by_the_old_deploy

pytestmark = [pytest.mark.usefixtures("transactional_db")]

STRANDED = "ver.retiredStep"


@pytest.fixture
def stranded_run() -> str:
    """A run of the previous deploy whose next job waits on a queue this deploy removed."""
    return started_by_the_old_deploy("d-1", queue=STRANDED)


def test_migrate_runs_and_warns_about_a_stranded_run(stranded_run, worker_env):
    done = manage(worker_env, "migrate")
    assert done.returncode == 0, done.stderr
    assert "No migrations to apply" in done.stdout
    assert "celery_workflows.W004" in done.stderr and STRANDED in done.stderr


def test_makemigrations_and_plain_check_are_not_blocked_and_do_not_read_the_ledger(
    stranded_run, worker_env
):
    assert manage(worker_env, "makemigrations", "--check", "--dry-run").returncode == 0
    done = manage(worker_env, "check")
    assert done.returncode == 0, done.stderr
    assert "W004" not in done.stdout + done.stderr
    with CaptureQueriesContext(connection) as queries:
        run_checks()
    assert not [q for q in queries.captured_queries if Job._meta.db_table in q["sql"]]


@pytest.mark.parametrize("flags", [["--deploy"], ["--database", "default"]])
def test_check_before_a_deploy_names_the_stranded_runs_and_the_way_out(
    stranded_run, worker_env, flags
):
    done = manage(worker_env, "check", *flags)
    assert done.returncode == 0, done.stderr  # a warning: it informs, it does not lock out
    report = done.stdout + done.stderr
    assert report.count("celery_workflows.W004") == 1
    assert f"1 run(s) in flight need 1 job(s) waiting or running on queue {STRANDED}" in report
    assert f"manage.py workflows rename-queue {STRANDED} <new name>" in report
    assert "d-1" in report and "(definition v1)" in report


def test_the_workflows_commands_work_and_the_hinted_fix_clears_the_warning(
    stranded_run, worker_env
):
    assert manage(worker_env, "workflows", "status", "d-1").returncode == 0
    stats = manage(worker_env, "workflows", "stats")
    assert stats.returncode == 0, stats.stderr
    assert "runs in flight that this deploy no longer serves" in stats.stdout
    assert f"queue {STRANDED}" in stats.stdout
    moved = manage(worker_env, "workflows", "rename-queue", STRANDED, "ver.checkStock")
    assert moved.returncode == 0, moved.stderr
    assert "moved to ver.checkStock: 1 waiting job(s)" in moved.stdout
    after = manage(worker_env, "check", "--deploy")
    assert "W004" not in after.stdout + after.stderr
    assert "no longer serves" not in manage(worker_env, "workflows", "stats").stdout


def test_the_queue_dashboard_shows_the_stranded_runs(stranded_run):
    from django.core.cache import cache

    cache.clear()
    page = staff("ops", "view_queuecontrol").get("/admin/celery_workflows/queuecontrol/")
    assert page.status_code == 200
    assert b"Runs in flight this deploy no longer serves" in page.content
    assert f'data-name="{STRANDED}"'.encode() in page.content


def test_runserver_serves_requests_with_a_stranded_run(stranded_run, worker_env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, str(MANAGE), "runserver", f"127.0.0.1:{port}", "--noreload"],
        env=shell_environment(worker_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        def answers() -> int:
            if server.poll() is not None:
                raise AssertionError(f"runserver exited: {server.stdout.read().decode()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/login/") as page:
                    return int(page.status)
            except OSError:
                return 0

        assert wait_for(answers, timeout=20, interval=0.2) == 200
    finally:
        server.terminate()
        server.wait(10)


def test_a_map_whose_branches_gather_into_a_removed_queue_is_named_and_can_be_moved(
    worker_env,
):
    """A map of the old deploy is still gathering into a queue this deploy renamed: ``check``
    names it (its gathering job does not exist yet, so no other warning could), and
    ``rename-queue`` points the gather at the new name."""
    from django_app.models import Gather, WorkflowRun

    run = started_by_the_old_deploy("g-1")  # an open run of the old deploy
    Gather.objects.create(
        id=uuid.uuid4().hex,
        correlation_id=run,
        into_queue="ver.oldCollect",
        total=3,
        succeeded=1,
        on_failure="fail",
        created_at=WorkflowRun.objects.get(correlation_id=run).started_at,
    )
    report = manage(worker_env, "check", "--deploy")
    assert report.returncode == 0, report.stderr
    assert (
        "1 run(s) in flight need 1 map(s) whose branches gather into queue ver.oldCollect"
        in report.stderr
    )
    moved = manage(worker_env, "workflows", "rename-queue", "ver.oldCollect", "ver.ship")
    assert moved.returncode == 0, moved.stderr
    assert "1 gathering map(s)" in moved.stdout
    assert Gather.objects.get(correlation_id=run).into_queue == "ver.ship"
    assert "ver.oldCollect" not in manage(worker_env, "check", "--deploy").stderr
