"""Fan-in on real workers. A join starts its step once every one of its events has happened in
a run; a gather hands its step every branch's result in item order - each once, even when the
branches finish at the same instant on two workers, or a worker dies mid-branch.

The workflows are ``tests/proj/fanin.py``: charge and reserve run in parallel and ship joins
them; split maps a batch of images onto resize branches that collect gathers.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from celery_workflows.testing import wait_for, wait_for_step
from django_app.models import Event, Job, WorkflowRun
from tests.helpers import manage, staff
from tests.proj.fanin import MAP_QUEUES, QUEUES, STOP_QUEUES

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("transactional_db")]


@pytest.fixture(autouse=True)
def _clean(redis_client: Any) -> None:
    redis_client.delete("fan:shipped", "fan:refunded", "fan:collected")


@pytest.fixture
def own_worker(start_worker):  # type: ignore[no-untyped-def]
    """Workers of this test alone, killed when it ends (a ``fan`` worker left running would
    take the next test's jobs; its work is done by then, so nothing is lost by the kill)."""
    started = []

    def start(*args: Any, **kwargs: Any) -> Any:
        started.append(start_worker(*args, **kwargs))
        return started[-1]

    yield start
    for worker in started:
        worker.kill()


@pytest.fixture(scope="module")
def shared_worker(start_worker):  # type: ignore[no-untyped-def]
    """One worker for the tests whose queues no other test of this module consumes: progress,
    callbacks, child runs, reruns and the stopping service's map (starting a worker per test
    cost more than the tests)."""
    from tests.proj.fanin import (
        APPROVAL_QUEUES,
        BILLING_QUEUES,
        CHECKOUT_QUEUES,
        PARENT_QUEUES,
        RR_QUEUES,
    )

    queues = [*CHECKOUT_QUEUES, *PARENT_QUEUES, *BILLING_QUEUES, *RR_QUEUES, *STOP_QUEUES]
    queues += APPROVAL_QUEUES
    worker = start_worker([*queues, "fan.longTask"], concurrency=2, name="shared")
    yield worker
    worker.kill()


def shipped(redis_client: Any) -> list[dict[str, Any]]:
    return [json.loads(x) for x in redis_client.lrange("fan:shipped", 0, -1)]


def run_of(event: Any) -> WorkflowRun:
    return WorkflowRun.objects.get(correlation_id=event.correlation_id)


def ended(event: Any) -> bool:
    return run_of(event).status not in ("running", "waiting", "compensating")


def test_the_joined_step_starts_once_with_every_events_payload(own_worker, redis_client):
    from tests.proj.fanin import fan

    own_worker(QUEUES, concurrency=2, name="join")
    started = fan.emit("fanOrdered", {"order": "o-1", "amount": 25})
    wait_for(lambda: ended(started), timeout=30)
    assert run_of(started).status == "completed"
    (ship,) = Job.objects.filter(correlation_id=started.correlation_id, queue="fan.ship")
    assert ship.payload == {
        "fanCharged": {"order": "o-1", "paid": 25},
        "fanReserved": {"order": "o-1", "sku": "A-1"},
    }
    # the job names the event that completed the join as its cause
    completing = Event.objects.get(id=ship.caused_by)
    assert completing.name in ("fanCharged", "fanReserved")
    assert completing.correlation_id == started.correlation_id
    assert [s["payload"]["fanCharged"]["paid"] for s in shipped(redis_client)] == [25]
    # the timeline marks the job a join started
    from celery_workflows import get_workflow

    (entry,) = [h for h in get_workflow(started.correlation_id).history if h.name == "fan.ship"]
    assert entry.joined
    page = staff("joins", "view_workflowrun").get(
        f"/admin/celery_workflows/workflowrun/{started.correlation_id}/change/"
    )
    assert b"started by a join" in page.content


def test_branches_finishing_at_the_same_instant_on_two_workers_start_the_join_once(
    own_worker, redis_client
):
    from tests.proj.fanin import fan

    # each branch has a worker of its own; both may run ship
    own_worker(["fan.charge", "fan.ship"], concurrency=2, name="charger")
    own_worker(["fan.reserve", "fan.ship"], concurrency=2, name="reserver")
    runs = [fan.emit("fanOrdered", {"order": f"o-{i}", "barrier": True}) for i in range(40)]
    wait_for(lambda: all(ended(r) for r in runs), timeout=120)
    ids = [r.correlation_id for r in runs]
    statuses = WorkflowRun.objects.filter(correlation_id__in=ids).values_list("status", flat=True)
    assert set(statuses) == {"completed"}
    per_run = [s["run"] for s in shipped(redis_client)]
    assert sorted(per_run) == sorted(ids)  # every run shipped, none twice
    assert Job.objects.filter(correlation_id__in=ids, queue="fan.ship").count() == 40
    # the race was real: the branches' events were written within milliseconds of each other
    # (on a loaded machine, or SQLite's one writer at a time, fewer pairs are that close)
    close = 0
    for run in ids:
        a, b = Event.objects.filter(
            correlation_id=run, name__in=["fanCharged", "fanReserved"]
        ).values_list("emitted_at", flat=True)
        close += abs((a - b).total_seconds()) < 0.025
    assert close >= 10, f"only {close} of 40 runs had their branches finish together"


def test_a_worker_killed_in_a_branch_still_leads_to_one_join(own_worker, redis_client):
    from tests.proj.fanin import fan

    charger = own_worker(["fan.charge"], concurrency=1, name="doomed")
    own_worker(["fan.reserve", "fan.ship", "fan.refund"], concurrency=2, name="others")
    started = fan.emit("fanOrdered", {"order": "o-kill", "stallOnce": True})
    wait_for(lambda: redis_client.get("fan:stalled:o-kill") is not None, timeout=30)
    wait_for(
        lambda: Job.objects.filter(
            correlation_id=started.correlation_id, queue="fan.reserve", status="succeeded"
        ).exists(),
        timeout=30,
    )
    charger.kill()  # SIGKILL mid-handler: its lease expires, the attempt is taken over
    own_worker(["fan.charge"], concurrency=1, name="heir")
    wait_for(lambda: ended(started), timeout=60)
    assert run_of(started).status == "completed"
    charge = Job.objects.get(correlation_id=started.correlation_id, queue="fan.charge")
    assert charge.attempts == 2
    assert [s["run"] for s in shipped(redis_client)] == [started.correlation_id]
    assert Job.objects.filter(correlation_id=started.correlation_id, queue="fan.ship").count() == 1


def test_a_branch_that_dead_letters_stops_the_join_and_compensates_the_other(
    own_worker, redis_client
):
    from tests.proj.fanin import fan

    own_worker(QUEUES, concurrency=2, name="failing")
    started = fan.emit("fanOrdered", {"order": "o-fail", "reserveFails": True})
    wait_for(lambda: ended(started), timeout=30)
    assert run_of(started).status == "compensated"
    assert not Job.objects.filter(correlation_id=started.correlation_id, queue="fan.ship").exists()
    assert shipped(redis_client) == []
    assert redis_client.lrange("fan:refunded", 0, -1) == [b"o-fail"]


def test_manage_check_warns_about_a_join_waiting_for_an_event_nothing_emits(worker_env):
    result = manage({**worker_env, "WORKFLOWS_TEST_LOOSE_JOIN": "1"}, "check")
    assert result.returncode == 0, result.stderr
    assert "celery_workflows.W002" in result.stderr
    assert "subscription 'loose' waits for event 'fanInsured'" in result.stderr


# -- map and gather ---------------------------------------------------------------------------


def collected(redis_client: Any) -> list[dict[str, Any]]:
    return [json.loads(x) for x in redis_client.lrange("fan:collected", 0, -1)]


def images(n: int) -> list[str]:
    return [f"img-{i:04d}.png" for i in range(n)]


def expected_results(names: list[str]) -> list[dict[str, Any]]:
    return [{"image": name, "size": len(name)} for name in names]


def test_a_gather_receives_every_branchs_result_in_item_order_once(own_worker, redis_client):
    from tests.proj.fanin import fan

    # two workers finish branches side by side, each may continue into the next branch
    own_worker(MAP_QUEUES, concurrency=3, name="mapper")
    own_worker(["fan.resize"], concurrency=3, name="branches")
    names = images(200)
    started = fan.emit("fanBatch", {"images": names})
    # the test kit waits for the gathering step and hands over what it received
    gathered = wait_for_step(started.correlation_id, "fan.collect", timeout=120)
    assert gathered.payload == {"results": expected_results(names), "failures": []}
    wait_for(lambda: ended(started), timeout=120)
    assert run_of(started).status == "completed"
    (entry,) = collected(redis_client)
    assert entry["payload"] == {"results": expected_results(names), "failures": []}
    branches = Job.objects.filter(correlation_id=started.correlation_id, queue="fan.resize")
    assert sorted(branches.values_list("gather_index", flat=True)) == list(range(200))
    assert set(branches.values_list("status", flat=True)) == {"succeeded"}
    (collect,) = Job.objects.filter(correlation_id=started.correlation_id, queue="fan.collect")
    assert collect.attempts == 1
    # the timeline numbers the branches
    from celery_workflows import get_workflow

    history = get_workflow(started.correlation_id).history
    assert sorted(h.branch for h in history if h.name == "fan.resize") == list(range(200))


def test_an_empty_map_gathers_at_once(own_worker, redis_client):
    from tests.proj.fanin import fan

    own_worker(MAP_QUEUES, concurrency=2, name="empty")
    started = fan.emit("fanBatch", {"images": []})
    wait_for(lambda: ended(started), timeout=30)
    assert [e["payload"] for e in collected(redis_client)] == [{"results": [], "failures": []}]


def test_a_branch_killed_mid_handler_is_taken_over_and_gathered_once(own_worker, redis_client):
    from tests.proj.fanin import fan

    doomed = own_worker(MAP_QUEUES, concurrency=2, name="doomed")
    names = images(12)
    started = fan.emit("fanBatch", {"images": names, "stallOnce": 5, "sleep": 0.05})
    wait_for(lambda: redis_client.get(f"fan:stalled:{names[5]}") is not None, timeout=30)
    doomed.kill()  # SIGKILL with branches running and finishing
    own_worker(MAP_QUEUES, concurrency=2, name="heir")
    wait_for(lambda: ended(started), timeout=60)
    assert run_of(started).status == "completed"
    assert [e["payload"] for e in collected(redis_client)] == [
        {"results": expected_results(names), "failures": []}
    ]
    stalled = Job.objects.get(correlation_id=started.correlation_id, gather_index=5)
    assert stalled.attempts == 2


def test_a_dead_branch_fails_the_run_and_cancels_the_queued_ones(own_worker, redis_client):
    from tests.proj.fanin import fan

    own_worker(MAP_QUEUES, concurrency=1, name="strict")
    names = images(30)
    started = fan.emit("fanBatch", {"images": names, "fail": [2], "sleep": 0.05})
    wait_for(lambda: ended(started), timeout=60)
    run = run_of(started)
    assert run.status == "dead_lettered"  # nothing of it to undo
    branches = Job.objects.filter(correlation_id=started.correlation_id, queue="fan.resize")
    statuses = list(branches.values_list("status", flat=True))
    assert statuses.count("dead") == 1
    assert statuses.count("cancelled") > 0  # the branches still queued did not run
    assert collected(redis_client) == []
    assert not Job.objects.filter(correlation_id=started.correlation_id, queue="fan.collect")


def test_a_lenient_gather_continues_with_the_failures_listed(own_worker, redis_client):
    from tests.proj.fanin import fan

    own_worker(MAP_QUEUES, concurrency=2, name="lenient")
    names = images(10)
    started = fan.emit("fanLenientBatch", {"images": names, "fail": [3, 7]})
    wait_for(lambda: ended(started), timeout=60)
    assert run_of(started).status == "completed"
    (entry,) = collected(redis_client)
    results = expected_results(names)
    results[3] = results[7] = None
    assert entry["payload"]["results"] == results
    assert [f["index"] for f in entry["payload"]["failures"]] == [3, 7]
    assert "cannot read img-0003.png" in entry["payload"]["failures"][0]["error"]
    # the failed branches are in the dead-letter queue for an operator
    dead = Job.objects.filter(correlation_id=started.correlation_id, status="dead")
    assert sorted(dead.values_list("gather_index", flat=True)) == [3, 7]


def test_cancelling_a_run_stops_its_queued_branches(own_worker, redis_client):
    from celery_workflows import cancel_workflow
    from tests.proj.fanin import fan

    own_worker(MAP_QUEUES, concurrency=1, name="cancelled")
    started = fan.emit("fanBatch", {"images": images(40), "sleep": 0.2})
    wait_for(
        lambda: Job.objects.filter(
            correlation_id=started.correlation_id, queue="fan.resize", status="succeeded"
        ).exists(),
        timeout=30,
    )
    assert cancel_workflow(started.correlation_id, reason="customer left")
    wait_for(lambda: ended(started), timeout=30)
    branches = Job.objects.filter(correlation_id=started.correlation_id, queue="fan.resize")
    statuses = list(branches.values_list("status", flat=True))
    assert statuses.count("cancelled") > 20
    assert collected(redis_client) == []


def test_a_redriven_branch_counts_in_its_items_place(shared_worker, redis_client):
    from celery_workflows import redrive
    from tests.proj.fanin import fanstop

    names = images(6)
    started = fanstop.emit("fanstopBatch", {"images": names, "fail": [4]})
    wait_for(lambda: ended(started), timeout=60)
    assert run_of(started).status == "dead_lettered"  # the operator's turn
    assert collected(redis_client) == []
    dead = Job.objects.get(correlation_id=started.correlation_id, status="dead")
    assert dead.gather_index == 4
    redrive(dead.id, {"image": names[4]})  # the corrected payload
    wait_for(lambda: ended(started), timeout=60)
    assert run_of(started).status == "completed"
    assert [e["payload"] for e in collected(redis_client)] == [
        {"results": expected_results(names), "failures": []}
    ]


# -- progress ---------------------------------------------------------------------------------


def test_a_running_steps_progress_shows_in_get_workflow_the_json_view_and_the_admin(
    shared_worker, redis_client
):
    from celery_workflows import get_workflow
    from tests.proj.fanin import fan

    run = fan.enqueue("longTask", {}).correlation_id
    reported = wait_for(lambda: redis_client.get(f"fan:progress:{run}"), timeout=30)
    assert json.loads(reported) == [True, False]  # the second report came too soon

    (job,) = [h for h in get_workflow(run).history if h.kind == "job"]
    assert job.status == "running"
    assert (job.progress["fraction"], job.progress["message"]) == (0.25, "1 of 4 files <b>")
    client = staff("watcher", "view_workflowrun")
    shown = client.get(f"/workflows/runs/{run}.json").json()
    (entry,) = [h for h in shown["history"] if h["kind"] == "job"]
    assert entry["progress"]["fraction"] == 0.25
    page = client.get(f"/admin/celery_workflows/workflowrun/{run}/change/").content.decode()
    assert '<progress max="1" value="0.25">' in page
    assert "25 % - 1 of 4 files &lt;b&gt;" in page  # the step's text, escaped

    redis_client.set(f"fan:go:{run}", "1")
    wait_for(lambda: get_workflow(run).status == "completed", timeout=30)
    (job,) = [h for h in get_workflow(run).history if h.kind == "job"]
    assert (job.progress["fraction"], job.progress["message"]) == (1.0, "all 4 files")
    page = client.get(f"/admin/celery_workflows/workflowrun/{run}/change/").content.decode()
    assert "<progress" not in page  # shown while it runs


# -- waiting for an event from outside ----------------------------------------------------------


def psp_post(client: Any, body: Any, secret: str | None = None) -> Any:
    """POST ``body`` to the test project's payment webhook, signed with ``secret``."""
    import hashlib
    import hmac

    from tests.proj.urls import PSP_SECRET

    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    signature = hmac.new((secret or PSP_SECRET).encode(), raw, hashlib.sha256).hexdigest()
    return client.post(
        "/hooks/psp/", raw, content_type="application/json", HTTP_X_SIGNATURE=signature
    )


def test_a_run_waits_for_a_verified_webhook_then_goes_on(shared_worker, redis_client):
    from django.test import Client

    from celery_workflows import GateClosedError, decide, get_workflow
    from tests.proj.fanin import fan

    redis_client.delete("fan:fulfilled")
    run = fan.emit("fanCheckout", {"order": "o-hook"}).correlation_id
    waiting = wait_for(lambda: get_workflow(run).status == "waiting" and get_workflow(run))
    assert waiting.waiting_for["awaits"] == "pspConfirmed"
    with pytest.raises(GateClosedError):  # no one decides it: it waits for the event
        decide(run, approve=True, actor="ops")

    page = staff("ops", "view_workflowrun", "change_workflowrun").get(
        f"/admin/celery_workflows/workflowrun/{run}/change/"
    )
    assert "Waiting for <strong>pspConfirmed</strong>" in page.content.decode()
    assert b"cw-approve" not in page.content  # no decision buttons

    client = Client()
    confirmed = {"order": "o-hook", "amount": 42}
    # refused requests record nothing, and the run goes on waiting
    assert psp_post(client, confirmed, secret="forged").status_code == 403
    assert psp_post(client, b"not json").status_code == 400
    assert psp_post(client, {"amount": 42}).status_code == 400
    assert psp_post(client, {"order": "o-unknown"}).status_code == 404
    assert client.get("/hooks/psp/").status_code == 405
    assert get_workflow(run).status == "waiting"
    assert not Event.objects.filter(correlation_id=run, name="pspConfirmed").exists()

    answer = psp_post(client, confirmed)
    assert answer.status_code == 202, answer.content
    assert answer.json()["correlation_id"] == run
    wait_for(lambda: get_workflow(run).status == "completed", timeout=30)
    assert [json.loads(x) for x in redis_client.lrange("fan:fulfilled", 0, -1)] == [confirmed]
    assert [a.action for a in get_workflow(run).audit] == ["arrive"]


def test_a_wait_that_times_out_emits_its_timeout_event_once(shared_worker, redis_client):
    from celery_workflows import get_workflow
    from tests.proj.fanin import fan

    redis_client.delete("fan:abandoned")
    run = fan.emit("fanCheckout", {"order": "o-late", "timeout": 1}).correlation_id
    wait_for(lambda: get_workflow(run).status == "completed", timeout=30)
    abandoned = [json.loads(x) for x in redis_client.lrange("fan:abandoned", 0, -1)]
    assert [a["order"] for a in abandoned] == ["o-late"]
    assert [a.action for a in get_workflow(run).audit] == ["expire"]
    # the webhook that comes too late finds no open run
    from django.test import Client

    assert psp_post(Client(), {"order": "o-late"}).status_code == 404


def test_an_event_that_beats_the_steps_own_outcome_is_not_waited_for_again(
    shared_worker, redis_client
):
    from celery_workflows import get_workflow
    from tests.proj.fanin import fan

    redis_client.delete("fan:fulfilled")
    run = fan.emit("fanCheckout", {"order": "o-fast", "fastProvider": True}).correlation_id
    wait_for(lambda: get_workflow(run).status == "completed", timeout=30)
    fulfilled = [json.loads(x) for x in redis_client.lrange("fan:fulfilled", 0, -1)]
    assert fulfilled == [{"order": "o-fast", "fast": True}]


# -- child workflows ----------------------------------------------------------------------------


def children_noted(redis_client: Any) -> list[dict[str, Any]]:
    return [json.loads(x) for x in redis_client.lrange("fan:children", 0, -1)]


@pytest.fixture
def parent_and_child_workers(shared_worker, redis_client):  # type: ignore[no-untyped-def]

    redis_client.delete("fan:children", "fan:voided")
    return shared_worker


def test_a_parent_waits_for_its_child_run_and_receives_its_result(
    parent_and_child_workers, redis_client
):
    from celery_workflows import get_workflow
    from tests.proj.fanin import fan

    parent = fan.emit("fanParent", {"order": "o-child"}).correlation_id
    wait_for(lambda: get_workflow(parent).status == "completed", timeout=30)
    (child,) = get_workflow(parent).children
    assert child["name"] == "billing" and child["status"] == "completed"
    assert get_workflow(child["correlation_id"]).parent_id == parent
    (noted,) = children_noted(redis_client)
    assert noted == {
        "done": True,
        "child": child["correlation_id"],
        "status": "completed",
        "result": {"invoice": "INV-o-child", "sent": True},  # the child's last step's result
        "error": "",
    }
    assert [a.action for a in get_workflow(parent).audit] == ["child"]
    # the admin links them both ways, and the parent's diagram draws the child's first step
    client = staff("ops2", "view_workflowrun")
    page = client.get(f"/admin/celery_workflows/workflowrun/{parent}/change/").content.decode()
    assert f"/admin/celery_workflows/workflowrun/{child['correlation_id']}/change/" in page
    assert 'data-queue="billing.invoice"' in page
    page = client.get(
        f"/admin/celery_workflows/workflowrun/{child['correlation_id']}/change/"
    ).content.decode()
    assert f"/admin/celery_workflows/workflowrun/{parent}/change/" in page


def test_a_child_that_fails_is_reported_to_its_parent_as_its_failed_event(
    parent_and_child_workers, redis_client
):
    from celery_workflows import get_workflow
    from tests.proj.fanin import fan

    parent = fan.emit("fanParent", {"order": "o-bad", "fail": True}).correlation_id
    wait_for(lambda: get_workflow(parent).status == "completed", timeout=30)
    (noted,) = children_noted(redis_client)
    assert noted["done"] is False and noted["status"] == "dead_lettered"
    assert "no billing address" in noted["error"]


def test_cancelling_the_parent_stops_and_compensates_its_child(
    parent_and_child_workers, redis_client
):
    from celery_workflows import cancel_workflow, get_workflow
    from tests.proj.fanin import fan

    parent = fan.emit("fanParent", {"order": "o-cancel", "slow": 20}).correlation_id

    def sending() -> str | None:
        children = get_workflow(parent).children
        if not children:
            return None
        child = get_workflow(children[0]["correlation_id"])
        running = [h for h in child.history if h.name == "billing.sendInvoice"]
        return child.correlation_id if running and running[0].status == "running" else None

    child = wait_for(sending, timeout=30)
    assert get_workflow(parent).status == "waiting"
    assert cancel_workflow(parent, actor="ops", reason="customer left")
    wait_for(lambda: get_workflow(child).status == "compensated", timeout=30)
    assert redis_client.lrange("fan:voided", 0, -1) == [b"o-cancel"]  # the invoice undone
    assert get_workflow(parent).status in ("cancelled", "compensated")
    assert "its parent run" in get_workflow(child).ended_by
    assert children_noted(redis_client) == []  # a stopped parent goes on with nothing


def test_a_child_stopped_before_any_step_ran_is_reported_by_the_sweeper(
    parent_and_child_workers, redis_client
):
    """The child's first step is held (its queue paused); an operator cancels the child run,
    which settles in the stop itself - no step outcome tells the parent: the sweeper does."""
    from celery_workflows import cancel_workflow, get_workflow, pause_queue, resume_queue
    from tests.proj.fanin import fan

    pause_queue("billing.invoice", actor="test", reason="hold the child")
    try:
        parent = fan.emit("fanParent", {"order": "o-orphan"}).correlation_id
        children = wait_for(lambda: get_workflow(parent).children, timeout=30)
        assert cancel_workflow(children[0]["correlation_id"], actor="ops", reason="not needed")
        wait_for(lambda: get_workflow(parent).status == "completed", timeout=30)
    finally:
        resume_queue("billing.invoice", actor="test")
    (noted,) = children_noted(redis_client)
    assert noted["status"] == "cancelled" and noted["error"] == "not needed"


@pytest.fixture
def rr_worker(shared_worker, redis_client):  # type: ignore[no-untyped-def]

    redis_client.delete("rr:first", "rr:second", "rr:third")
    return shared_worker


def failed_rr_run(key: str) -> str:
    from celery_workflows import get_workflow
    from tests.proj.fanin import rr

    run = rr.emit("rrStarted", {"order": key, "bad": True}).correlation_id
    wait_for(lambda: get_workflow(run).status == "dead_lettered", timeout=30)
    return run


def test_a_rerun_from_the_failed_step_keeps_the_earlier_results(rr_worker, redis_client):
    from celery_workflows import get_workflow, rerun

    old = failed_rr_run("o-rerun")
    second = next(h for h in get_workflow(old).history if h.name == "rr.second")
    new = rerun(old, second.id, {"order": "o-rerun", "customer": "C-7"}, actor="ops")
    wait_for(lambda: get_workflow(new).status == "completed", timeout=30)
    run = get_workflow(new)
    assert run.business_key == "o-rerun" and run.started_by == f"rerun of {old} from rr.second"
    steps = {h.name: h for h in run.history if h.kind == "job"}
    assert set(steps) == {"rr.first", "rr.second", "rr.third"}
    assert steps["rr.first"].result == {"order": "o-rerun", "bad": True, "customer": "C-7"}
    assert steps["rr.third"].result == "shipped o-rerun to C-7"
    # the earlier step kept its result and did not run again; the failed one ran twice
    assert [int(redis_client.get(f"rr:{s}")) for s in ("first", "second", "third")] == [1, 2, 1]
    # audited on both runs, with the payload before and after
    (new_audit,) = run.audit
    assert new_audit.action == "rerun" and new_audit.actor == "ops"
    assert new_audit.detail["payload_before"]["bad"] is True
    assert [a.action for a in get_workflow(old).audit] == ["rerun"]
    assert get_workflow(old).status == "dead_lettered"  # the old run is left as it was


def test_a_rerun_is_refused_for_an_open_run_an_unknown_step_and_a_bad_payload(
    rr_worker, redis_client
):
    from celery_workflows import PayloadError, RerunRefusedError, rerun
    from tests.proj.fanin import rr

    old = failed_rr_run("o-refused")
    with pytest.raises(RerunRefusedError, match=r"no forward step 'rr\.nope'"):
        rerun(old, "rr.nope")
    with pytest.raises(PayloadError):
        rerun(old, "rr.second", {"order": {"not": "json-serialisable", "x": object()}})
    open_run = rr.emit("rrStarted", {"order": "o-open"}, delay=3600).correlation_id
    with pytest.raises(RerunRefusedError, match="only a finished run"):
        rerun(open_run, "rr.first")
    assert WorkflowRun.objects.filter(business_key="o-refused").count() == 1  # nothing written


def test_a_rerun_after_an_undone_step_is_refused(own_worker, redis_client):
    from celery_workflows import RerunRefusedError, rerun
    from tests.proj.fanin import QUEUES, fan

    own_worker(QUEUES, concurrency=2, name="undone")
    redis_client.delete("fan:refunded")
    run = fan.emit("fanOrdered", {"order": "o-undone", "reserveFails": True})
    wait_for(lambda: ended(run), timeout=30)
    assert run_of(run).status == "compensated"
    with pytest.raises(RerunRefusedError, match=r"fan\.charge .* was undone"):
        rerun(run.correlation_id, "fan.reserve")


def test_operators_rerun_from_the_admin_with_permission_and_from_manage_py(
    rr_worker, worker_env, redis_client
):
    from celery_workflows import get_workflow

    old = failed_rr_run("o-admin")
    second = next(h for h in get_workflow(old).history if h.name == "rr.second")
    url = f"/admin/celery_workflows/workflowrun/{old}/rerun/"
    form = {"from_job": second.id, "payload": json.dumps({"order": "o-admin", "customer": "C"})}
    viewer = staff("viewer", "view_workflowrun")
    assert b"Rerun from here" not in viewer.get(url.replace("rerun/", "change/")).content
    assert viewer.post(url, form).status_code == 403
    operator = staff("operator", "view_workflowrun", "rerun_workflowrun")
    assert b"Rerun from here" in operator.get(url.replace("rerun/", "change/")).content
    answer = operator.post(url, form)
    assert answer.status_code == 302
    new = answer["Location"].rstrip("/").split("/")[-2]
    wait_for(lambda: get_workflow(new).status == "completed", timeout=30)
    assert get_workflow(new).audit[0].actor == "operator"

    result = manage(worker_env, "workflows", "rerun", old, "--from", "rr.second", "--payload",
                    '{"order": "o-admin", "customer": "D"}', "--actor", "ops-shell")  # fmt: skip
    assert result.returncode == 0, result.stderr
    newer = result.stdout.split()[-1]
    wait_for(lambda: get_workflow(newer).status == "completed", timeout=30)
    assert get_workflow(newer).audit[0].actor == "ops-shell"
    bad = manage(worker_env, "workflows", "rerun", old, "--from", "rr.nope")
    assert bad.returncode != 0 and "no forward step 'rr.nope'" in bad.stderr


def test_a_rerun_from_one_branch_of_a_join_counts_the_kept_branchs_event(own_worker, redis_client):
    from celery_workflows import get_workflow, rerun
    from tests.proj.fanin import fan

    own_worker(QUEUES, concurrency=2, name="rejoin")
    first = fan.emit("fanOrdered", {"order": "o-rejoin", "amount": 7})
    wait_for(lambda: ended(first), timeout=30)
    new = rerun(first.correlation_id, "fan.reserve", actor="ops")
    wait_for(lambda: get_workflow(new).status == "completed", timeout=30)
    jobs = [h for h in get_workflow(new).history if h.kind == "job"]
    assert sorted(h.name for h in jobs) == ["fan.charge", "fan.reserve", "fan.ship"]
    # charge was kept (not charged again): its event, copied, completed the join with reserve
    assert [s["run"] for s in shipped(redis_client)] == [first.correlation_id, new]
    (ship,) = [h for h in jobs if h.name == "fan.ship"]
    assert ship.payload["fanCharged"] == {"order": "o-rejoin", "paid": 7}


# -- approvals inside branches ------------------------------------------------------------------


def test_approvals_asked_by_several_branches_are_decided_one_after_the_other(
    shared_worker, redis_client
):
    from celery_workflows import decide, get_workflow
    from tests.proj.fanin import fan

    redis_client.delete("fan:decided", "fan:collected")
    run = fan.emit("fanApprovals", {"items": ["lamp", "desk", "sofa"]}).correlation_id

    def gate() -> dict[str, Any]:
        return get_workflow(run).waiting_for or {}

    # all three branches asked: one gate open, two queued behind it
    wait_for(lambda: len(gate().get("queued", [])) == 2, timeout=30)
    asked = []
    for verdict in (True, False, True):  # each decision opens the next branch's gate
        prompt = gate()["prompt"]
        asked.append(prompt)
        decide(run, approve=verdict, actor="manager")
        if len(asked) < 3:
            wait_for(lambda: gate().get("prompt") not in asked, timeout=30)
    assert not gate()
    wait_for(lambda: redis_client.llen("fan:decided") == 3, timeout=30)
    assert sorted(asked) == ["Approve desk?", "Approve lamp?", "Approve sofa?"]
    decided = [json.loads(x) for x in redis_client.lrange("fan:decided", 0, -1)]
    assert sorted((d["item"], d["comment"] == "") for d in decided) == [
        ("desk", True),
        ("lamp", True),
        ("sofa", True),
    ]
    wait_for(lambda: get_workflow(run).status == "completed", timeout=30)
    assert [a.action for a in get_workflow(run).audit].count("approve") == 2
