"""Schedules fire on a real celery beat, once per slot, with their concurrency and missed-run
policies - and every firing is a row of the ledger."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from celery_workflows import get_workflow
from celery_workflows.clock import utcnow
from celery_workflows.schedules import SCHEDULES_QUEUE, fire
from celery_workflows.testing import WaitTimeout, WorkerProcess, wait_for

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("transactional_db")]


def fires(schedule: str) -> list:
    from django_app.models import ScheduleFire

    return list(ScheduleFire.objects.filter(schedule=schedule).order_by("slot"))


def test_a_schedule_fires_on_a_real_celery_beat_once_per_slot(
    worker_env, redis_client, tmp_path, request
):
    redis_client.delete("tocks")
    worker = WorkerProcess(
        "tests.proj.celery_app",
        [SCHEDULES_QUEUE, "t.tock"],
        concurrency=1,
        env=worker_env,
        hostname="beatworker@%h",
        log_path=str(tmp_path / "worker.log"),
    ).start()
    request.addfinalizer(worker.stop)
    beat = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.proj.celery_app",
            "beat",
            "-s",
            str(tmp_path / "schedule"),
            "--max-interval",
            "1",
            "-l",
            "INFO",
        ],
        env={**os.environ, **worker_env, "PYTHONUNBUFFERED": "1"},
        stdout=(tmp_path / "beat.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        started = wait_for(
            lambda: (
                (f := [x for x in fires("t.tick") if x.outcome == "started"]) and len(f) >= 3 and f
            ),
            timeout=20,
        )
    except WaitTimeout:
        logs = {name: (tmp_path / name).read_text()[-2000:] for name in ("beat.log", "worker.log")}
        pytest.fail(f"beat fired too little: {fires('t.tick')} {logs}")
    finally:
        beat.terminate()
        beat.wait(10)
    slots = [f.slot for f in started]
    assert len(set(slots)) == len(slots)  # one firing per slot
    assert all(s.microsecond == 0 for s in slots)
    wait_for(lambda: all(get_workflow(f.correlation_id).status == "completed" for f in started))
    tocks = [json.loads(x)["run"] for x in redis_client.lrange("tocks", 0, -1)]
    assert {f.correlation_id for f in started} <= set(tocks)


def test_a_trigger_that_fires_twice_for_one_slot_starts_one_run():
    slot = (utcnow() - timedelta(days=30)).replace(minute=0, second=0, microsecond=0)
    at = (slot + timedelta(seconds=5)).isoformat()  # beat sends it just after the hour
    first, second = fire("t.hourlySkip", fired_at=at), fire("t.hourlySkip", fired_at=at)
    assert len(first) == 1 and second == []
    assert len(fires("t.hourlySkip")) == 1


def test_forbid_skips_a_firing_while_the_previous_run_is_unfinished():
    base = utcnow().replace(minute=0, second=0, microsecond=0)
    assert fire("saga.forbidden", fired_at=base.isoformat())
    assert fire("saga.forbidden", fired_at=(base + timedelta(hours=1)).isoformat()) == []
    first, second = fires("saga.forbidden")
    assert (first.outcome, second.outcome) == ("started", "skipped")
    assert second.reason == "previous run still unfinished" and not second.correlation_id


def test_forbid_holds_over_many_firings_and_a_beat_restart_until_the_started_run_ends(
    start_worker,
):
    # the schedules queue on a real worker, fired as beat fires it (the firing time stamped
    # when it is sent), hour after hour on the test clock; the run of the first firing stays
    # open (its first job waits: no worker here consumes the saga's queues)
    from types import SimpleNamespace

    from celery_workflows import cancel_workflow
    from celery_workflows.celery_integration import _catch_up_schedules
    from celery_workflows.schedules import FIRE_TASK
    from celery_workflows.testing import TestClock
    from tests.proj.celery_app import app

    clock = TestClock().install()
    worker = start_worker(
        [SCHEDULES_QUEUE], concurrency=1, name="beatless", extra_env=clock.environment
    )
    try:
        now = clock.now()
        clock.advance(now.replace(minute=0, second=5, microsecond=0) + timedelta(hours=1) - now)

        def firing(expected: int) -> list[str]:
            app.tasks[FIRE_TASK].apply_async(args=["saga.forbidden"], queue=SCHEDULES_QUEUE)
            wait_for(lambda: len(fires("saga.forbidden")) == expected, timeout=20)
            return [f.outcome for f in fires("saga.forbidden")]

        assert firing(1) == ["started"]
        first = fires("saga.forbidden")[0].correlation_id
        for n in (2, 3):
            clock.advance(timedelta(hours=1))
            assert firing(n)[-1] == "skipped"
        clock.advance(timedelta(minutes=30))
        _catch_up_schedules(sender=SimpleNamespace(app=app))  # beat restarts
        clock.advance(timedelta(minutes=30))
        assert firing(4)[-1] == "skipped"  # the catch-up found no missed slot to add
        # still unfinished (a saga worker of another module may be undoing it by now: the
        # clock moved hours past its steps' leases)
        assert get_workflow(first).status in ("running", "compensating")
        cancel_workflow(first, actor="ops")
        wait_for(lambda: get_workflow(first).status in ("cancelled", "compensated"), timeout=30)
        clock.advance(timedelta(hours=1))
        assert firing(5)[-1] == "started"
        clock.advance(timedelta(hours=1))
        assert firing(6) == ["started", "skipped", "skipped", "skipped", "started", "skipped"]
        second = fires("saga.forbidden")[4].correlation_id
        assert second != first and get_workflow(second).status == "running"
    finally:
        worker.stop()
        clock.uninstall()


def test_replace_stops_the_previous_run_and_starts_a_new_one():
    base = utcnow().replace(minute=0, second=0, microsecond=0)
    fire("saga.replacing", fired_at=base.isoformat())
    fire("saga.replacing", fired_at=(base + timedelta(hours=1)).isoformat())
    first, second = fires("saga.replacing")
    assert second.outcome == "replaced" and second.correlation_id != first.correlation_id
    old = get_workflow(first.correlation_id)
    assert old.ended_by.startswith("replaced by the firing of")
    assert [a.actor for a in old.audit] == ["schedule:saga.replacing"]


@pytest.mark.parametrize(
    ("schedule", "runs"), [("t.hourlyBackfill", 2), ("t.hourlyOnce", 1), ("t.hourlySkip", 0)]
)
def test_slots_missed_while_beat_was_down_follow_the_missed_policy(schedule, runs):
    from celery_workflows.store import get_store

    long_ago = (utcnow() - timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
    get_store().record_fire(schedule, long_ago, "started", "", "")
    # beat comes back five hours later and catches up
    started = fire(
        schedule, fired_at=(long_ago + timedelta(hours=5, minutes=10)).isoformat(), catch_up=True
    )
    assert [s - long_ago for s in started] == [timedelta(hours=h) for h in range(6 - runs, 6)]


def test_declared_schedules_appear_in_django_celery_beat():
    from django_celery_beat.models import PeriodicTask
    from django_celery_beat.schedulers import DatabaseScheduler

    from tests.proj.celery_app import app

    DatabaseScheduler(app=app, lazy=False)
    nightly = PeriodicTask.objects.get(name="celery_workflows:t.nightly")
    assert nightly.task == "celery_workflows.fire_schedule"
    assert json.loads(nightly.args) == ["t.nightly"]
    assert str(nightly.crontab.timezone) == "Europe/Berlin" and nightly.crontab.hour == "3"
    assert PeriodicTask.objects.get(name="celery_workflows:t.tick").interval.every == 1


def beat_through(clock, name: str, until: datetime) -> None:
    """Celery beat's loop for one entry, on the test kit's clock: ask the entry's schedule
    whether it is due (beat's own ``is_due``), send the firing when it is - stamped with the
    time it is sent, as beat sends it - and sleep as long as it says (at most beat's
    ``max_interval`` of 5 minutes)."""
    from celery_workflows import registry
    from celery_workflows.schedules import FIRE_TASK
    from tests.proj.celery_app import app

    schedule = registry.schedules()[name].beat_schedule()
    last_run = clock.now()
    while clock.now() < until:
        due, wait = schedule.is_due(last_run)
        if due:
            app.tasks[FIRE_TASK].apply_async(args=[name], queue=SCHEDULES_QUEUE)
            last_run = clock.now()
        clock.advance(min(max(float(wait), 1.0), 300.0))


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        # spring 2027: 02:30 does not exist on March 28; it runs when the clocks jump
        ("2027-03-27", ["2027-03-27 01:30", "2027-03-28 01:00", "2027-03-29 00:30"]),
        # autumn 2027: 02:30 happens twice on October 31; it runs at the first one only
        ("2027-10-30", ["2027-10-30 00:30", "2027-10-31 00:30", "2027-11-01 01:30"]),
    ],
    ids=["spring", "autumn"],
)
def test_a_daily_cron_runs_once_a_day_across_a_daylight_saving_change(start_worker, days, expected):
    from celery_workflows.testing import TestClock

    clock = TestClock().install()
    worker = start_worker([SCHEDULES_QUEUE], concurrency=1, name="dst", extra_env=clock.environment)
    try:
        first = datetime.fromisoformat(days).replace(tzinfo=UTC)
        clock.advance(first - clock.now())
        beat_through(clock, "t.berlinHalfPastTwo", first + timedelta(days=3))
        wait_for(lambda: len(fires("t.berlinHalfPastTwo")) >= 3, timeout=30)
        worker.stop()  # every firing sent is recorded: nothing more will come
        done = fires("t.berlinHalfPastTwo")
        assert [f.slot.astimezone(UTC).strftime("%Y-%m-%d %H:%M") for f in done] == expected
        assert {f.outcome for f in done} == {"started"}
    finally:
        worker.stop()
        clock.uninstall()


def test_missed_once_does_not_run_a_new_schedule_for_a_slot_from_before_it_was_deployed():
    # beat starts for the first time with this schedule an hour and a quarter past a slot:
    # that slot was never owed, so nothing runs until the next one
    first_seen = utcnow().replace(minute=15, second=0, microsecond=0) + timedelta(days=40)
    assert fire("t.hourlyOnce", fired_at=first_seen.isoformat(), catch_up=True) == []
    (seen,) = fires("t.hourlyOnce")
    assert seen.outcome == "seen" and not seen.correlation_id
    # beat restarts after being down over two slots: those were owed, and run once
    later = first_seen + timedelta(hours=2, minutes=30)
    started = fire("t.hourlyOnce", fired_at=later.isoformat(), catch_up=True)
    assert started == [later.replace(minute=0)]


def test_a_worker_started_with_q_without_the_schedules_queue_says_so(start_worker):
    worker = start_worker(["t.tock"], concurrency=1, name="noschedules")
    worker.wait_ready()
    log = Path(worker.log_path).read_text()
    assert f"does not consume {SCHEDULES_QUEUE}, where beat sends their firings" in log
    assert "t.berlinHalfPastTwo" in log
    worker.stop()
