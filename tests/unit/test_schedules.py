"""Schedule declarations and slot arithmetic, without a worker."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

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


BERLIN_HALF_PAST_TWO = {"cron": "30 2 * * *", "timezone": "Europe/Berlin"}


def daily_slots(schedule: ScheduleSpec, first: datetime, days: int) -> list[datetime]:
    return schedule.slots_after(first, first + timedelta(days=days))


def test_a_time_in_the_spring_gap_runs_once_when_the_clocks_jump():
    # 2027-03-28: at 02:00 CET clocks jump to 03:00 CEST; 02:30 never happens that day
    slots = daily_slots(spec(**BERLIN_HALF_PAST_TWO), datetime(2027, 3, 26, 12, tzinfo=UTC), 3)
    assert slots == [
        datetime(2027, 3, 27, 1, 30, tzinfo=UTC),  # 02:30 CET
        datetime(2027, 3, 28, 1, 0, tzinfo=UTC),  # 03:00 CEST: the moment of the jump
        datetime(2027, 3, 29, 0, 30, tzinfo=UTC),  # 02:30 CEST
    ]


def test_a_time_in_the_repeated_autumn_hour_runs_at_its_first_occurrence_only():
    # 2027-10-31: at 03:00 CEST clocks go back to 02:00 CET; 02:30 happens twice that day
    slots = daily_slots(spec(**BERLIN_HALF_PAST_TWO), datetime(2027, 10, 29, 12, tzinfo=UTC), 3)
    assert slots == [
        datetime(2027, 10, 30, 0, 30, tzinfo=UTC),
        datetime(2027, 10, 31, 0, 30, tzinfo=UTC),  # 02:30 CEST, not 02:30 CET as well
        datetime(2027, 11, 1, 1, 30, tzinfo=UTC),
    ]


def test_a_daily_schedule_runs_once_every_day_of_a_year_with_two_changes():
    slots = daily_slots(spec(**BERLIN_HALF_PAST_TWO), datetime(2027, 1, 1, tzinfo=UTC), 365)
    assert len(slots) == 365
    assert len({s.astimezone(ZoneInfo("Europe/Berlin")).date() for s in slots}) == 365


def test_an_every_hour_schedule_keeps_running_through_the_repeated_hour():
    hourly = spec(cron="15 * * * *", timezone="Europe/Berlin")
    slots = hourly.slots_after(
        datetime(2027, 10, 30, 23, tzinfo=UTC), datetime(2027, 10, 31, 3, tzinfo=UTC)
    )
    # 01:15 CEST, 02:15 CEST, 02:15 CET, 03:15 CET: one an hour, as the wall clock goes
    assert [s.hour for s in slots] == [23, 0, 1, 2]


def test_beat_is_told_to_send_at_the_slots():
    schedule = spec(**BERLIN_HALF_PAST_TWO).beat_schedule()
    assert isinstance(schedule, zoned_crontab)
    from celery_workflows.cron import next_slot_after

    before_gap = datetime(2027, 3, 27, 1, 30, tzinfo=UTC)
    assert next_slot_after(schedule, before_gap) == datetime(2027, 3, 28, 1, 0, tzinfo=UTC)
    in_repeat = datetime(2027, 10, 31, 0, 30, tzinfo=UTC)
    assert next_slot_after(schedule, in_repeat) == datetime(2027, 11, 1, 1, 30, tzinfo=UTC)


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
