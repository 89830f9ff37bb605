"""Schedule declarations and slot arithmetic, without a worker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from celery import Celery

from celery_workflows import ConfigurationError, WorkflowService
from celery_workflows.schedules import ScheduleSpec, zoned_crontab


def spec(**overrides: object) -> ScheduleSpec:
    values: dict[str, object] = dict(
        service="s",
        name="n",
        cron=None,
        every=None,
        timezone="UTC",
        emit="e",
        enqueue=None,
        payload=None,
        concurrency="allow",
        missed="skip",
        backfill_limit=0,
    )
    values.update(overrides)
    return ScheduleSpec(**values)  # type: ignore[arg-type]


def test_an_interval_slot_is_a_multiple_of_the_interval_since_the_epoch():
    every = spec(every=timedelta(minutes=15))
    at = datetime(2026, 3, 1, 10, 44, 59, tzinfo=UTC)
    assert every.slot_at(at) == datetime(2026, 3, 1, 10, 30, tzinfo=UTC)


def test_a_cron_slot_is_read_in_the_schedules_own_timezone():
    nightly = spec(cron="0 3 * * *", timezone="Europe/Berlin")
    # 03:00 in Berlin is 02:00 UTC in winter and 01:00 UTC in summer
    assert nightly.slot_at(datetime(2026, 1, 15, 12, tzinfo=UTC)) == datetime(
        2026, 1, 15, 2, tzinfo=UTC
    )
    assert nightly.slot_at(datetime(2026, 7, 15, 12, tzinfo=UTC)) == datetime(
        2026, 7, 15, 1, tzinfo=UTC
    )


def test_slots_after_lists_the_missed_ones_oldest_first():
    hourly = spec(every=timedelta(hours=1))
    start = datetime(2026, 3, 1, 10, tzinfo=UTC)
    slots = hourly.slots_after(start, start + timedelta(hours=3, minutes=5))
    assert slots == [start + timedelta(hours=h) for h in (1, 2, 3)]


def test_the_beat_entry_carries_the_timezone_and_survives_pickling():
    import pickle

    schedule = spec(cron="30 4 * * 1", timezone="America/New_York").beat_schedule()
    assert isinstance(schedule, zoned_crontab)
    assert str(schedule.tz) == "America/New_York"
    copy = pickle.loads(pickle.dumps(schedule))
    assert str(copy.tz) == "America/New_York" and copy.minute == {30}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "exactly one of cron= or every="),
        ({"cron": "0 3 * *", "emit": "e"}, "five fields"),
        ({"every": timedelta(0), "emit": "e"}, "at least 1 second"),
        ({"every": timedelta(hours=1), "emit": "e", "timezone": "Mars/Olympus"}, "timezone"),
        ({"every": timedelta(hours=1)}, "exactly one target"),
        ({"every": timedelta(hours=1), "emit": "e", "concurrency": "maybe"}, "concurrency"),
        ({"every": timedelta(hours=1), "emit": "e", "missed": "backfill"}, "backfill_limit"),
        ({"cron": "99 3 * * *", "emit": "e"}, "invalid cron"),
    ],
)
def test_a_bad_schedule_is_refused_when_declared(options, message):
    app = Celery("sched-errors")
    service = WorkflowService(f"sched-errors-{id(app)}", app)
    with pytest.raises(ConfigurationError, match=message):
        service.schedule("bad", **options)  # type: ignore[arg-type]


def test_an_interval_firing_is_on_time_anywhere_in_its_slot_a_cron_one_only_near_it():
    # beat runs interval entries from its own start, so their phase within a slot is arbitrary
    assert spec(every=timedelta(seconds=10)).grace() == timedelta(seconds=10)
    assert spec(cron="0 3 * * *").grace() == timedelta(seconds=60)
