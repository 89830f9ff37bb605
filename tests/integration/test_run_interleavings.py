"""Random interleavings of everything that can happen to runs, against the real ledger
(``DjangoStore``, on PostgreSQL and SQLite) and the in-memory store - held to one set of
invariants after every step:

- a run's pending counter equals its pending jobs, and a run is final exactly when nothing of
  it is pending (a waiting run waits for its decision);
- every completed step of a compensated run is undone exactly once, in reverse order of
  completion, one undo at a time;
- no forward step starts after its run was stopped (or began failing);
- a fenced writer - an attempt whose lease was taken away - changes nothing;
- no job is held under two leases at once;
- every operator action (stop, redrive) leaves its audit entry;
- the sweeper's backstop never finds a run left open.

The store calls stand in for workers: what a worker writes after each attempt is written here,
through the same functions (``after_failure``, ``plan``, the undo planner). ``make test`` runs a
bounded number of examples; ``make chaos`` a longer search (``INTERLEAVINGS_EXAMPLES``).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import replace
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from celery_workflows import GateClosedError, NotDeadLetteredError, NotRedrivableError, approvals
from celery_workflows.approvals import new_gate
from celery_workflows.clock import utcnow
from celery_workflows.compensation import stop_workflow, undo_planner
from celery_workflows.deadletter import redrive
from celery_workflows.events import new_event, plan, run_start_for
from celery_workflows.gathers import with_branches
from celery_workflows.lifecycle import after_failure
from celery_workflows.records import (
    AttemptOutcome,
    AttemptRecord,
    ClaimedJob,
    JobStatus,
    Lease,
    Outcome,
    RunStatus,
)
from celery_workflows.retention import prune_finished_runs
from celery_workflows.store import configure, get_store
from celery_workflows.sweeper import settle_expired
from celery_workflows.testing.memory import InMemoryStore
from tests.proj.interleavings import BRANCHES, LIFECYCLE, QUEUES, UNDONE, prop

pytestmark = pytest.mark.usefixtures("transactional_db")

EXAMPLES = int(os.environ.get("INTERLEAVINGS_EXAMPLES", "20"))
FORWARD_NEXT = {"prop.a": "aDone"}


class Interleavings(RuleBasedStateMachine):
    """One example: a few runs, and random things happening to them."""

    def __init__(self) -> None:
        super().__init__()
        self.store = fresh_store()
        self.runs: list[str] = []
        #: job id -> the claim a "worker" holds
        self.held: dict[str, ClaimedJob] = {}
        #: claims whose lease was taken away (zombies)
        self.zombies: list[ClaimedJob] = []
        #: runs that were stopped or began failing, by correlation id
        self.stopped: set[str] = set()
        #: of those, the ones an operator or a deadline stopped (for good)
        self.cancelled: set[str] = set()
        self.audited: list[tuple[str, str]] = []
        self.paused: set[str] = set()
        #: hours after now of the schedule's next firing
        self.hours = 0

    # -- helpers ----------------------------------------------------------------------

    def jobs(self, status: JobStatus | None = None) -> list:
        """The runs' jobs in an order that replays: by run, then queue (a run has at most one
        job per queue). Ids and times differ between replays of an example, and jobs written
        by one statement (a fan-out) share their time - what a rule draws from must not."""
        found = []
        for correlation_id in self.runs:
            run = self.store.get_workflow(correlation_id)
            found += sorted(
                (h for h in run.history if h.kind == "job" and status in (None, h.status)),
                key=lambda h: (h.name, repr(h.payload), h.status),  # branches: by item
            )
        return found

    def let_go(self, data) -> ClaimedJob:
        """One of the held claims (in an order that replays, as :meth:`jobs`), no longer held."""
        held = sorted(
            self.held.values(), key=lambda c: (self.runs.index(c.correlation_id), c.queue)
        )
        return self.held.pop(data.draw(st.sampled_from(held)).id)

    def record(self, claim: ClaimedJob, outcome: AttemptOutcome, error: str = "") -> AttemptRecord:
        now = utcnow()
        return AttemptRecord(claim.attempt, "w", claim.started_at, now, outcome, error)

    def write(self, claim: ClaimedJob, outcome: Outcome, outbox=None):
        undo = undo_planner(prop.name)
        return self.store.record_outcome(
            claim, outcome, plan([]) if outbox is None else outbox, undo
        )

    # -- what happens -----------------------------------------------------------------

    @precondition(lambda self: len(self.runs) < 3)
    @rule()
    def start_a_run(self) -> None:
        event = new_event(
            "propStarted",
            {"key": uuid.uuid4().hex[:8]},
            source="prop",
            correlation_id=None,
            causation_id=None,
            trace_id=None,
        )
        self.store.write_outbox(plan([event], run_start_for(event)))
        self.runs.append(event.correlation_id)

    def claim(self, data) -> ClaimedJob | None:
        due = [h for h in self.jobs(JobStatus.QUEUED) if h.id not in self.held]
        if not due:
            return None
        job = data.draw(st.sampled_from(due))
        record = self.store.get_job(job.id)
        claim = self.store.claim(job.id, record.attempts + 1, uuid.uuid4().hex, "w", 30)
        if claim is None:
            return None
        assert job.id not in self.held, "a job held under two leases"
        assert claim.queue not in self.paused, "a job of a paused queue started"
        if claim.compensates is None:
            assert claim.correlation_id not in self.stopped, "a forward step started after a stop"
        return claim

    @precondition(lambda self: self.runs)
    @rule(data=st.data())
    def a_worker_claims_a_job(self, data) -> None:
        claim = self.claim(data)
        if claim is not None:
            self.held[claim.id] = claim

    @precondition(lambda self: self.runs)
    @rule(data=st.data(), gate=st.booleans(), continue_locally=st.booleans())
    def a_worker_runs_a_job_to_success(self, data, gate, continue_locally) -> None:
        claim = self.claim(data)
        if claim is not None:
            self.succeed(claim, gate, continue_locally)

    # workers make progress more often than operators act: the same rule, twice
    a_worker_runs_another_job_to_success = a_worker_runs_a_job_to_success

    @precondition(lambda self: self.held)
    @rule(data=st.data(), gate=st.booleans(), continue_locally=st.booleans())
    def an_attempt_succeeds(self, data, gate, continue_locally) -> None:
        claim = self.let_go(data)
        self.succeed(claim, gate, continue_locally)

    def succeed(self, claim: ClaimedJob, gate: bool, continue_locally: bool) -> None:
        events = []
        if claim.queue in FORWARD_NEXT and not gate:
            events.append(
                new_event(
                    FORWARD_NEXT[claim.queue],
                    claim.payload,
                    source=claim.queue,
                    correlation_id=claim.correlation_id,
                    causation_id=claim.id,
                    trace_id=claim.trace_id,
                )
            )
        outbox = plan(events, priority=claim.priority)
        if claim.queue == "prop.c":  # ctx.map() of two items
            items = [{"item": i} for i in range(BRANCHES)]
            outbox = with_branches(outbox, claim, prop.queue("c").gather, items)
        if gate and claim.queue == "prop.a":
            expires = timedelta(microseconds=1) if len(self.runs) % 2 else None  # some expire
            opened = new_gate(
                claim.correlation_id,
                claim.id,
                "go on?",
                "propApproved",
                "propRejected",
                None,
                expires_in=expires,
                timeout_event="propRejected" if expires else None,
            )
            outbox = replace(outbox, gate=opened.to_json())
        leased = None
        if continue_locally and outbox.jobs:
            now = utcnow()
            lease = Lease(uuid.uuid4().hex, "w", now, now + timedelta(seconds=30))
            leased = replace(outbox.jobs[0], lease=lease, published=False)
            outbox = replace(outbox, jobs=[leased, *outbox.jobs[1:]])
        outcome = Outcome(JobStatus.SUCCEEDED, self.record(claim, AttemptOutcome.SUCCEEDED))
        recorded = self.write(claim, outcome, outbox)
        assert recorded is not None
        if leased is not None and leased.id in {j.id for j in recorded.created}:
            from celery_workflows.continuation import claimed

            self.held[leased.id] = claimed(leased, "")

    @precondition(lambda self: self.held)
    @rule(data=st.data(), give_up=st.booleans())
    def an_attempt_fails(self, data, give_up) -> None:
        self.fail(self.let_go(data), give_up)

    @precondition(lambda self: self.runs)
    @rule(data=st.data(), give_up=st.booleans())
    def a_worker_runs_a_job_that_fails(self, data, give_up) -> None:
        claim = self.claim(data)
        if claim is not None:
            self.fail(claim, give_up)

    def fail(self, claim: ClaimedJob, give_up: bool) -> None:
        record = self.record(claim, AttemptOutcome.FAILED, "boom")
        outcome = after_failure(record, claim.max_attempts, LIFECYCLE.retry, give_up=give_up)
        outbox = plan([])
        if claim.queue == "prop.a":  # it asked for a decision before it failed
            asked = new_gate(
                claim.correlation_id, claim.id, "go?", "propApproved", "propRejected", None
            )
            outbox = replace(outbox, gate=asked.to_json())
        recorded = self.write(claim, outcome, outbox)
        assert recorded is not None
        if outcome.status == JobStatus.DEAD and claim.compensates is None:
            self.stopped.add(claim.correlation_id)  # a compensating service: the run fails

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def a_lease_is_taken_away_and_the_sweeper_settles_it(self, data) -> None:
        claim = self.let_go(data)
        assert self.store.release_lease(claim.id, "ops")
        for lease in self.store.expire_leases(QUEUES, utcnow() + timedelta(seconds=1), 100):
            settle_expired(self.store, lease)
            before = self.store.get_job(lease.job_id)
            if before.status == JobStatus.DEAD and before.compensates is None:
                self.stopped.add(before.correlation_id)
        self.zombies.append(claim)

    @precondition(lambda self: self.zombies)
    @rule(data=st.data())
    def a_zombie_tries_to_write(self, data) -> None:
        zombie = data.draw(st.sampled_from(self.zombies))
        before = self.store.get_job(zombie.id)
        outcome = Outcome(JobStatus.SUCCEEDED, self.record(zombie, AttemptOutcome.SUCCEEDED))
        assert self.write(zombie, outcome) is None, "a fenced writer wrote"
        assert self.store.get_job(zombie.id) == before

    @precondition(lambda self: self.runs)
    @rule(data=st.data(), deadline=st.booleans())
    def an_operator_cancels_or_a_deadline_passes(self, data, deadline) -> None:
        correlation_id = data.draw(st.sampled_from(self.runs))
        event = "propTimedOut" if deadline else None
        reason = "deadline exceeded" if deadline else "cancelled by ops"
        if stop_workflow(correlation_id, reason, "ops", event):
            self.stopped.add(correlation_id)
            self.cancelled.add(correlation_id)
            self.audited.append((correlation_id, "stop"))

    @precondition(lambda self: self.runs)
    @rule(data=st.data())
    def an_operator_redrives_a_dead_letter(self, data) -> None:
        dead = self.jobs(JobStatus.DEAD)
        if not dead:
            return
        job = data.draw(st.sampled_from(dead))
        try:
            redrive(job.id, actor="ops")
        except (NotRedrivableError, NotDeadLetteredError):
            return
        correlation_id = self.store.get_job(job.id).correlation_id
        self.audited.append((correlation_id, "redrive"))
        if not job.compensates:
            # a failed run with nothing undone goes on from the failed step; a stopped one not
            assert correlation_id not in self.cancelled, "a step of a stopped run re-driven"
            self.stopped.discard(correlation_id)

    @precondition(lambda self: len(self.runs) < 3)
    @rule()
    def the_schedule_fires(self) -> None:
        from celery_workflows.schedules import fire

        self.hours += 1
        slot = utcnow().replace(minute=0, second=0, microsecond=0) + timedelta(hours=self.hours)
        for started in fire("prop.nightly", fired_at=(slot + timedelta(seconds=1)).isoformat()):
            assert started == slot
        for fired in self.fired_runs():
            if fired not in self.runs:
                self.runs.append(fired)

    def fired_runs(self) -> list[str]:
        last = self.store.last_fire("prop.nightly", started=True)
        return [last[2]] if last is not None and last[2] else []

    @precondition(lambda self: self.runs)
    @rule(queue=st.sampled_from(["prop.a", "prop.b", "prop.undo_a"]), pause=st.booleans())
    def an_operator_pauses_or_resumes_a_queue(self, queue, pause) -> None:
        from celery_workflows import control

        if pause:
            control.pause_queue(queue, actor="ops")
            self.paused.add(queue)
        else:
            control.resume_queue(queue, actor="ops")
            self.paused.discard(queue)

    @precondition(lambda self: self.runs)
    @rule(data=st.data())
    def a_gate_expires(self, data) -> None:
        approvals.expire_gate(data.draw(st.sampled_from(self.runs)))

    @precondition(lambda self: self.runs)
    @rule(data=st.data(), approve=st.booleans())
    def a_person_decides(self, data, approve) -> None:
        correlation_id = data.draw(st.sampled_from(self.runs))
        try:
            approvals.decide(correlation_id, approve, "manager")
        except GateClosedError:
            return

    @precondition(lambda self: self.runs)
    @rule(data=st.data())
    def finished_runs_are_pruned(self, data) -> None:
        if not any(RunStatus(self.store.get_workflow(r).status).is_final for r in self.runs):
            return
        prune_finished_runs(0, actor="ops")
        gone = []
        for correlation_id in self.runs:
            try:
                self.store.get_workflow(correlation_id)
            except Exception:
                gone.append(correlation_id)
        self.runs = [r for r in self.runs if r not in gone]
        self.audited = [(r, a) for r, a in self.audited if r not in gone]
        self.zombies = [z for z in self.zombies if z.correlation_id not in gone]
        assert not [c for c in self.held.values() if c.correlation_id in gone], "pruned a live job"

    # -- what must always hold --------------------------------------------------------

    @invariant()
    def a_run_is_final_exactly_when_nothing_of_it_is_pending(self) -> None:
        for correlation_id in self.runs:
            run = self.store.get_workflow(correlation_id)
            pending = [
                h for h in run.history if h.kind == "job" and h.status in ("queued", "running")
            ]
            assert counted_pending(self.store, correlation_id) == len(pending), run
            status = RunStatus(run.status)
            if status == RunStatus.WAITING:  # on a gate a step that succeeded opened
                opener = run.waiting_for["opened_by_job"] if run.waiting_for else None
                assert opener and self.store.get_job(opener).status == JobStatus.SUCCEEDED, run
            if status.is_final:
                assert not pending, f"{status} with pending jobs: {run}"
            elif not pending:
                assert status == RunStatus.WAITING, f"{status} with nothing pending: {run}"

    @invariant()
    def every_completed_step_of_a_stopped_run_is_undone_once_in_reverse_order(self) -> None:
        for correlation_id in self.runs:
            run = self.store.get_workflow(correlation_id)
            jobs = [h for h in run.history if h.kind == "job"]
            undos = [h for h in jobs if h.compensates]
            live_undos = [h for h in undos if h.status in ("queued", "running")]
            assert len(live_undos) <= 1, "two undos at once"
            done = [h for h in undos if h.status == "succeeded"]
            assert len({h.compensates for h in done}) == len(done), "a step undone twice"
            if run.status != RunStatus.COMPENSATED:
                continue
            steps = [
                h
                for h in jobs
                if h.name in UNDONE and not h.compensates and h.status == "succeeded"
            ]
            finished = {h.id: _finished(h) for h in steps}
            assert {h.compensates for h in done} == set(finished), f"not every step undone: {run}"
            order = [h.compensates for h in sorted(done, key=_finished)]
            assert order == sorted(finished, key=lambda i: finished[i], reverse=True), run

    @invariant()
    def a_gather_starts_its_step_once_and_only_when_every_branch_succeeded(self) -> None:
        for correlation_id in self.runs:
            run = self.store.get_workflow(correlation_id)
            jobs = [h for h in run.history if h.kind == "job"]
            gathered = [h for h in jobs if h.name == "prop.f"]
            assert len(gathered) <= 1, f"a gather started its step twice: {run}"
            # an item is done when a job of it (the first, or one re-driven) succeeded
            done = {
                h.payload["item"] for h in jobs if h.name == "prop.e" and h.status == "succeeded"
            }
            every = done == set(range(BRANCHES))
            if gathered:
                assert every, f"gathered before every branch succeeded: {run}"
                results = gathered[0].payload["results"]
                assert len(results) == BRANCHES and not gathered[0].payload["failures"], run
            elif every:  # the last branch's outcome found the run stopping
                assert correlation_id in self.stopped, f"every branch done, nothing gathered: {run}"

    @invariant()
    def every_operator_action_is_audited(self) -> None:
        for correlation_id, action in self.audited:
            actions = [a.action for a in self.store.get_workflow(correlation_id).audit]
            assert action in actions

    @invariant()
    def the_backstop_finds_nothing(self) -> None:
        now = utcnow()
        assert self.store.settle_idle_runs(now, now + timedelta(days=1), 100) == []


def fresh_store():
    """Every example starts from an empty store, so that an example replays the same way
    (hypothesis shrinks a failure by replaying it)."""
    from celery_workflows import control

    control._cache.forget()
    store = get_store()
    if isinstance(store, InMemoryStore):
        configure(InMemoryStore())
        return get_store()
    from django_app import models

    for model in (
        models.Job,
        models.Event,
        models.WorkflowRun,
        models.StateDocument,
        models.ScheduleFire,
        models.AuditEntry,
        models.QueueControl,
        models.QueueMinute,
    ):
        model.objects.all().delete()
    return store


def _finished(entry) -> str:
    return entry.attempts[-1]["finished_at"] if entry.attempts else ""


def counted_pending(store, correlation_id: str) -> int:
    if isinstance(store, InMemoryStore):
        return store._data.runs[correlation_id].pending_jobs
    from django_app.models import WorkflowRun

    return WorkflowRun.objects.get(correlation_id=correlation_id).pending_jobs


SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.mark.parametrize("store", ["ledger", "memory"])
def test_random_interleavings_keep_every_rule_of_a_run(store):
    original = get_store()
    if store == "memory":
        configure(InMemoryStore())
    try:
        Interleavings.TestCase.settings = SETTINGS
        Interleavings.TestCase().runTest()
    finally:
        configure(original)
