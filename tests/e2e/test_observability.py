"""Every step traced, measured and logged, on two real worker processes: one trace per
workflow with the right parent links (beside Celery's own instrumentation, without
duplicates), metrics read back from an in-memory reader, and log lines that name their
workflow."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from celery_workflows import get_workflow
from celery_workflows.testing import wait_for
from tests.proj.workflows import obs

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("transactional_db")]


@pytest.fixture(scope="module")
def spans_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spans")


@pytest.fixture(scope="module")
def workers(start_worker, spans_dir):
    """obs.first (and the metrics dump) on one worker, obs.second on another: every workflow
    crosses processes. Tracing and Celery's instrumentation on; JSON logs."""
    env = {"OTEL_TEST_DIR": str(spans_dir), "OTEL_TEST_CELERY": "1"}
    first = start_worker(
        ["obs.first", "obs.dumpMetrics"],
        concurrency=1,
        name="obsA",
        log_format="json",
        extra_env=env,
    )
    second = start_worker(
        ["obs.second"], concurrency=1, name="obsB", log_format="json", extra_env=env
    )
    return first, second


def completed(correlation_id: str):
    return wait_for(
        lambda: (run := get_workflow(correlation_id)).status == "completed" and run,
        timeout=30,
        message=f"workflow {correlation_id} did not complete",
    )


def spans(spans_dir: Path) -> list[dict]:
    return [
        json.loads(line)
        for path in spans_dir.glob("spans-*.jsonl")
        for line in path.read_text().splitlines()
    ]


def test_a_workflow_is_one_trace_across_processes_and_retries(workers, spans_dir):
    run = completed(
        obs.emit("obsStarted", {"orderId": "o-trace", "fail_first": True}).correlation_id
    )
    jobs = {h.name: h.id for h in run.history if h.kind == "job"}

    def ours() -> list[dict]:
        return [
            s
            for s in spans(spans_dir)
            if s["attributes"].get("celery_workflows.workflow_id") == run.correlation_id
        ]

    wait_for(lambda: len([s for s in ours() if s["name"] == "obs.second"]) == 1, timeout=10)
    mine = ours()
    attempts = {
        (s["name"], s["attributes"]["celery_workflows.attempt"]): s
        for s in mine
        if s["kind"] == "CONSUMER"
    }
    # one span per attempt, no duplicate: first failed once and was retried
    assert Counter(
        (s["name"], s["attributes"].get("celery_workflows.attempt"))
        for s in mine
        if s["kind"] == "CONSUMER"
    ) == {
        ("obs.first", 1): 1,
        ("obs.first", 2): 1,
        ("obs.second", 1): 1,
    }
    assert attempts[("obs.first", 1)]["status"] == "ERROR"
    assert attempts[("obs.first", 1)]["attributes"]["celery_workflows.outcome"] == "retried"
    assert attempts[("obs.second", 1)]["attributes"]["celery_workflows.business_key"] == "o-trace"
    assert (
        attempts[("obs.second", 1)]["attributes"]["celery_workflows.job_id"] == jobs["obs.second"]
    )
    # the hand-over: attempt 2 of first -> its emit -> the attempt of second, in another process
    (emit,) = [
        s
        for s in spans(spans_dir)
        if s["name"] == "emit firstDone" and s["parent_id"] == attempts[("obs.first", 2)]["span_id"]
    ]
    assert attempts[("obs.second", 1)]["parent_id"] == emit["span_id"]
    assert attempts[("obs.first", 2)]["pid"] != attempts[("obs.second", 1)]["pid"]
    # all of it one trace - Celery's own spans for these tasks included
    trace_ids = {s["trace_id"] for s in mine} | {emit["trace_id"]}
    assert len(trace_ids) == 1
    celery_spans = [
        s
        for s in spans(spans_dir)
        if s["name"].startswith(("run/", "apply_async/")) and s["trace_id"] in trace_ids
    ]
    assert {s["name"] for s in celery_spans} >= {
        "run/celery_workflows.obs.first",
        "run/celery_workflows.obs.second",
    }


def test_metrics_count_attempts_by_outcome_with_durations_and_hops(workers, redis_client):
    completed(obs.emit("obsStarted", {"orderId": "o-metrics", "fail_first": True}).correlation_id)
    redis_client.delete("obs:metrics")
    obs.enqueue("dumpMetrics", {})
    wait_for(lambda: redis_client.get("obs:metrics"), timeout=20)
    points = json.loads(redis_client.get("obs:metrics"))

    def point(name: str, **attributes: str) -> dict:
        (found,) = [p for p in points if p["name"] == name and p["attributes"] == attributes]
        return found

    assert point("celery_workflows.attempts", queue="obs.first", outcome="retried")["value"] >= 1
    assert point("celery_workflows.attempts", queue="obs.first", outcome="succeeded")["value"] >= 1
    assert point("celery_workflows.attempt.duration", queue="obs.first")["count"] >= 2
    assert point("celery_workflows.hop.latency", queue="obs.first")["count"] >= 1


def test_grep_for_a_business_key_finds_the_orders_whole_story_in_json_logs(workers):
    run = completed(
        obs.emit("obsStarted", {"orderId": "o-4711", "fail_first": True}).correlation_id
    )
    lines = [
        json.loads(line)
        for worker in workers
        for line in Path(worker.log_path).read_text().splitlines()
        if line.startswith("{") and "o-4711" in line
    ]
    jobs = {h.name: h.id for h in run.history if h.kind == "job"}
    story = [(e["logger"], e["message"], e["queue"], e["attempt"]) for e in lines]
    # the handler's own logger, the retry warning, the step's ctx.log, each success
    assert ("shop.payments", "charging the card", "obs.first", 1) in story
    assert ("shop.payments", "charging the card", "obs.first", 2) in story
    assert any(e["level"] == "WARNING" and "retrying in" in e["message"] for e in lines)
    assert ("celery_workflows.queue.obs.second", "shipping", "obs.second", 1) in story
    for entry in lines:
        assert entry["workflow_id"] == run.correlation_id
        assert entry["business_key"] == "o-4711"
        assert entry["job_id"] == jobs[entry["queue"]]


@pytest.fixture(scope="module")
def traced_saga(start_worker, spans_dir):
    """The saga's queues (and the held service's) on a worker that records spans."""
    from tests.proj.saga import QUEUES

    worker = start_worker(
        QUEUES, concurrency=2, name="sagatrace", extra_env={"OTEL_TEST_DIR": str(spans_dir)}
    )
    yield worker
    worker.stop()


def settled(order: str, *statuses: str):
    try:
        return wait_for(lambda: (run := get_workflow(order)).status in statuses and run, timeout=40)
    except AssertionError:
        run = get_workflow(order)
        jobs = [(h.name, h.status, [a["outcome"] for a in h.attempts]) for h in run.history]
        raise AssertionError(f"{order} is {run.status}, not {statuses}: {jobs}") from None


def traces_of(spans_dir: Path, run, expected: set[str]) -> set[str]:
    """The trace ids of the run's attempt spans, once one of each queue in ``expected`` is
    there."""

    def attempts() -> list[dict]:
        return [
            s
            for s in spans(spans_dir)
            if s["kind"] == "CONSUMER"
            and s["attributes"].get("celery_workflows.workflow_id") == run.correlation_id
        ]

    wait_for(lambda: expected <= {s["name"] for s in attempts()}, timeout=15)
    return {s["trace_id"] for s in attempts()}


def test_a_cancelled_runs_compensation_stays_in_its_trace(traced_saga, spans_dir, redis_client):
    from celery_workflows import cancel_workflow
    from tests.proj.saga import saga

    saga.emit("sagaStarted", {"orderId": "tr-cancel", "slow": 30})
    wait_for(lambda: len(redis_client.lrange("saga:tr-cancel", 0, -1)) == 2, timeout=20)
    cancel_workflow("tr-cancel", actor="ops")
    run = settled("tr-cancel", "compensated")
    queues = {"saga.reserve", "saga.charge", "saga.refund", "saga.release"}
    assert len(traces_of(spans_dir, run, queues)) == 1


def test_a_deadlines_timeout_and_compensation_stay_in_the_runs_trace(traced_saga, spans_dir):
    from datetime import timedelta

    from tests.proj.saga import saga

    saga.emit("sagaStarted", {"orderId": "tr-late", "slow": 30}, deadline=timedelta(seconds=2))
    run = settled("tr-late", "compensated")
    queues = {"saga.reserve", "saga.charge", "saga.onTimeout", "saga.refund", "saga.release"}
    assert len(traces_of(spans_dir, run, queues)) == 1


def test_a_lease_expiry_that_compensates_stays_in_the_runs_trace(
    traced_saga, spans_dir, redis_client
):
    from celery_workflows.testing import Faults
    from tests.proj.saga import saga

    saga.emit("sagaStarted", {"orderId": "tr-lease", "slow": 30})
    wait_for(lambda: len(redis_client.lrange("saga:tr-lease", 0, -1)) == 2, timeout=20)
    charge = json.loads(redis_client.lrange("saga:tr-lease", 0, -1)[1])["job"]
    Faults().expire_lease(charge)  # its worker is as good as gone: the sweeper takes over
    run = settled("tr-lease", "compensated")
    assert [h.attempts[-1]["outcome"] for h in run.history if h.id == charge] == ["lease_expired"]
    assert len(traces_of(spans_dir, run, {"saga.reserve", "saga.release"})) == 1


def test_a_redriven_step_stays_in_the_runs_trace(traced_saga, spans_dir):
    from celery_workflows import redrive
    from tests.proj.saga import held

    first = held.enqueue("book", {"orderId": "tr-redrive", "card": "declined"})
    run = settled(first.correlation_id, "dead_lettered")
    (dead,) = [h for h in run.history if h.kind == "job" and h.status == "dead"]
    redrive(dead.id, payload={"orderId": "tr-redrive", "card": "ok"}, actor="ops")
    run = settled(first.correlation_id, "completed")
    assert len(traces_of(spans_dir, run, {"held.book", "held.pay"})) == 1
