"""One business key, one open run - when the service says so: a second start is refused (or
the open run is returned), also when starts race, and every run of a key can be listed."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from celery_workflows import RunAlreadyOpenError, cancel_workflow
from django_app.models import WorkflowRun
from tests.helpers import manage
from tests.proj.flows import shop
from tests.proj.workflows import keyed, reusing

pytestmark = [pytest.mark.usefixtures("transactional_db")]


def runs_of(key: str) -> list[WorkflowRun]:
    return list(WorkflowRun.objects.filter(business_key=key).order_by("started_at"))


def test_refuse_raises_naming_the_open_run_and_writes_nothing():
    first = keyed.emit("keyedPlaced", {"orderId": "k-1"})
    with pytest.raises(RunAlreadyOpenError, match="still open") as refused:
        keyed.emit("keyedPlaced", {"orderId": "k-1"})
    assert refused.value.correlation_id == first.correlation_id
    with pytest.raises(RunAlreadyOpenError):
        keyed.enqueue("hold", {"orderId": "k-1"})
    assert [r.correlation_id for r in runs_of("k-1")] == [first.correlation_id]
    # once that run is over, the key may start a new one
    cancel_workflow(first.correlation_id, actor="ops")
    second = keyed.emit("keyedPlaced", {"orderId": "k-1"})
    assert len(runs_of("k-1")) == 2 and second.correlation_id != first.correlation_id


def test_reuse_returns_the_open_run_and_writes_nothing():
    first = reusing.emit("reusingPlaced", {"orderId": "r-1"})
    again = reusing.emit("reusingPlaced", {"orderId": "r-1"})
    queued = reusing.enqueue("hold", {"orderId": "r-1"})
    assert again.correlation_id == queued.correlation_id == first.correlation_id
    assert not queued.created
    assert len(runs_of("r-1")) == 1


def test_starts_of_one_key_that_race_start_one_run():
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def start() -> None:
        barrier.wait()
        try:
            keyed.emit("keyedPlaced", {"orderId": "k-race"})
            outcomes.append("started")
        except RunAlreadyOpenError:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["refused"] * 5 + ["started"]
    assert len(runs_of("k-race")) == 1


def test_status_lists_every_run_of_a_business_key(worker_env):
    # the default ("allow"): two runs of one key, the newest shown in full, all listed
    older = shop.emit("orderPlaced", {"orderId": "twice", "inStock": False})
    newer = shop.emit("orderPlaced", {"orderId": "twice", "inStock": False})
    done = manage(worker_env, "workflows", "status", "twice")
    assert done.returncode == 0, done.stderr
    assert f"workflow   shop {newer.correlation_id}" in done.stdout
    assert "runs with business key twice (newest first)" in done.stdout
    assert done.stdout.index(newer.correlation_id, done.stdout.index("runs with")) < (
        done.stdout.index(older.correlation_id)
    )
