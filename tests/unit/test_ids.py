"""Ledger ids are UUIDs in time order, so that each new row's key lands next to the last one's
in its indexes (see celery_workflows/ids.py)."""

import time
import uuid

from celery_workflows.ids import new_id, uuid7
from celery_workflows.intake import JOB_ID


def test_an_id_is_a_version_7_uuid_written_as_32_hex_digits():
    value = new_id()
    assert JOB_ID.match(value)  # what a notice's job id must look like
    parsed = uuid.UUID(hex=value)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122


def test_an_id_starts_with_the_millisecond_it_was_made_in():
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    assert before <= value.int >> 80 <= after


def test_ids_made_in_later_milliseconds_sort_after_earlier_ones():
    first = new_id()
    time.sleep(0.002)
    second = new_id()
    assert first < second


def test_ids_are_unique_within_one_millisecond():
    ids = [new_id() for _ in range(100_000)]
    assert len(set(ids)) == len(ids)


def test_the_admin_shows_ids_made_in_the_same_moment_apart():
    # lists show 8 hex digits of an id: the random end, not the shared time prefix
    from django_app.admin import short

    shown = {short(new_id()) for _ in range(1_000)}
    assert len(shown) == 1_000
