"""Cron slots in a timezone, with daylight saving handled as cron users expect.

A cron schedule read in a timezone names wall-clock times; twice a year some of them do not
exist or exist twice. What happens then, the way Vixie cron (the cron of most Linux systems)
does it:

- a time in the spring gap (``30 2 * * *`` in ``Europe/Berlin`` on the day clocks jump from
  02:00 to 03:00) runs once, at the moment the clocks jump - it is not skipped for the day;
- a time in the repeated autumn hour (02:30 happens at 02:30 CEST and again at 02:30 CET) runs
  at its first occurrence only - unless the schedule's hour field is ``*``: a schedule that
  runs every hour keeps running through the repeated hour, as the clock on the wall does.

So a daily schedule runs exactly once every day. These *slots* (as UTC instants) are what
:class:`ZonedCrontab` tells Celery beat to send, and what :mod:`celery_workflows.schedules`
records one firing per; :func:`slot_at` and :func:`next_slot_after` compute them day by day,
not minute by minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from celery.schedules import crontab

from . import clock

#: how far a search for the previous or next slot looks (a yearly schedule still has one)
HORIZON_DAYS = 367


class ZonedCrontab(crontab):
    """Celery's crontab read in a timezone of its own, with this module's slots: beat sends a
    firing at each slot (see the module docstring for daylight saving), and follows the
    toolkit's clock (:mod:`celery_workflows.clock`), so the test kit's clock moves it too."""

    def __init__(
        self,
        minute: Any = "*",
        hour: Any = "*",
        day_of_week: Any = "*",
        day_of_month: Any = "*",
        month_of_year: Any = "*",
        zone: str = "UTC",
        **kwargs: Any,
    ) -> None:
        super().__init__(minute, hour, day_of_week, day_of_month, month_of_year, **kwargs)
        self.zone = zone
        self._orig_kwargs = {**kwargs, "zone": zone}

    @property
    def tz(self) -> ZoneInfo:  # type: ignore[override]
        return ZoneInfo(self.zone)

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        zone = state.pop("zone", "UTC")
        super().__setstate__(state)  # type: ignore[misc]
        self.zone = zone
        self._orig_kwargs = {**state, "zone": zone}

    def now(self) -> datetime:
        return clock.utcnow()

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:  # type: ignore[override]
        last = last_run_at if last_run_at.tzinfo else last_run_at.replace(tzinfo=UTC)
        return next_slot_after(self, last) - self.now()


def slots_on(schedule: Any, day: date, zone: ZoneInfo) -> list[datetime]:
    """The slots (UTC) of a crontab on the local calendar day ``day``, in time order."""
    if not (
        day.day in schedule.day_of_month
        and day.month in schedule.month_of_year
        and day.isoweekday() % 7 in schedule.day_of_week
    ):
        return []
    every_hour = len(schedule.hour) == 24
    found: set[datetime] = set()
    for hour in schedule.hour:
        for minute in schedule.minute:
            found.update(instants(datetime.combine(day, time(hour, minute)), zone, every_hour))
    return sorted(found)


def instants(local: datetime, zone: ZoneInfo, twice: bool) -> list[datetime]:
    """The UTC instants the naive wall-clock time ``local`` stands for in ``zone``: one as a
    rule; in the spring gap, the moment the clocks jump past it; in the autumn repeat, its
    first occurrence (both with ``twice``)."""
    earlier = local.replace(tzinfo=zone, fold=0).astimezone(UTC)
    later = local.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if earlier == later:
        return [earlier]
    if earlier.astimezone(zone).replace(tzinfo=None) == local:  # it happens twice
        return [earlier, later] if twice else [earlier]
    # it never happens: fold=1 reads it with the offset after the jump (an instant before
    # the jump), fold=0 with the offset before it (an instant after): the jump lies between
    start, end = sorted((earlier, later))
    return [_jump(start, end, zone)]


def _jump(start: datetime, end: datetime, zone: ZoneInfo) -> datetime:
    """The first whole minute in [start, end] whose offset differs from ``start``'s."""
    offset = start.astimezone(zone).utcoffset()
    moment = start
    while moment < end and moment.astimezone(zone).utcoffset() == offset:
        moment += timedelta(minutes=1)
    return moment


def slot_at(schedule: Any, zone: ZoneInfo, moment: datetime) -> datetime | None:
    """The latest slot at or before ``moment`` within the horizon, or None."""
    day = moment.astimezone(zone).date()
    for back in range(HORIZON_DAYS):
        earlier = [s for s in slots_on(schedule, day - timedelta(days=back), zone) if s <= moment]
        if earlier:
            return earlier[-1]
    return None


def next_slot_after(schedule: Any, moment: datetime) -> datetime:
    """The earliest slot after ``moment`` (a crontab with no slot within the horizon gives
    the horizon's end, so beat checks again then)."""
    zone = ZoneInfo(getattr(schedule, "zone", "UTC"))
    for day in _days_from(moment.astimezone(zone).date() - timedelta(days=1)):
        later = [s for s in slots_on(schedule, day, zone) if s > moment]
        if later:
            return later[0]
    return moment + timedelta(days=HORIZON_DAYS)


def _days_from(first: date) -> Iterator[date]:
    for n in range(HORIZON_DAYS + 1):
        yield first + timedelta(days=n)
