"""Priorities mean one thing on every broker: 0-9, higher runs first - for queue workers and
for Django Tasks (-100..100, higher first) alike - and a run's later steps inherit theirs.
Run on Redis and on RabbitMQ (``make test-rabbitmq``)."""

from __future__ import annotations

import json

import pytest

from celery_workflows import emit, get_workflow
from celery_workflows.testing import wait_for
from django_app.models import Job

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("transactional_db")]


def test_waiting_jobs_run_highest_priority_first(start_worker, redis_client):
    from tests.proj.workflows import prio

    redis_client.delete("prio:order")
    for priority in (1, 9, None, 5):  # they wait: no worker consumes the queue yet
        prio.enqueue("ordered", {"label": priority}, priority=priority)
    worker = start_worker(["prio.ordered"], concurrency=1, name="prio")
    wait_for(lambda: redis_client.llen("prio:order") == 4, timeout=45)  # a boot under load
    order = [json.loads(x) for x in redis_client.lrange("prio:order", 0, -1)]
    assert order == [9, 5, 1, None]  # no priority counts as the lowest
    worker.stop()


def test_waiting_django_tasks_run_highest_priority_first(start_worker, redis_client):
    from tests.proj.tasks import ranked

    redis_client.delete("ranked:order")
    for priority in (50, -100, 100, 0):  # the Tasks API's range: -100 to 100, higher first
        ranked.using(priority=priority).enqueue(priority)
    worker = start_worker(["tasks.ranked"], concurrency=1, name="ranked")
    wait_for(lambda: redis_client.llen("ranked:order") == 4, timeout=45)
    assert [int(x) for x in redis_client.lrange("ranked:order", 0, -1)] == [100, 50, 0, -100]
    worker.stop()


def test_a_runs_later_steps_inherit_its_priority_and_wait_their_turn(start_worker):
    from tests.proj.chaos import QUEUES

    worker = start_worker(QUEUES, concurrency=1, name="inherit")
    started = emit("chaosStarted", {"n": "prio-7"}, priority=7)
    wait_for(lambda: get_workflow(started.correlation_id).status == "completed", timeout=30)
    jobs = list(Job.objects.filter(correlation_id=started.correlation_id).order_by("created_at"))
    assert [j.priority for j in jobs] == [7, 7, 7, 7]
    # each went through the broker, by priority among the waiting jobs: none was continued
    # in the process that wrote it
    assert all(j.published_at is not None for j in jobs)
    worker.stop()


def test_a_priority_outside_0_to_9_is_refused_naming_the_range():
    from celery_workflows import ConfigurationError
    from tests.proj.workflows import prio

    with pytest.raises(ConfigurationError, match="priority must be an int 0-9"):
        prio.enqueue("ordered", {"label": 1}, priority=10)
    with pytest.raises(ConfigurationError, match="priority must be an int 0-9"):
        emit("chaosStarted", {"n": "x"}, priority=-1)
