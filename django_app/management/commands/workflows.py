"""``manage.py workflows <action>``: inspect and operate workflows from scripts and cron."""

from __future__ import annotations

import getpass
import json
import time
from typing import Any

from django.core.exceptions import ObjectDoesNotExist
from django.core.management.base import BaseCommand, CommandError, CommandParser

from celery_workflows import (
    WorkflowError,
    cancel_workflow,
    decide,
    discard,
    get_workflow,
    graph,
    list_dead_letters,
    pause_queue,
    redrive,
    rename_event,
    rename_queue,
    rerun,
    resume_queue,
)
from celery_workflows.deadletter import KEEP_PAYLOAD
from celery_workflows.retention import PRUNE_BATCH, prune_finished_runs
from celery_workflows.store import get_store
from celery_workflows.sweeper import Sweeper
from django_app import dashboard
from django_app.models import WorkflowRun

#: who acts when --actor is not given: the operator's OS user
DEFAULT_ACTOR = f"manage.py:{getpass.getuser()}"


class Command(BaseCommand):
    help = (
        "Inspect and operate workflows: status, dead letters, redrive, approvals, cancel, "
        "queues (pause, resume, stats), the graph, prune, sweep."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        status = sub.add_parser("status", help="a workflow's status and history")
        status.add_argument("id", help="correlation id or business key")
        status.add_argument("--json", action="store_true", help="print JSON")
        dlq = sub.add_parser("dlq", help="list dead letters")
        dlq.add_argument("--queue", help="service.queue")
        dlq.add_argument("--limit", type=int, default=50)
        redrive_cmd = sub.add_parser("redrive", help="re-drive a dead letter")
        redrive_cmd.add_argument("job_id")
        redrive_cmd.add_argument("--payload", help="replacement payload as JSON")
        discard_cmd = sub.add_parser("discard", help="discard a dead letter")
        discard_cmd.add_argument("job_id")
        decide_cmd = sub.add_parser("decide", help="approve or reject a waiting workflow")
        decide_cmd.add_argument("id", help="correlation id or business key")
        choice = decide_cmd.add_mutually_exclusive_group(required=True)
        choice.add_argument("--approve", action="store_true")
        choice.add_argument("--reject", action="store_true")
        decide_cmd.add_argument("--comment", default="")
        decide_cmd.add_argument(
            "--user",
            help="the deciding user's username (needed when the gate names who decides it)",
        )
        rerun_cmd = sub.add_parser(
            "rerun", help="start a new run of a finished one from a step (earlier results kept)"
        )
        rerun_cmd.add_argument("id", help="correlation id or business key of the finished run")
        rerun_cmd.add_argument(
            "--from", dest="from_step", required=True, help="a job id, or service.queue"
        )
        rerun_cmd.add_argument("--payload", help="the step's payload as JSON (default: kept)")
        cancel_cmd = sub.add_parser("cancel", help="cancel a workflow and undo its steps")
        cancel_cmd.add_argument("id", help="correlation id or business key")
        cancel_cmd.add_argument("--reason", default="")
        rename_q = sub.add_parser(
            "rename-queue", help="move what runs in flight need of a renamed queue to its new name"
        )
        rename_q.add_argument("old", help="the old service.queue")
        rename_q.add_argument("new", help="the declared service.queue that replaces it")
        rename_e = sub.add_parser(
            "rename-event", help="make open approval gates emit a renamed event's new name"
        )
        rename_e.add_argument("old")
        rename_e.add_argument("new")
        pause = sub.add_parser("pause", help="stop starting a queue's jobs (they wait)")
        pause.add_argument("queue", help="service.queue")
        pause.add_argument("--reason", default="")
        resume = sub.add_parser("resume", help="start a paused queue's jobs again")
        resume.add_argument("queue", help="service.queue")
        stats = sub.add_parser("stats", help="the queue dashboard's figures")
        stats.add_argument("--json", action="store_true", help="print JSON")
        graph_cmd = sub.add_parser("graph", help="print the declared workflow graph")
        graph_cmd.add_argument("--format", choices=graph.FORMATS, default="text")
        prune = sub.add_parser("prune", help="delete finished runs older than N days")
        prune.add_argument("--days", type=int, required=True)
        prune.add_argument("--batch-size", type=int, default=PRUNE_BATCH)
        for action in (
            redrive_cmd,
            rerun_cmd,
            discard_cmd,
            decide_cmd,
            cancel_cmd,
            rename_q,
            rename_e,
            pause,
            resume,
            prune,
        ):
            action.add_argument(
                "--actor",
                default=DEFAULT_ACTOR,
                help="who is acting, for the audit trail (default: manage.py:<os user>)",
            )
        sweep = sub.add_parser(
            "sweep", help="settle expired leases, publish due jobs, settle runs left open"
        )
        sweep.add_argument("--loop", action="store_true", help="keep sweeping every second")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            getattr(self, f"do_{options['action'].replace('-', '_')}")(options)
        except WorkflowError as exc:
            raise CommandError(str(exc)) from exc

    def do_status(self, options: dict[str, Any]) -> None:
        status = get_workflow(options["id"])
        if options["json"]:
            self.stdout.write(json.dumps(status.to_json(), indent=2))
            return
        w = self.stdout.write
        w(f"workflow   {status.name} {status.correlation_id}")
        w(f"status     {status.status}")
        w(f"key        {status.business_key or '-'}")
        w(f"step       {status.current_step or '-'}")
        w(f"started    {status.started_at:%Y-%m-%d %H:%M:%S} by {status.started_by}")
        w(
            f"finished   {status.finished_at:%Y-%m-%d %H:%M:%S}"
            if status.finished_at
            else "finished   -"
        )
        w("history")
        for h in status.history:
            if h.kind == "event":
                w(f"  {h.at:%H:%M:%S.%f}  event  {h.name} (from {h.status})")
                continue
            outcomes = ", ".join(f"#{a['attempt']} {a['outcome']}" for a in h.attempts)
            w(f"  {h.at:%H:%M:%S.%f}  job    {h.name} {h.status} [{outcomes}]")
            if h.error:
                w(f"                          {h.error}")
        for key, value in status.states.items():
            w(f"state {key} = {json.dumps(value)}")
        if status.business_key:
            same_key = WorkflowRun.objects.filter(business_key=status.business_key).order_by(
                "-started_at"
            )
            if same_key.count() > 1:
                w(f"runs with business key {status.business_key} (newest first)")
                for run in same_key[:20]:
                    w(
                        f"  {run.correlation_id}  {run.name}  {run.status}  "
                        f"started {run.started_at:%Y-%m-%d %H:%M:%S}"
                    )

    def do_dlq(self, options: dict[str, Any]) -> None:
        for job in list_dead_letters(options["queue"], options["limit"]):
            self.stdout.write(
                f"{job.id}  {job.queue}  {job.attempts} attempt(s)  {job.dead_reason}"
            )

    def do_redrive(self, options: dict[str, Any]) -> None:
        result = redrive(options["job_id"], _payload(options), actor=options["actor"])
        self.stdout.write(f"re-driven as job {result.job_id}")

    def do_rerun(self, options: dict[str, Any]) -> None:
        new = rerun(options["id"], options["from_step"], _payload(options), actor=options["actor"])
        self.stdout.write(f"rerun started as run {new}")

    def do_discard(self, options: dict[str, Any]) -> None:
        discard(options["job_id"], actor=options["actor"])
        self.stdout.write("discarded")

    def do_decide(self, options: dict[str, Any]) -> None:
        run = get_workflow(options["id"])
        user = None
        if options["user"]:
            from django.contrib.auth import get_user_model

            try:
                user = get_user_model()._default_manager.get_by_natural_key(options["user"])
            except ObjectDoesNotExist:
                raise CommandError(f"--user: no user {options['user']!r}") from None
        actor = options["actor"]
        if user is not None and actor == DEFAULT_ACTOR:  # the audit trail names the user
            actor = str(user.get_username())
        event = decide(run.correlation_id, options["approve"], actor, options["comment"], user=user)
        verdict = "approved" if options["approve"] else "rejected"
        self.stdout.write(f"{verdict} {run.correlation_id}: emitted {event.name}")

    def do_cancel(self, options: dict[str, Any]) -> None:
        run = get_workflow(options["id"])
        done = cancel_workflow(run.correlation_id, actor=options["actor"], reason=options["reason"])
        self.stdout.write(
            f"cancelled {run.correlation_id}"
            if done
            else f"{run.correlation_id} already {run.status}"
        )

    def do_rename_queue(self, options: dict[str, Any]) -> None:
        moved = rename_queue(options["old"], options["new"], actor=options["actor"])
        self.stdout.write(
            f"moved to {options['new']}: {moved['waiting']} waiting job(s), {moved['dead']} dead "
            f"letter(s), {moved['completed']} completed step(s), {moved.get('gathers', 0)} "
            f"gathering map(s) of {moved['runs']} run(s)"
        )
        if moved["running"]:
            self.stdout.write(
                f"{moved['running']} job(s) still running on {options['old']}: run this again "
                "once they have finished"
            )

    def do_rename_event(self, options: dict[str, Any]) -> None:
        moved = rename_event(options["old"], options["new"], actor=options["actor"])
        self.stdout.write(f"{moved} open approval gate(s) now emit {options['new']}")

    def do_pause(self, options: dict[str, Any]) -> None:
        done = pause_queue(options["queue"], actor=options["actor"], reason=options["reason"])
        self.stdout.write(f"paused {options['queue']}" if done else "already paused")

    def do_resume(self, options: dict[str, Any]) -> None:
        done = resume_queue(options["queue"], actor=options["actor"])
        self.stdout.write(f"resumed {options['queue']}" if done else "not paused")

    def do_stats(self, options: dict[str, Any]) -> None:
        data = dashboard.figures(cached=False)
        if options["json"]:
            self.stdout.write(json.dumps(data.to_json(), indent=2))
            return
        w = self.stdout.write
        w("runs  " + "  ".join(f"{status} {n}" for status, n in data.runs.items()))
        header = (
            f"{'queue':<40}{'waiting':>8}{'delayed':>8}{'leased':>7}{'dead':>6}"
            f"{'oldest s':>10}{'ok/min':>8}{'fail %':>7}  state"
        )
        w(header)
        for q in data.queues:
            state = f"paused by {q.paused_by}: {q.reason}" if q.paused else "running"
            w(
                f"{q.queue:<40}{q.waiting:>8}{q.delayed:>8}{q.leased:>7}{q.dead:>6}"
                f"{q.oldest_waiting_s:>10.1f}{q.per_minute:>8.1f}{100 * q.failure_rate:>7.1f}"
                f"  {state}"
            )
        limited = [q for q in data.queues if q.limits]
        if limited:
            w("limits")
        for q in limited:
            held = f", {q.held} held by {q.held_why}" if q.held else ""
            w(f"  {q.queue}: {q.limits}; {q.in_use} running{held}")
        if data.stranded:
            w("runs in flight that this deploy no longer serves")
        for need in data.stranded:
            w(f"  {need.describe()}")
        w(f"{len(data.leases)} active lease(s) shown")
        for lease in data.leases:
            w(
                f"  {lease.job_id} {lease.queue} attempt {lease.attempt} on {lease.worker} "
                f"until {lease.expires_at:%H:%M:%S}"
                if lease.expires_at
                else f"  {lease.job_id}"
            )

    def do_graph(self, options: dict[str, Any]) -> None:
        self.stdout.write(graph.render(options["format"]), ending="")

    def do_prune(self, options: dict[str, Any]) -> None:
        try:
            total = prune_finished_runs(options["days"], options["batch_size"], options["actor"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"pruned {total} finished run(s) older than {options['days']} day(s)")

    def do_sweep(self, options: dict[str, Any]) -> None:
        sweeper = Sweeper()
        while True:
            report = sweeper.sweep(get_store())
            self.stdout.write(
                f"expired {report.expired}, published {report.published}, "
                f"settled {report.settled_idle} run(s) left open"
            )
            if not options["loop"]:
                return
            time.sleep(1)


def _payload(options: dict[str, Any]) -> Any:
    """``--payload`` read as JSON, or the job's own payload kept when it is not given."""
    if options["payload"] is None:
        return KEEP_PAYLOAD
    try:
        return json.loads(options["payload"])
    except json.JSONDecodeError as exc:
        raise CommandError(f"--payload is not valid JSON: {exc}") from exc
