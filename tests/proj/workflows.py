"""Queues the behaviour tests run through a real worker.

Every handler records its runs in Redis through ``ctx.resources`` (a :class:`Recorder`), so a
test can see what a worker process did, in which attempt, and when.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from celery_workflows import (
    AttemptInfo,
    DeadLetterInfo,
    Deciders,
    Event,
    Job,
    JobContext,
    LeaseLostError,
    Lifecycle,
    Middleware,
    NonRetryableError,
    Outcome,
    WorkflowService,
    add_middleware,
    signals,
)
from tests.proj.celery_app import app
from tests.proj.recorder import FAST_RETRY, Recorder, recorder

t = WorkflowService("t", app, resources=recorder)
#: queues of this service are consumed only by the crash tests' own workers
crash = WorkflowService("crash", app, resources=recorder)
#: queues paused and resumed by the queue-control tests, on their own worker
ops = WorkflowService("ops", app, resources=recorder)


class Order(BaseModel):
    orderId: str
    qty: int


class NotOurCustomer(Exception):
    pass


@t.queue_worker("echo", "Return the payload")
def echo(ctx: JobContext[Recorder], job: Job[Any]) -> Any:
    ctx.resources.record(job)
    return {"echo": job.payload, "correlation_id": ctx.correlation_id}


@t.queue_worker(
    "flaky",
    "Fail twice, then succeed",
    lifecycle=Lifecycle(visibility_timeout=10, max_attempts=5, retry=FAST_RETRY),
)
def flaky(ctx: JobContext[Recorder], job: Job[Any]) -> str:
    ctx.resources.record(job)
    if job.attempt < 3:
        raise ConnectionError(f"upstream unavailable (attempt {job.attempt})")
    return "ok"


@t.queue_worker(
    "doomed",
    "Always fails",
    lifecycle=Lifecycle(visibility_timeout=10, max_attempts=3, retry=FAST_RETRY),
)
def doomed(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    ctx.resources.record(job)
    raise RuntimeError(f"card declined (attempt {job.attempt})")


@t.queue_worker(
    "typed",
    "Validated payload",
    payload=Order,
    lifecycle=Lifecycle(max_attempts=4, retry=FAST_RETRY),
)
def typed(ctx: JobContext[Recorder], job: Job[Order]) -> dict[str, Any]:
    ctx.resources.record(job)
    return {"orderId": job.payload.orderId, "qty": job.payload.qty}


@t.queue_worker(
    "hangs",
    "Sleeps past its lease",
    lifecycle=Lifecycle(visibility_timeout=2, max_attempts=2, retry=FAST_RETRY),
)
def hangs(ctx: JobContext[Recorder], job: Job[Any]) -> str:
    ctx.resources.record(job)
    if job.attempt == 1:
        time.sleep(60)
    return "finished on attempt 2"


@t.queue_worker(
    "extends",
    "Long work that keeps its lease",
    lifecycle=Lifecycle(visibility_timeout=1.5, max_attempts=1),
)
def extends(ctx: JobContext[Recorder], job: Job[Any]) -> str:
    ctx.resources.record(job)
    for _ in range(4):
        time.sleep(0.6)
        ctx.extend_lease()
    return "done"


@t.queue_worker(
    "controls",
    "Job controls chosen by the payload",
    lifecycle=Lifecycle(max_attempts=3, retry=FAST_RETRY, non_retryable=(NotOurCustomer,)),
)
def controls(ctx: JobContext[Recorder], job: Job[Any]) -> Any:
    ctx.resources.record(job)
    action = job.payload["action"]
    if action == "finish":
        ctx.finish({"early": True})
    if action == "retry_once" and job.attempt == 1:
        ctx.retry(delay_seconds=1.0, reason="not ready yet")
    if action == "fail":
        ctx.fail("customer closed the order")
    if action == "park":
        ctx.dead_letter("needs a human")
    if action == "non_retryable":
        raise NotOurCustomer("unknown customer")
    if action == "bad_result":
        return {"when": object()}
    if action == "nul_result":
        return {"text": "a\x00b"}
    if action == "echo_text":
        return {"text": job.payload["text"]}
    if action == "nul_error":
        ctx.fail("bad byte \x00 in the input\ud800")
    if action == "wait_cancel":
        deadline = time.time() + 8
        while time.time() < deadline:
            if ctx.cancel_requested:
                return "stopped on request"
            time.sleep(0.1)
    return "plain"


@crash.queue_worker(
    "slow",
    "Takes a few seconds; the crash tests kill its worker",
    lifecycle=Lifecycle(visibility_timeout=3, max_attempts=3, retry=FAST_RETRY),
)
def slow(ctx: JobContext[Recorder], job: Job[Any]) -> str:
    ctx.resources.record(job)
    time.sleep(float(job.payload.get("seconds", 2)))
    ctx.resources.record(job, done=True)
    return "done"


#: the same work on a queue of its own, for the tests of the notices a worker holds
#: (tests/e2e/test_held_notices.py): they count what waits in its Redis lists
crash.queue_worker(
    "held",
    "Takes a few seconds; its worker is stopped or killed holding the next notices",
    lifecycle=Lifecycle(visibility_timeout=10, max_attempts=3, retry=FAST_RETRY),
)(slow)


@crash.queue_worker(
    "overrun",
    "Overruns its lease on the first attempt only",
    lifecycle=Lifecycle(visibility_timeout=1.5, max_attempts=3, retry=FAST_RETRY),
)
def overrun(ctx: JobContext[Recorder], job: Job[Any]) -> str:
    ctx.resources.record(job)
    if job.attempt == 1:
        time.sleep(float(job.payload["seconds"]))
    ctx.resources.record(job, done=True)
    return f"finished attempt {job.attempt}"


@crash.queue_worker(
    "poison",
    "Kills its own worker process every time",
    lifecycle=Lifecycle(visibility_timeout=2, max_attempts=2, retry=FAST_RETRY),
)
def poison(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    ctx.resources.record(job)
    os.kill(os.getpid(), 9)


#: consumed only by the state test's own two-process worker
states_svc = WorkflowService("st", app, resources=recorder)


@states_svc.queue_worker("tally", "Two processes write one workflow's state documents at once")
def tally(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    key = job.payload["key"]

    def bump(count: Any) -> int:
        time.sleep(0.02)  # widen the read-modify-write window so writers really collide
        return (count or 0) + 1

    ctx.states.update_state(f"count:{key}", bump)
    ctx.states.merge_state(f"seen:{key}", {job.id: os.getpid()})


@t.queue_worker(
    "needsApproval", "Large orders wait for a manager", emits=["orderApproved", "orderRejected"]
)
def needs_approval(ctx: JobContext[Recorder], job: Job[Any]) -> str:
    ctx.wait_for_human(
        f"Approve order {job.payload['orderId']}?",
        approve_event="orderApproved",
        reject_event="orderRejected",
        payload={"orderId": job.payload["orderId"]},
    )
    return "waiting for a manager"


@states_svc.queue_worker("note", "Keeps a document of its run and adds to a shared one")
def note_state(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    ctx.states.set_state("mine", job.payload["n"])
    ctx.shared_states.merge_state(job.payload["shared"], {ctx.correlation_id: job.payload["n"]})


@t.queue_worker("send-mail", "A queue whose name has a hyphen")
def send_mail(ctx: JobContext[Recorder], job: Job[Any]) -> str:
    return f"sent to {job.payload['to']}"


@t.queue_worker(
    "exits",
    "Raises what ends a process (SystemExit, KeyboardInterrupt) - as its attempt's failure",
    lifecycle=Lifecycle(max_attempts=1),
)
def exits(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    if job.payload["raise"] == "KeyboardInterrupt":
        raise KeyboardInterrupt
    raise SystemExit(job.payload.get("code", 1))


@t.queue_worker(
    "asksThenFails",
    "Asks for approval, then fails - or, with hold, outlives its lease first",
    emits=["orderApproved", "orderRejected"],
    lifecycle=Lifecycle(max_attempts=1, visibility_timeout=30),
)
def asks_then_fails(ctx: JobContext[Recorder], job: Job[Any]) -> str:
    ctx.resources.record(job)
    ctx.wait_for_human(
        f"Approve order {job.payload['orderId']}?",
        approve_event="orderApproved",
        reject_event="orderRejected",
        payload={"orderId": job.payload["orderId"]},
    )
    if "hold" not in job.payload:
        raise NonRetryableError("broken after asking")
    time.sleep(float(job.payload["hold"]))  # an operator takes the lease away meanwhile
    return "finished late"


@t.queue_worker("fulfil", "Ship an approved order")
def fulfil(ctx: JobContext[Recorder], job: Job[Any]) -> str:
    return f"fulfilled {job.payload['orderId']}, approved by {job.payload['decidedBy']}"


@t.queue_worker("refuse", "Tell the customer the order was refused")
def refuse(ctx: JobContext[Recorder], job: Job[Any]) -> str:
    return f"refused {job.payload['orderId']}: {job.payload['comment']}"


@t.queue_worker(
    "needsQuickApproval",
    "Approve within a second, or it expires",
    emits=["orderApproved", "orderRejected", "approvalExpired"],
)
def needs_quick_approval(ctx: JobContext[Recorder], job: Job[Any]) -> str:
    ctx.wait_for_human(
        f"Approve order {job.payload['orderId']} quickly?",
        approve_event="orderApproved",
        reject_event="orderRejected",
        payload={"orderId": job.payload["orderId"]},
        expires_in=timedelta(seconds=1),
        timeout_event="approvalExpired",
    )
    return "waiting briefly"


def on_call(user: Any, gate: dict[str, Any]) -> bool:
    """A check on the user (Deciders(check=...)): whoever the gate's payload names."""
    return bool(user.get_username() == gate["payload"].get("onCall"))


@t.queue_worker(
    "needsManager",
    "Only managers (or holders of auth.change_group, or the person on call) decide",
    emits=["orderApproved", "orderRejected", "approvalExpired"],
)
def needs_manager(ctx: JobContext[Recorder], job: Job[Any]) -> str:
    escalates = "escalateAfter" in job.payload
    ctx.wait_for_human(
        f"Approve order {job.payload['orderId']}, managers?",
        approve_event="orderApproved",
        reject_event="orderRejected",
        payload={"orderId": job.payload["orderId"], "onCall": job.payload.get("onCall")},
        deciders=Deciders(groups=["managers"], permissions=["auth.change_group"], check=on_call),
        expires_in=timedelta(seconds=job.payload["escalateAfter"]) if escalates else None,
        timeout_event="approvalExpired" if escalates else None,
        escalate_to=Deciders(groups=["directors"]) if escalates else None,
    )
    return "waiting for a manager"


@t.queue_worker("tock", "Record a schedule's firing")
def tock(ctx: JobContext[Recorder], job: Job[Any]) -> str:
    ctx.resources.redis.rpush("tocks", json.dumps({"run": ctx.correlation_id}))
    return "tock"


t.subscribe("orderApproved", enqueue="fulfil")
t.subscribe("orderRejected", enqueue="refuse")
t.subscribe("approvalExpired", enqueue="refuse")
t.subscribe("tickDue", enqueue="tock")

#: fired by a real celery beat in the schedule tests (no beat runs elsewhere)
t.schedule("tick", every=timedelta(seconds=1), emit="tickDue", payload={"from": "beat"})
#: fired by hand in the policy tests, with chosen times (hourly: beat never reaches it)
t.schedule(
    "hourlyBackfill", every=timedelta(hours=1), emit="tickDue", missed="backfill", backfill_limit=2
)
t.schedule("hourlyOnce", every=timedelta(hours=1), emit="tickDue", missed="once")
t.schedule("hourlySkip", every=timedelta(hours=1), emit="tickDue")
t.schedule(
    "nightly", cron="0 3 * * *", timezone="Europe/Berlin", enqueue="tock", payload={"from": "cron"}
)
#: driven through daylight saving changes on the test clock
t.schedule("berlinHalfPastTwo", cron="30 2 * * *", timezone="Europe/Berlin", emit="tickDue")


class HookRecorder(Middleware):
    """Writes every hook call to ``hooks:<correlation id>`` in Redis, in call order."""

    def _note(self, correlation_id: str, *entry: Any) -> None:
        recorder.redis.rpush(f"hooks:{correlation_id}", json.dumps(entry))

    def before_attempt(self, attempt: AttemptInfo) -> None:
        self._note(attempt.correlation_id, "before", attempt.queue, attempt.attempt)

    def after_outcome(self, attempt: AttemptInfo, outcome: Outcome | None) -> None:
        status = "fenced" if outcome is None else str(outcome.status)
        self._note(attempt.correlation_id, "after", attempt.attempt, status, attempt.ran_here)

    def on_emit(self, event: Event) -> Event:
        self._note(event.correlation_id, "emit", event.name)
        return event

    def on_dead_letter(self, dead: DeadLetterInfo) -> None:
        self._note(dead.correlation_id, "dead", dead.attempt, dead.reason[:9])


class BrokenHooks(Middleware):
    """Raises in every hook of workflows whose id starts with ``broken-hooks``."""

    def before_attempt(self, attempt: AttemptInfo) -> None:
        if attempt.correlation_id.startswith("broken-hooks"):
            raise RuntimeError("a middleware bug before the attempt")

    def after_outcome(self, attempt: AttemptInfo, outcome: Outcome | None) -> None:
        if attempt.correlation_id.startswith("broken-hooks"):
            raise RuntimeError("a middleware bug after the outcome")


class DieAfterOutcome(Middleware):
    """SIGKILLs its own process right after a workflow's last outcome is written, for
    workflows whose id starts with ``die-after-outcome`` - a crash at the worst instruction."""

    LAST_STEPS = ("crash.slow", "chaos.step4", "handoff.first")

    def after_outcome(self, attempt: AttemptInfo, outcome: Outcome | None) -> None:
        if (
            attempt.correlation_id.startswith("die-after-outcome")
            and attempt.ran_here
            and attempt.queue in self.LAST_STEPS
        ):
            os.kill(os.getpid(), 9)


#: one open run per business key; no worker consumes their queues, so runs stay open
keyed = WorkflowService(
    "keyed", app, resources=recorder, business_key="orderId", on_duplicate_key="refuse"
)
reusing = WorkflowService(
    "reusing", app, resources=recorder, business_key="orderId", on_duplicate_key="reuse"
)
for _service, _event in ((keyed, "keyedPlaced"), (reusing, "reusingPlaced")):
    _service.event(_event)

    @_service.queue_worker("hold", "Waits: nothing consumes it")
    def _hold(ctx: JobContext[Recorder], job: Job[Any]) -> str:
        return "held"

    _service.subscribe(_event, enqueue="hold")


#: consumed only by the priority tests' own worker, started once the jobs wait
prio = WorkflowService("prio", app, resources=recorder)


@prio.queue_worker("ordered", "Notes the order it runs jobs in")
def ordered(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    ctx.resources.redis.rpush("prio:order", json.dumps(job.payload["label"]))


#: consumed only by the continuation crash test's own worker
handoff = WorkflowService("handoff", app, resources=recorder)


@handoff.queue_worker("first", "Hands the next step to its own process", emits=["handedOver"])
def handoff_first(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    ctx.resources.record(job)
    ctx.emit("handedOver", job.payload)


@handoff.queue_worker(
    "second",
    "One attempt only, with a long lease",
    lifecycle=Lifecycle(max_attempts=1, visibility_timeout=60),
)
def handoff_second(ctx: JobContext[Recorder], job: Job[Any]) -> str:
    ctx.resources.record(job)
    return "ran"


handoff.subscribe("handedOver", enqueue="second")

add_middleware(HookRecorder())
add_middleware(BrokenHooks())
add_middleware(DieAfterOutcome())


@ops.queue_worker("steady", "Records each run")
def steady(ctx: JobContext[Recorder], job: Job[Any]) -> str:
    ctx.resources.record(job)
    return "done"


@ops.queue_worker(
    "brittle",
    "Fails while its dependency is down; the queue pauses after 3 failures in a row",
    lifecycle=Lifecycle(max_attempts=1, retry=FAST_RETRY, pause_after_failures=3),
)
def brittle(ctx: JobContext[Recorder], job: Job[Any]) -> str:
    ctx.resources.record(job)
    if ctx.resources.redis.exists("brittle:down"):
        raise ConnectionError("dependency down")
    return "done"


class Chore(BaseModel):
    do: str


@ops.queue_worker(
    "fussy",
    "Fails, asks for a retry or succeeds as told; pauses after 3 failures in a row",
    payload=Chore,
    lifecycle=Lifecycle(max_attempts=1, retry=FAST_RETRY, pause_after_failures=3),
)
def fussy(ctx: JobContext[Recorder], job: Job[Chore]) -> str:
    if job.payload.do == "fail":
        raise ConnectionError("dependency down")
    if job.payload.do == "retry":
        ctx.retry(delay_seconds=0.1, reason="not yet")
    return "done"


@signals.queue_paused.connect
def _note_pause(sender: Any = None, **kwargs: Any) -> None:
    """Wherever a queue is paused (a worker, for the poison threshold), the tests can see it."""
    recorder.redis.rpush("queue_paused", json.dumps({k: str(v) for k, v in kwargs.items()}))


#: a two-step workflow for the log, trace and metric tests, on their own workers
obs = WorkflowService("obs", app, resources=recorder, business_key="orderId")
obs.event("obsStarted")


@obs.queue_worker(
    "first",
    "Logs a line of its own, then hands over",
    emits=["firstDone"],
    lifecycle=Lifecycle(retry=FAST_RETRY),
)
def obs_first(ctx: JobContext[Recorder], job: Job[Any]) -> str:
    logging.getLogger("shop.payments").info("charging the card")
    if job.payload.get("fail_first") and job.attempt == 1:
        raise ConnectionError("gateway timeout")
    ctx.emit("firstDone", job.payload)
    return "first"


@obs.queue_worker("second", "Finishes", lifecycle=Lifecycle(retry=FAST_RETRY))
def obs_second(ctx: JobContext[Recorder], job: Job[Any]) -> str:
    ctx.log.info("shipping")
    return "second"


obs.subscribe("obsStarted", enqueue="first")
obs.subscribe("firstDone", enqueue="second")


@obs.queue_worker("dumpMetrics", "Writes this process's metric points to Redis")
def dump_metrics(ctx: JobContext[Recorder], job: Job[Any]) -> int:
    from tests.proj.tracing import metric_points

    points = metric_points()
    ctx.resources.redis.set("obs:metrics", json.dumps(points))
    return len(points)


# async def handlers, on their own worker (tests/e2e/test_async_handlers.py)
aio = WorkflowService("aio", app, resources=recorder, business_key="orderId")


@aio.queue_worker("fetch", "An async step: awaits, keeps state, emits", emits=["fetched"])
async def aio_fetch(ctx: JobContext[Recorder], job: Job[Any]) -> dict[str, Any]:
    await asyncio.sleep(0.01)
    key = f"aio:{job.payload['orderId']}"
    seen = await ctx.states.amerge_state(key, {"fetched": job.attempt})
    await ctx.aemit("fetched", {"orderId": job.payload["orderId"], "seen": seen})
    return {"pid": os.getpid(), "loop": id(asyncio.get_running_loop())}


@aio.queue_worker("store", "A second async step")
async def aio_store(ctx: JobContext[Recorder], job: Job[Any]) -> dict[str, Any]:
    await ctx.aextend_lease(30)
    state = await ctx.states.aget_state(f"aio:{job.payload['orderId']}")
    return {
        "stored": job.payload["orderId"],
        "state": state,
        "cancel": await ctx.acancel_requested(),
    }


aio.subscribe("fetched", enqueue="store")


@aio.queue_worker(
    "overrun",
    "Awaits past its one-second lease",
    lifecycle=Lifecycle(visibility_timeout=1, max_attempts=2, retry=FAST_RETRY),
)
async def aio_overrun(ctx: JobContext[Recorder], job: Job[Any]) -> str:
    ctx.resources.record(job, event="start")
    try:
        await asyncio.sleep(10)
    finally:  # the lease alarm cancels the coroutine: its cleanup still runs
        ctx.resources.record(job, event="cleanup")
    return "never"


@aio.queue_worker(
    "held",
    "Attempt 1 waits until released, then tries to extend its lease",
    lifecycle=Lifecycle(visibility_timeout=30, max_attempts=3, retry=FAST_RETRY),
)
async def aio_held(ctx: JobContext[Recorder], job: Job[Any]) -> str:
    ctx.resources.record(job, event="start")
    if job.attempt == 1:
        while not ctx.resources.redis.get(f"release:{job.id}"):
            await asyncio.sleep(0.05)
        try:
            await ctx.aextend_lease()
        except LeaseLostError:
            ctx.resources.record(job, event="lease lost")
            raise
    return f"done by attempt {job.attempt}"


# a workflow whose step "validateStock" was renamed "checkStock" by a deploy, while runs of the
# older definition were in flight (tests/e2e/test_versions.py); its gate's approve event was
# renamed "orderApprovedV1" -> "orderApproved" too
ver = WorkflowService("ver", app, resources=recorder, business_key="orderId")


@ver.queue_worker("checkStock", "Check stock (was validateStock)", emits=["stockVerified"])
def ver_check_stock(ctx: JobContext[Recorder], job: Job[Any]) -> str:
    ctx.emit("stockVerified", job.payload)
    return f"checked {job.payload['orderId']}"


@ver.queue_worker("ship", "Ship it", emits=["verShipped"])
def ver_ship(ctx: JobContext[Recorder], job: Job[Any]) -> str:
    return f"shipped {job.payload['orderId']}"


ver.subscribe("stockVerified", enqueue="ship")
ver.subscribe("verOrderApproved", enqueue="ship")
ver.event("verOrderApproved")  # emitted by approval gates (opened by the older deploy)
ver.event("verShipped", terminal=True)
