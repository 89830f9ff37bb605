"""Limits are validated when a queue is declared, and their two rules are pure functions."""

from __future__ import annotations

import re
import time

import pytest
from pydantic import BaseModel

from celery_workflows import ConfigurationError, Limits, PayloadError, WorkflowService
from celery_workflows.limits import Held, HeldBy, held_by, paced
from tests.proj.celery_app import app


class Address(BaseModel):
    country: str


class Update(BaseModel):
    customer_id: str
    address: Address


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "sets no limit"),
        ({"concurrency": 0}, "concurrency must be an int >= 1"),
        ({"concurrency": 2.5}, "concurrency must be an int >= 1"),
        ({"concurrency": True}, "concurrency must be an int >= 1"),
        ({"key": "customer id"}, "must name a payload field"),
        ({"per_key": 2}, "per_key needs Limits.key"),
        ({"key": "c", "per_key": 0}, "per_key must be an int >= 1"),
        ({"key": "c", "per_key": 5, "concurrency": 2}, "can never be reached"),
        ({"rate": "20 per second"}, "must read like '20/s'"),
        ({"rate": "0/s"}, "at least one start"),
        ({"rate": "5000/s"}, "above 1000 starts a second"),
    ],
)
def test_a_limit_that_cannot_be_met_is_refused_at_declaration(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        Limits(**kwargs)


@pytest.mark.parametrize(
    ("rate", "interval"), [("20/s", 0.05), ("100/m", 0.6), ("5/h", 720.0), ("2.5/second", 0.4)]
)
def test_a_rate_is_read_as_evenly_spaced_starts(rate, interval):
    assert Limits(rate=rate).interval == pytest.approx(interval)


def test_a_key_the_payload_schema_does_not_have_is_refused_when_the_queue_is_declared():
    service = WorkflowService("limdecl", app)
    with pytest.raises(ConfigurationError, match="'customerId' is not a field of Update"):
        service.queue_worker("a", payload=Update, limits=Limits(key="customerId"))
    with pytest.raises(
        ConfigurationError, match=re.escape("'address.city' is not a field of Update")
    ):
        service.queue_worker("b", payload=Update, limits=Limits(key="address.city"))
    with pytest.raises(ConfigurationError, match="limits must be a Limits"):
        service.queue_worker("c", limits={"concurrency": 2})  # type: ignore[arg-type]
    service.queue_worker("d", payload=Update, limits=Limits(key="address.country"))(print)


def test_the_key_is_read_from_the_payload_and_a_payload_without_it_is_refused():
    limits = Limits(key="address.country")
    assert limits.key_of("q", {"address": {"country": "NL"}}) == "NL"
    assert Limits(key="n").key_of("q", {"n": 7}) == "7"
    for payload, message in [
        ({"address": {}}, "has no 'address.country'"),
        ({"address": "NL"}, "has no 'address.country'"),
        ({"address": {"country": None}}, "must be a string or number"),
        ({"address": {"country": ["NL"]}}, "must be a string or number"),
        ({"address": {"country": "x" * 201}}, "longer than 200"),
    ]:
        with pytest.raises(PayloadError, match=message):
            limits.key_of("q", payload)


def test_the_caps_hold_a_job_while_its_queue_or_its_key_has_no_free_slot():
    limits = Limits(concurrency=3, key="c", per_key=2)
    assert held_by(limits, in_queue=2, with_key=1) is None
    assert held_by(limits, in_queue=3, with_key=0) is HeldBy.CONCURRENCY
    assert held_by(limits, in_queue=2, with_key=2) is HeldBy.KEY
    assert held_by(Limits(key="c"), in_queue=100, with_key=0) is None


def test_the_rate_allows_one_start_per_interval_and_no_burst_after_a_pause():
    interval = 0.05
    nxt = paced(0.0, 100.0, interval)  # idle for long: one start now, the next 50 ms later
    assert nxt == pytest.approx(100.05)
    assert paced(nxt, 100.01, interval) is None  # too early, however long it was idle
    assert paced(nxt, 100.05, interval) == pytest.approx(100.10)


def test_the_in_memory_store_holds_and_releases_jobs_by_the_same_rules():
    from celery_workflows.clock import utcnow
    from celery_workflows.records import NewJob
    from celery_workflows.testing.memory import InMemoryStore

    store, limits = InMemoryStore(), Limits(concurrency=1)
    for i, priority in enumerate([None, 1, 9]):
        job = NewJob(f"j{i}", "m", "m.q", {}, 3, utcnow(), f"r{i}", True, priority=priority)
        store.insert_job(job)
    first = store.claim("j0", 1, "t0", "w", 30, limits, "m.q")
    assert first is not None and not isinstance(first, Held)
    assert store.claim("j1", 1, "t1", "w", 30, limits, "m.q") == Held(HeldBy.CONCURRENCY)
    assert store.claim("j2", 1, "t2", "w", 30, limits, "m.q") == Held(HeldBy.CONCURRENCY)
    assert store.release_held("m.q", limits, 5) == []  # the one slot is taken
    store.extend_lease("j0", "t0", 0.000001)  # its lease runs out: the slot is free again
    time.sleep(0.01)
    released = store.release_held("m.q", limits, 5)
    assert [d.job_id for d in released] == ["j2"]  # one slot: the highest priority
    assert store.get_job("j1").attempts == 0  # held, not charged


def test_the_in_memory_store_paces_a_rate_and_promises_each_held_job_its_own_moment():
    from celery_workflows.clock import utcnow
    from celery_workflows.records import NewJob
    from celery_workflows.testing.memory import InMemoryStore

    store, limits = InMemoryStore(), Limits(rate="10/s")
    for i in range(3):
        store.insert_job(NewJob(f"j{i}", "m", "m.q", {}, 3, utcnow(), f"r{i}", True))
    assert not isinstance(store.claim("j0", 1, "t0", "w", 30, limits, "m.q"), Held)
    waits = [store.claim(f"j{i}", 1, f"t{i}", "w", 30, limits, "m.q") for i in (1, 2)]
    assert [w.by for w in waits] == [HeldBy.RATE, HeldBy.RATE]  # type: ignore[union-attr]
    first, second = (w.retry_in for w in waits)  # type: ignore[union-attr]
    assert 0 < first <= 0.1 and second == pytest.approx(first + 0.1, abs=0.01)
