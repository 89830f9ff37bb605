"""The state store: concurrent writers from two worker processes lose nothing."""

from __future__ import annotations

import uuid

import pytest

from celery_workflows import PayloadNotSerializableError, StateConflictError, states
from celery_workflows.testing import wait_for
from django_app.models import Job
from tests.proj.workflows import states_svc

pytestmark = pytest.mark.usefixtures("transactional_db")


@pytest.mark.worker
def test_concurrent_updates_from_two_worker_processes_lose_nothing(start_worker):
    start_worker(["st.tally"], concurrency=2, name="states")
    key = uuid.uuid4().hex
    jobs = [states_svc.enqueue("tally", {"key": key}, correlation_id=key).job_id for _ in range(20)]
    store = states(key)
    # every job finished (its handler does both writes before its outcome is recorded) ...
    wait_for(
        lambda: Job.objects.filter(id__in=jobs, status="succeeded").count() == 20,
        timeout=30,
        message="not all 20 jobs succeeded",
    )
    # ... and no write was lost
    assert store.get_state(f"count:{key}") == 20
    seen = store.get_state(f"seen:{key}")
    assert sorted(seen) == sorted(jobs)
    assert len(set(seen.values())) == 2  # both prefork processes wrote
    assert store.get(f"count:{key}").version == 20


def test_set_and_get_round_trip_with_versions():
    s = states("wf-1")
    assert s.get_state("order:o-1") is None
    assert s.set_state("order:o-1", {"step": "paid"}) == 1
    assert s.set_state("order:o-1", {"step": "shipped"}) == 2
    assert s.get_state("order:o-1") == {"step": "shipped"}


def test_compare_and_set_refuses_a_stale_version():
    s = states("wf-2")
    s.set_state("doc", {"a": 1})
    assert s.compare_and_set("doc", {"a": 2}, expected_version=1) == 2
    with pytest.raises(StateConflictError, match="changed since version 1"):
        s.compare_and_set("doc", {"a": 3}, expected_version=1)
    with pytest.raises(StateConflictError):
        s.compare_and_set("doc", {"a": 3}, expected_version=0)  # 0 means "must not exist"
    assert s.get_state("doc") == {"a": 2}


def test_merge_state_keeps_other_keys():
    s = states("wf-3")
    s.merge_state("doc", {"a": 1})
    assert s.merge_state("doc", {"b": 2}) == {"a": 1, "b": 2}


def test_non_json_value_is_refused_and_nothing_is_written():
    s = states("wf-4")
    with pytest.raises(PayloadNotSerializableError, match="'doc'"):
        s.set_state("doc", {"when": object()})
    assert s.get("doc") is None


@pytest.mark.worker
def test_a_runs_documents_are_its_own_and_shared_ones_are_seen_by_every_run(
    start_worker, worker_env
):
    from celery_workflows import get_workflow

    worker = start_worker(["st.note"], concurrency=1, name="scopes")
    shared = f"rates-{uuid.uuid4().hex[:6]}"
    runs = [states_svc.enqueue("note", {"n": n, "shared": shared}).correlation_id for n in (1, 2)]
    wait_for(lambda: len(states().get_state(shared) or {}) == 2, timeout=20)
    assert states().get_state(shared) == {runs[0]: 1, runs[1]: 2}
    # the same key, one document per run
    assert [states(run).get_state("mine") for run in runs] == [1, 2]
    assert states().get_state("mine") is None
    wait_for(lambda: get_workflow(runs[1]).status == "completed", timeout=20)
    assert get_workflow(runs[0]).states == {"mine": 1}
    worker.stop()


def test_pruning_deletes_a_runs_own_documents_and_never_shared_ones(worker_env):
    from datetime import timedelta

    from celery_workflows import cancel
    from celery_workflows.clock import utcnow
    from django_app.models import StateDocument, WorkflowRun
    from tests.helpers import manage

    first = states_svc.enqueue("note", {"n": 1, "shared": "pruned-rates"}, delay=600)
    old = first.correlation_id
    cancel(first.job_id, actor="ops-ann")  # an operator's action on the run, audited
    states(old).set_state("mine", 1)
    from celery_workflows.states import States
    from celery_workflows.store import get_store

    States(None, get_store(), writer=old).set_state("pruned-rates", {"EUR": 1.08})
    long_ago = utcnow() - timedelta(days=40)
    WorkflowRun.objects.filter(correlation_id=old).update(
        status="completed", finished_at=long_ago, pending_jobs=0
    )
    done = manage(worker_env, "workflows", "prune", "--days", "30", "--actor", "ops-bo")
    assert done.returncode == 0, done.stderr
    assert "pruned 1 finished run(s)" in done.stdout
    assert not StateDocument.objects.filter(scope=old).exists()
    assert states().get_state("pruned-rates") == {"EUR": 1.08}
    # the audit trail stays, and says who pruned
    from django_app.models import AuditEntry

    assert AuditEntry.objects.filter(correlation_id=old, action="cancel", actor="ops-ann").exists()
    prune = AuditEntry.objects.get(action="prune")
    assert prune.actor == "ops-bo" and prune.detail["runs"] == 1
