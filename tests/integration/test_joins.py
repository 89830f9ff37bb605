"""A join completed by events emitted from outside any step (a view, a webhook): the ledger
starts its job once, in the transaction of the emit that completes it - on the database and in
the in-memory store - and two emits at the same instant take turns on the run's lock.
(Joins completed by steps on real workers: ``tests/e2e/test_joins.py``.)"""

from __future__ import annotations

import threading

import pytest
from django.db import connection, transaction

from celery_workflows import ConfigurationError
from celery_workflows.store import configure, get_store
from celery_workflows.testing.memory import InMemoryStore
from django_app.models import Job
from tests.proj.fanin import fan

pytestmark = pytest.mark.usefixtures("transactional_db")

CHARGED = {"order": "o-1", "paid": 5}
RESERVED = {"order": "o-1", "sku": "A-1"}


@pytest.fixture(params=["ledger", "memory"])
def store(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    original = get_store()
    if request.param == "memory":
        configure(InMemoryStore())
    yield get_store()
    configure(original)


def ship_jobs(store: object, correlation_id: str) -> list[dict[str, object]]:
    if isinstance(store, InMemoryStore):
        jobs = store._data.jobs.values()
        return [
            j.payload for j in jobs if j.correlation_id == correlation_id and j.queue == "fan.ship"
        ]
    rows = Job.objects.filter(correlation_id=correlation_id, queue="fan.ship")
    return [j.payload for j in rows]


def test_the_event_that_completes_a_join_from_outside_starts_its_job_once(store):
    run = fan.emit("fanCharged", CHARGED).correlation_id
    assert ship_jobs(store, run) == []  # one of two: the join waits
    fan.emit("fanReserved", RESERVED, correlation_id=run)
    assert ship_jobs(store, run) == [{"fanCharged": CHARGED, "fanReserved": RESERVED}]
    # an event of the join emitted again finds the join done: no second job
    fan.emit("fanReserved", {"order": "o-1", "sku": "B-2"}, correlation_id=run)
    assert len(ship_jobs(store, run)) == 1


def test_a_join_counts_only_its_own_runs_events(store):
    first = fan.emit("fanCharged", CHARGED).correlation_id
    second = fan.emit("fanReserved", RESERVED).correlation_id
    assert ship_jobs(store, first) == ship_jobs(store, second) == []


def emit_together(run: str) -> None:
    """Emit both events of the join, each in its own thread, transaction and connection,
    released together."""
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def emit(name: str, payload: dict[str, object]) -> None:
        try:
            start.wait(timeout=10)  # (inside, SQLite's writer would hold back the other)
            with transaction.atomic():
                fan.emit(name, payload, correlation_id=run)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=emit, args=("fanCharged", CHARGED)),
        threading.Thread(target=emit, args=("fanReserved", RESERVED)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []


def test_two_emits_at_the_same_instant_complete_the_join_once():
    """25 times: without the run's lock each emit would see only its own event, and neither
    would start the job."""
    for round_ in range(25):
        run = fan.emit("fanOrdered", {"order": f"r-{round_}"}, delay=3600).correlation_id
        emit_together(run)
        assert Job.objects.filter(correlation_id=run, queue="fan.ship").count() == 1, round_


@pytest.mark.parametrize(
    ("events", "message"),
    [
        (["fanCharged"], "two or more different events"),
        (["fanCharged", "fanCharged"], "two or more different events"),
        ("fanCharged", "two or more different events"),
        (["fanCharged", "not valid!"], "event name 'not valid!' is invalid"),
    ],
)
def test_a_join_of_fewer_than_two_different_events_is_refused_naming_it(events, message):
    with pytest.raises(ConfigurationError, match=message):
        fan.join(events, enqueue="ship", name="refused")
