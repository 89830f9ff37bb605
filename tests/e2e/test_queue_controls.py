"""Operating queues on a real worker: pause and resume lose nothing and run nothing twice; a
queue that keeps failing pauses itself; the dashboard's figures match the ledger."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db.models import Count

from celery_workflows import pause_queue, resume_queue
from celery_workflows.testing import wait_for
from django_app.models import AuditEntry, Job, QueueControl, QueueMinute
from tests.helpers import ARTIFACTS
from tests.proj.workflows import ops

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("transactional_db")]

STEADY, BRITTLE, FUSSY = "ops.steady", "ops.brittle", "ops.fussy"


@pytest.fixture(scope="module")
def ops_worker(start_worker):
    return start_worker([STEADY, BRITTLE, FUSSY], concurrency=2, name="ops")


@pytest.fixture(autouse=True)
def running_queues(redis_client, transactional_db):
    redis_client.delete("brittle:down")
    yield
    for queue in (STEADY, BRITTLE, FUSSY):
        resume_queue(queue, actor="test teardown")


def statuses(jobs) -> list[str]:
    return sorted(
        Job.objects.filter(id__in=[j.job_id for j in jobs]).values_list("status", flat=True)
    )


def test_a_paused_queue_keeps_its_jobs_and_runs_each_once_when_resumed(ops_worker, recorder):
    assert pause_queue(STEADY, actor="ops-ann", reason="supplier maintenance")
    assert not pause_queue(STEADY, actor="ops-ann")  # once
    jobs = [ops.enqueue("steady", {"n": n}) for n in range(5)]
    jobs.append(ops.enqueue("steady", {"n": "later"}, delay=timedelta(seconds=1)))
    # the worker receives the notices, leaves the jobs in the ledger, and the sweeper does
    # not publish the paused queue's jobs - not even the delayed one once it is due
    wait_for(
        lambda: (
            Job.objects.filter(
                id__in=[j.job_id for j in jobs[:5]], published_at__isnull=True
            ).count()
            == 5
        ),
        timeout=15,
        message="the paused queue's notices were not parked",
    )
    time.sleep(3)
    assert statuses(jobs) == ["queued"] * 6
    assert all(recorder.runs(j.job_id) == [] for j in jobs)

    assert resume_queue(STEADY, actor="ops-ann")
    wait_for(lambda: statuses(jobs) == ["succeeded"] * 6, timeout=20, message="not resumed")
    assert all(len(recorder.runs(j.job_id)) == 1 for j in jobs)
    actions = list(
        AuditEntry.objects.filter(action__in=["pause_queue", "resume_queue"])
        .order_by("at")
        .values_list("action", "actor", "detail")
    )
    assert [(a, who) for a, who, _ in actions] == [
        ("pause_queue", "ops-ann"),
        ("resume_queue", "ops-ann"),
    ]
    assert actions[0][2] == {"queue": STEADY, "reason": "supplier maintenance"}


def test_a_queue_that_keeps_failing_pauses_itself_and_holds_the_rest(
    ops_worker, recorder, redis_client
):
    redis_client.delete("queue_paused")
    redis_client.set("brittle:down", 1)
    failing = [ops.enqueue("brittle", {"n": n}) for n in range(3)]
    wait_for(
        lambda: QueueControl.objects.filter(queue=BRITTLE, paused=True).exists(),
        timeout=20,
        message="the poison threshold never paused the queue",
    )
    assert statuses(failing) == ["dead"] * 3
    control = QueueControl.objects.get(queue=BRITTLE)
    assert control.paused_by == "poison-threshold"
    assert control.reason.startswith("3 attempts in a row failed")
    assert AuditEntry.objects.filter(action="pause_queue", actor="poison-threshold").exists()
    # the queue_paused signal was sent in the worker process that paused it
    (sent,) = [json.loads(x) for x in redis_client.lrange("queue_paused", 0, -1)]
    assert sent["queue"] == BRITTLE and sent["actor"] == "poison-threshold"

    held = [ops.enqueue("brittle", {"n": n}) for n in range(3, 7)]
    time.sleep(2.5)
    assert statuses(held) == ["queued"] * 4  # not burnt on the broken dependency

    redis_client.delete("brittle:down")  # the dependency is back
    call_command("workflows", "resume", BRITTLE, "--actor", "ops-bo")
    wait_for(lambda: statuses(held) == ["succeeded"] * 4, timeout=20, message="not resumed")
    assert all(len(recorder.runs(j.job_id)) == 1 for j in held)
    assert QueueControl.objects.get(queue=BRITTLE).failures == 0


def test_stats_match_the_ledger_and_count_attempts_per_minute(ops_worker, recorder, capsys):
    done = [ops.enqueue("steady", {"n": n}) for n in range(4)]
    wait_for(lambda: statuses(done) == ["succeeded"] * 4, timeout=20)
    pause_queue(STEADY, actor="ops-cy", reason="checking figures")
    waiting = [ops.enqueue("steady", {"n": n}) for n in range(3)]
    # each process adds its per-minute sums every few seconds
    wait_for(
        lambda: QueueMinute.objects.filter(queue=STEADY).values_list("succeeded", flat=True),
        timeout=15,
    )
    wait_for(
        lambda: (
            sum(QueueMinute.objects.filter(queue=STEADY).values_list("succeeded", flat=True)) >= 4
        ),
        timeout=15,
        message="per-minute figures never reached the ledger",
    )
    call_command("workflows", "stats", "--json")
    stats = json.loads(capsys.readouterr().out)
    row = next(q for q in stats["queues"] if q["queue"] == STEADY)
    in_ledger = dict(Job.objects.filter(queue=STEADY).values_list("status").annotate(n=Count("id")))
    assert row["waiting"] == in_ledger.get("queued", 0) == 3
    assert row["paused"] is True and row["paused_by"] == "ops-cy"
    assert row["per_minute"] > 0 and row["failure_rate"] == 0.0
    assert len(stats["minutes"]) == 60

    call_command("workflows", "stats")
    text = capsys.readouterr().out
    assert STEADY in text and "paused by ops-cy: checking figures" in text
    assert len(waiting) == 3


def test_the_dashboard_in_a_browser_shows_the_ledgers_figures_and_resumes_a_queue(
    ops_worker, live_server, browser, redis_client
):
    from django.contrib.auth.models import Permission, User

    user = User.objects.create_user("ops", password="s3cret-pw", is_staff=True)
    for codename in ("view_queuecontrol", "pause_queue", "view_workflowrun"):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    redis_client.set("brittle:down", 1)
    dead = ops.enqueue("brittle", {"n": "poison"})
    wait_for(lambda: statuses([dead]) == ["dead"], timeout=20)
    pause_queue(STEADY, actor="ops-dee", reason="supplier maintenance")
    waiting = [ops.enqueue("steady", {"n": n}) for n in range(2)]
    wait_for(lambda: Job.objects.filter(queue=STEADY, published_at__isnull=True).count() == 2)

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{live_server.url}/admin/login/?next=/admin/celery_workflows/")
    page.fill("#id_username", "ops")
    page.fill("#id_password", "s3cret-pw")
    page.click("input[type=submit]")
    page.click("text=Queues")  # linked from the app index
    page.wait_for_selector(".cw-dashboard")
    for queue in (STEADY, BRITTLE):
        row = page.locator(f'tr.cw-queue[data-queue="{queue}"]')
        in_ledger = dict(
            Job.objects.filter(queue=queue).values_list("status").annotate(n=Count("id"))
        )
        assert int(row.get_attribute("data-waiting")) == in_ledger.get("queued", 0)
        assert int(row.get_attribute("data-dead")) == in_ledger.get("dead", 0)
    steady = page.locator(f'tr.cw-queue[data-queue="{STEADY}"]')
    assert steady.get_attribute("data-paused") == "true"
    assert "paused by ops-dee: supplier maintenance" in steady.inner_text()
    assert page.locator("svg.cw-throughput").count() == 1
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "admin-queue-dashboard.png"), full_page=True)

    steady.locator("button.cw-resume").click()
    page.wait_for_selector(".messagelist")
    assert f"Resumed {STEADY}." in page.inner_text(".messagelist")
    wait_for(lambda: statuses(waiting) == ["succeeded"] * 2, timeout=20)
    assert AuditEntry.objects.filter(action="resume_queue", actor="ops").exists()


def test_retries_asked_for_and_bad_payloads_do_not_count_towards_the_poison_threshold(
    ops_worker,
):
    import uuid

    from tests.helpers import write_unvalidated

    def run(payload: dict) -> None:
        # one at a time, so the streak is read in order
        if "do" in payload:
            job = ops.enqueue("fussy", payload)
        else:  # a payload that fails the queue's schema (written by an older deploy, say)
            job = write_unvalidated(ops.queue("fussy"), payload, uuid.uuid4().hex)
        wait_for(lambda: Job.objects.get(id=job.job_id).status == "dead", timeout=15)

    for payload in ({"do": "fail"}, {"do": "fail"}, {"do": "retry"}, {"nothing": 1}):
        run(payload)
    assert QueueControl.objects.get(queue=FUSSY).failures == 2
    assert not QueueControl.objects.get(queue=FUSSY).paused
    run({"do": "fail"})  # the third failure in a row
    wait_for(lambda: QueueControl.objects.get(queue=FUSSY).paused, timeout=10)


def test_a_success_ends_the_failure_streak_whatever_this_process_read_before(transactional_db):
    from celery_workflows import control
    from celery_workflows.clock import utcnow
    from celery_workflows.records import AttemptOutcome, AttemptRecord, JobStatus, Outcome
    from celery_workflows.store import get_store

    store = get_store()
    control.queue_controls(store)  # this process's copy: no streak on ops.fussy
    QueueControl.objects.update_or_create(queue=FUSSY, defaults={"failures": 2})  # others
    now = utcnow()
    record = AttemptRecord(1, "w", now, now, AttemptOutcome.SUCCEEDED)
    control.note_outcome(store, ops.queue("fussy"), Outcome(JobStatus.SUCCEEDED, record), False)
    assert QueueControl.objects.get(queue=FUSSY).failures == 0
