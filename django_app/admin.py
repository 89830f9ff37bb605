"""The admin: workflow runs with their timeline and diagram, and the dead-letter queues.

Built for operators and for large tables: list pages never COUNT(*) a whole table (estimates on
PostgreSQL, per-status counts cached), related data is fetched in a fixed number of queries,
and every action is a POST that checks its own permission and is recorded in the audit trail.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connection
from django.db.models import Exists, OuterRef, Q, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.functional import cached_property
from django.utils.html import format_html

from celery_workflows import (
    DecisionNotAllowedError,
    GateClosedError,
    PayloadError,
    RerunRefusedError,
    RunStatus,
    WorkflowError,
    cancel_workflow,
    decide,
    discard,
    pause_queue,
    redrive,
    registry,
    rerun,
    resume_queue,
)
from celery_workflows.approvals import Deciders, may_decide
from celery_workflows.deadletter import KEEP_PAYLOAD, compensation_started, redrive_refusal
from celery_workflows.jobs import get_job

from . import dashboard, diagram
from .disclosure import Disclosure
from .models import (
    AuditEntry,
    DeadLetter,
    Event,
    Job,
    QueueControl,
    ScheduleFire,
    StateDocument,
    WorkflowRun,
)
from .previews import preview
from .queries import workflow_status
from .subjects import admin_url, subject_of

if TYPE_CHECKING:  # generic in django-stubs, not at runtime
    _Paginator = Paginator[Any]
    _ModelAdmin = admin.ModelAdmin[Any]
else:
    _Paginator = Paginator
    _ModelAdmin = admin.ModelAdmin

BADGE_COLOURS = {
    "running": "#1565c0",
    "waiting": "#f9a825",
    "compensating": "#ef6c00",
    "completed": "#2e7d32",
    "compensated": "#6a1b9a",
    "dead_lettered": "#c62828",
    "succeeded": "#2e7d32",
    "dead": "#c62828",
    "queued": "#6d6d6d",
    "redriven": "#ef6c00",
    "cancelled": "#6d6d6d",
    "discarded": "#6d6d6d",
}


def badge(status: str) -> str:
    return format_html(
        '<span class="cw-badge" data-status="{}" style="background:{};color:#fff;'
        'padding:2px 8px;border-radius:10px;font-size:11px">{}</span>',
        status,
        BADGE_COLOURS.get(status, "#555"),
        status.replace("_", " "),
    )


#: a filtered list counts at most this many rows (shown as that many); never the whole table
COUNT_CAP = 10_000


class EstimatedCountPaginator(_Paginator):
    """Counts that stay fast on tables of millions of rows.

    Unfiltered on PostgreSQL: the planner's row estimate. Otherwise: an exact count capped at
    :data:`COUNT_CAP` (``SELECT count(*) FROM (... LIMIT cap + 1)``), so a filter matching a
    million rows costs as much as one matching ten thousand.
    """

    @cached_property
    def count(self) -> int:  # type: ignore[override]
        qs = self.object_list
        if not isinstance(qs, QuerySet):
            return super().count
        if connection.vendor == "postgresql" and not qs.query.where:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                    [qs.model._meta.db_table],
                )
                row = cursor.fetchone()
            if row and row[0] > COUNT_CAP:
                return int(row[0])
        return min(qs.order_by()[: COUNT_CAP + 1].count(), COUNT_CAP)


def declared_filter(title: str, field: str, names: Callable[[], Iterable[str]]) -> type:
    """A list filter whose choices come from the declarations, not from a DISTINCT over
    millions of rows."""

    class DeclaredFilter(admin.SimpleListFilter):
        parameter_name = field

        def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
            return [(name, name) for name in sorted(names())]

        def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
            value = self.value()
            return queryset.filter(**{field: value}) if value else queryset

    DeclaredFilter.title = title
    return DeclaredFilter


WorkflowNameFilter = declared_filter("workflow", "name", lambda: registry.services())
QueueFilter = declared_filter("queue", "queue", lambda: registry.queues())


class ReadOnlyAdmin(_ModelAdmin):
    """The ledger is written by workers and actions, never by editing rows in a form.

    Search is an exact match on ``exact_search_fields`` (ids and keys, all indexed): Django's
    ``=field`` search is case-insensitive, which no plain index serves on a million rows.
    """

    paginator = EstimatedCountPaginator
    show_full_result_count = False
    exact_search_fields: tuple[str, ...] = ()

    def get_search_fields(self, request: HttpRequest) -> tuple[str, ...]:
        return self.exact_search_fields or tuple(self.search_fields)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        term = search_term.strip()
        if not term or not self.exact_search_fields:
            return super().get_search_results(request, queryset, search_term)
        match = Q()
        for field in self.exact_search_fields:
            match |= Q(**{field: term})
        return queryset.filter(match), False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def page_context(self, request: HttpRequest, object_id: str) -> dict[str, Any]:
        """What an object's page shows besides Django's own context."""
        return {}

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: Any = None,
    ) -> HttpResponse:
        # the permission first: a 404 before it would tell an outsider which ids exist
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        extra = {**(extra_context or {}), **self.page_context(request, unquote(object_id))}
        return super().change_view(request, object_id, form_url, extra)

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        """Only what the list's own filters ask for: a field of ``list_filter`` compared with
        a plain operator. Any other lookup in a list URL (``?business_key__regex=...``, a
        costly pattern any viewer could send) is refused with 400."""
        field, _, kind = lookup.partition("__")
        filtered = {
            str(f if isinstance(f, str) else f[0])
            for f in self.list_filter
            if isinstance(f, str | tuple | list)
        }
        return field in filtered and (kind or "exact") in SAFE_LOOKUPS


#: the comparisons a list filter's URL may use (no pattern matching, no joins)
SAFE_LOOKUPS = {"exact", "gte", "gt", "lte", "lt", "isnull", "in"}


def described(gate: dict[str, Any] | None, field: str) -> str:
    """Who a gate's ``deciders`` (or ``escalate_to``) are, in words; "" if it names none."""
    named = (gate or {}).get(field)
    return Deciders.from_json(named).describe() if named else ""


def subject_link(run: WorkflowRun, request: HttpRequest) -> dict[str, Any] | None:
    """The model instance the run belongs to (:mod:`.subjects`), for a user who may view it:
    its name and admin page."""
    obj = subject_of(run)
    if obj is None:
        return None
    meta = obj._meta
    if not request.user.has_perm(f"{meta.app_label}.view_{meta.model_name}"):
        return None
    return {"label": f"{meta.verbose_name} {obj}", "url": admin_url(obj)}


def span(delta: timedelta) -> str:
    """A duration as people read it: ``340 ms``, ``2.4 s``, ``3 min 10 s``, ``2 h 5 min``,
    ``3 d 4 h``."""
    seconds = max(delta.total_seconds(), 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def short(value: str) -> str:
    """An id as lists show it: its last 8 hex digits. Ids are time-ordered UUIDs
    (:mod:`celery_workflows.ids`), so their first digits are the time they were made and are
    shared by every id of the same moment; the last ones are random."""
    return value[-8:]


@admin.register(WorkflowRun)
class WorkflowRunAdmin(ReadOnlyAdmin):
    list_display = (
        "run_id",
        "name",
        "business_key",
        "status_badge",
        "step",
        "started",
        "duration",
    )
    list_filter = ("status", WorkflowNameFilter, ("started_at", admin.DateFieldListFilter))
    exact_search_fields = ("business_key", "correlation_id")
    list_per_page = 50
    change_form_template = "admin/celery_workflows/workflowrun/change_form.html"
    change_list_template = "admin/celery_workflows/workflowrun/change_list.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[WorkflowRun]:
        latest = Job.objects.filter(correlation_id=OuterRef("pk")).order_by("-created_at")
        runs: QuerySet[WorkflowRun] = super().get_queryset(request)
        return runs.annotate(latest_step=Subquery(latest.values("queue")[:1]))

    @admin.display(description="run", ordering="correlation_id")
    def run_id(self, run: WorkflowRun) -> str:
        return short(run.correlation_id)

    @admin.display(description="status", ordering="status")
    def status_badge(self, run: WorkflowRun) -> str:
        return badge(run.status)

    @admin.display(description="started", ordering="started_at")
    def started(self, run: WorkflowRun) -> str:
        """Compact (``2026-11-30 15:20:28``, the server's time zone): the list must fit."""
        return timezone.localtime(run.started_at).strftime("%Y-%m-%d %H:%M:%S")

    @admin.display(description="duration")
    def duration(self, run: WorkflowRun) -> str:
        """How long the run took, or has been open so far."""
        if run.finished_at is not None:
            return span(run.finished_at - run.started_at)
        return f"{span(timezone.now() - run.started_at)} so far"

    @admin.display(description="current / last step")
    def step(self, run: WorkflowRun) -> str:
        return getattr(run, "latest_step", "") or ""

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        counts = dashboard.run_counts()
        extra = {"status_counts": [(s, badge(s), counts.get(s, 0)) for s in RunStatus]}
        return super().changelist_view(request, {**(extra_context or {}), **extra})

    def page_context(self, request: HttpRequest, object_id: str) -> dict[str, Any]:
        run = get_object_or_404(WorkflowRun, pk=unquote(object_id))
        status = workflow_status(run)
        last_status = {h.name: h.status for h in status.history if h.kind == "job"}
        queue_of = {h.id: h.name for h in status.history if h.kind == "job"}
        see = Disclosure.for_user(request.user)
        return {
            "run": status,
            "see": see,
            "status_badge": badge(status.status),
            "current_step": status.current_step,
            "entries": [
                {
                    "entry": h,
                    "badge": badge(h.status) if h.kind == "job" else "",
                    "data": (data := see.job_data(h.status) if h.kind == "job" else see.events),
                    # what the user may not see is not even turned into text
                    "attempts_json": preview(h.attempts) if data else None,
                    "payload_json": preview(h.payload) if data else None,
                    "result_json": preview(h.result, indent=None) if data else None,
                    "undoes": queue_of.get(h.compensates or "", ""),
                    "percent": round(100 * h.progress["fraction"]) if h.progress else None,
                }
                for h in status.history
            ],
            "diagram": diagram.render(status.started_by, last_status, status.current_step),
            "states": (
                [(key, preview(value)) for key, value in status.states.items()]
                if see.states
                else []
            ),
            "audit": status.audit if see.audit else [],
            "can_redrive": request.user.has_perm("celery_workflows.redrive_job"),
            "redrive_refused": compensation_started(status),
            "gate": status.waiting_for,
            "gate_payload": preview(
                (status.waiting_for or {}).get("payload") if see.gate_payload else None
            ),
            # the gate's times as datetimes, shown like every other time of the page
            **{
                f"gate_{name}": parse_datetime(str((status.waiting_for or {}).get(key) or ""))
                for name, key in (
                    ("opened", "opened_at"),
                    ("expires", "expires_at"),
                    ("escalated", "escalated_at"),
                )
            },
            "can_decide": (
                request.user.has_perm("celery_workflows.decide_workflowrun")
                and may_decide(status.waiting_for or {}, request.user)
            ),
            "deciders": described(status.waiting_for, "deciders"),
            "escalates_to": described(status.waiting_for, "escalate_to"),
            "can_cancel": (
                status.finished_at is None
                and status.status != RunStatus.COMPENSATING
                and not status.ended_by
                and request.user.has_perm("celery_workflows.cancel_workflowrun")
            ),
            "can_rerun": (
                RunStatus(status.status).is_final
                and request.user.has_perm("celery_workflows.rerun_workflowrun")
            ),
            "subject": subject_link(run, request),
        }

    def get_urls(self) -> list[Any]:
        return [
            path(
                "<str:object_id>/decide/",
                self.admin_site.admin_view(self.decide_view),
                name="celery_workflows_workflowrun_decide",
            ),
            path(
                "<str:object_id>/cancel/",
                self.admin_site.admin_view(self.cancel_view),
                name="celery_workflows_workflowrun_cancel",
            ),
            path(
                "<str:object_id>/rerun/",
                self.admin_site.admin_view(self.rerun_view),
                name="celery_workflows_workflowrun_rerun",
            ),
            *super().get_urls(),
        ]

    def decide_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Approve or reject a waiting run: emits the gate's event, audited, once."""
        if request.method != "POST":
            return HttpResponse(status=405)
        if not request.user.has_perm("celery_workflows.decide_workflowrun"):
            raise PermissionDenied
        run = get_object_or_404(WorkflowRun, pk=unquote(object_id))
        approve = request.POST.get("decision") == "approve"
        try:
            event = decide(
                run.correlation_id,
                approve,
                request.user.get_username(),
                request.POST.get("comment", "")[:500],
                user=request.user,
            )
        except GateClosedError as exc:
            self.message_user(request, str(exc), messages.WARNING)
        except DecisionNotAllowedError as exc:
            raise PermissionDenied(str(exc)) from exc
        else:
            self.message_user(
                request,
                f"{'Approved' if approve else 'Rejected'}: emitted {event.name}.",
                messages.SUCCESS,
            )
        return HttpResponseRedirect(
            reverse("admin:celery_workflows_workflowrun_change", args=[quote(run.correlation_id)])
        )

    def rerun_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Start a new run of a finished one from a step, its payload kept or edited; the
        earlier steps' results are copied, not run again (:mod:`celery_workflows.reruns`)."""
        if request.method != "POST":
            return HttpResponse(status=405)
        if not request.user.has_perm("celery_workflows.rerun_workflowrun"):
            raise PermissionDenied
        run = get_object_or_404(WorkflowRun, pk=unquote(object_id))
        back = reverse(
            "admin:celery_workflows_workflowrun_change", args=[quote(run.correlation_id)]
        )
        payload: Any = KEEP_PAYLOAD
        text = request.POST.get("payload", "").strip()
        if text:
            try:
                payload = json.loads(text)
            except json.JSONDecodeError as exc:
                self.message_user(request, f"Payload is not valid JSON: {exc}", messages.ERROR)
                return HttpResponseRedirect(back)
        try:
            new = rerun(
                run.correlation_id,
                request.POST.get("from_job", ""),
                payload,
                actor=request.user.get_username(),
            )
        except (RerunRefusedError, PayloadError) as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return HttpResponseRedirect(back)
        self.message_user(request, f"Rerun started as run {new}.", messages.SUCCESS)
        return HttpResponseRedirect(
            reverse("admin:celery_workflows_workflowrun_change", args=[quote(new)])
        )

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Cancel an unfinished run: queued steps are cancelled, completed ones undone."""
        if request.method != "POST":
            return HttpResponse(status=405)
        if not request.user.has_perm("celery_workflows.cancel_workflowrun"):
            raise PermissionDenied
        run = get_object_or_404(WorkflowRun, pk=unquote(object_id))
        actor = request.user.get_username()
        reason = request.POST.get("reason", "")[:200] or f"cancelled by {actor} in the admin"
        if cancel_workflow(run.correlation_id, actor=actor, reason=reason):
            self.message_user(request, "Cancelled: its completed steps are being undone.")
        else:
            self.message_user(request, "The run had already finished or stopped.", messages.WARNING)
        return HttpResponseRedirect(
            reverse("admin:celery_workflows_workflowrun_change", args=[quote(run.correlation_id)])
        )


class RedriveForm(forms.Form):
    #: left empty, the dead job's payload is kept as it is (what the run page posts for a
    #: payload too large to send back)
    payload = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 12, "cols": 80}), required=False, strip=True
    )

    def clean_payload(self) -> Any:
        text = self.cleaned_data["payload"]
        if not text:
            return KEEP_PAYLOAD
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"not valid JSON: {exc}") from exc


@admin.register(DeadLetter)
class DeadLetterAdmin(ReadOnlyAdmin):
    list_display = ("job_id", "queue", "error_summary", "attempts", "finished_at", "run_link")
    list_filter = (QueueFilter,)
    exact_search_fields = ("id", "correlation_id")
    actions = ("redrive_selected", "discard_selected")
    change_form_template = "admin/celery_workflows/deadletter/change_form.html"
    readonly_fields = (
        "id",
        "queue",
        "correlation_id",
        "dead_reason",
        "attempts",
        "max_attempts",
        "created_at",
        "finished_at",
        "worker",
        "payload_pretty",
        "attempts_pretty",
    )
    fields = readonly_fields

    def has_redrive_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("celery_workflows.redrive_job")

    def has_discard_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("celery_workflows.discard_job")

    @admin.display(description="job")
    def job_id(self, job: Job) -> str:
        return short(job.id)

    @admin.display(description="error")
    def error_summary(self, job: Job) -> str:
        return (job.dead_reason[:117] + "...") if len(job.dead_reason) > 120 else job.dead_reason

    def get_queryset(self, request: HttpRequest) -> QuerySet[DeadLetter]:
        runs = WorkflowRun.objects.filter(correlation_id=OuterRef("correlation_id"))
        dead: QuerySet[DeadLetter] = super().get_queryset(request)
        return dead.annotate(has_run=Exists(runs))

    @admin.display(description="workflow")
    def run_link(self, job: Job) -> str:
        if not getattr(job, "has_run", True):
            return "-"  # an unroutable message: it never belonged to a workflow
        url = reverse("admin:celery_workflows_workflowrun_change", args=[quote(job.correlation_id)])
        return format_html('<a href="{}">{}</a>', url, short(job.correlation_id))

    @admin.display(description="payload")
    def payload_pretty(self, job: Job) -> str:
        return format_html("<pre>{}</pre>", json.dumps(job.payload, indent=2))

    @admin.display(description="attempts")
    def attempts_pretty(self, job: Job) -> str:
        return format_html("<pre>{}</pre>", json.dumps(job.attempt_log, indent=2))

    @admin.action(description="Re-drive selected dead letters", permissions=["redrive"])
    def redrive_selected(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        done, refused = 0, []
        for job in queryset:
            try:
                redrive(job.id, actor=request.user.get_username())
                done += 1
            except (PayloadError, WorkflowError) as exc:
                refused.append(f"{short(job.id)}: {exc}")
        self.message_user(request, f"Re-drove {done} dead letter(s).", messages.SUCCESS)
        if refused:
            shown = "; ".join(refused[:5]) + (" ..." if len(refused) > 5 else "")
            self.message_user(request, f"Not re-driven ({len(refused)}): {shown}", messages.WARNING)

    @admin.action(description="Discard selected dead letters", permissions=["discard"])
    def discard_selected(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        jobs = list(queryset)
        for job in jobs:
            discard(job.id, actor=request.user.get_username())
        self.message_user(request, f"Discarded {len(jobs)} dead letter(s).", messages.SUCCESS)

    def get_urls(self) -> list[Any]:
        return [
            path(
                "<str:object_id>/redrive/",
                self.admin_site.admin_view(self.redrive_view),
                name="celery_workflows_deadletter_redrive",
            ),
            path(
                "<str:object_id>/discard/",
                self.admin_site.admin_view(self.discard_view),
                name="celery_workflows_deadletter_discard",
            ),
            *super().get_urls(),
        ]

    def page_context(self, request: HttpRequest, object_id: str) -> dict[str, Any]:
        job = get_object_or_404(DeadLetter, pk=object_id)
        refusal = redrive_refusal(get_job(job.id))
        return {
            "redrive_refused": refusal,
            "can_redrive": self.has_redrive_permission(request) and not refusal,
            "can_discard": self.has_discard_permission(request),
            "redrive_form": RedriveForm(initial={"payload": json.dumps(job.payload, indent=2)}),
        }

    def redrive_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if request.method != "POST":
            return HttpResponse(status=405)
        if not self.has_redrive_permission(request):
            raise PermissionDenied
        job = get_object_or_404(DeadLetter, pk=object_id)
        form = RedriveForm(request.POST)
        back = reverse("admin:celery_workflows_deadletter_change", args=[job.id])
        if not form.is_valid():
            self.message_user(
                request, f"Not re-driven: {form.errors['payload'][0]}", messages.ERROR
            )
            return HttpResponseRedirect(back)
        payload = form.cleaned_data["payload"]
        edited = payload is not KEEP_PAYLOAD and payload != job.payload
        try:
            new_id = redrive(
                job.id, payload if edited else KEEP_PAYLOAD, actor=request.user.get_username()
            ).job_id
        except (PayloadError, WorkflowError) as exc:
            self.message_user(request, f"Not re-driven: {exc}", messages.ERROR)
            return HttpResponseRedirect(back)
        note = " with the edited payload" if edited else ""
        self.message_user(request, f"Re-drove as job {short(new_id)}{note}.", messages.SUCCESS)
        return HttpResponseRedirect(
            reverse("admin:celery_workflows_workflowrun_change", args=[quote(job.correlation_id)])
        )

    def discard_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if request.method != "POST":
            return HttpResponse(status=405)
        if not self.has_discard_permission(request):
            raise PermissionDenied
        job = get_object_or_404(DeadLetter, pk=object_id)
        try:
            discard(job.id, actor=request.user.get_username())
        except WorkflowError as exc:
            self.message_user(request, f"Not discarded: {exc}", messages.ERROR)
        else:
            self.message_user(request, f"Discarded dead letter {short(job.id)}.", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:celery_workflows_deadletter_changelist"))


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    list_display = ("job_id", "queue", "status_badge", "attempts", "created_at", "finished_at")
    list_filter = ("status", QueueFilter)
    exact_search_fields = ("id", "correlation_id")

    @admin.display(description="job")
    def job_id(self, job: Job) -> str:
        return short(job.id)

    @admin.display(description="status", ordering="status")
    def status_badge(self, job: Job) -> str:
        return badge(job.status)


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ("name", "source", "correlation_id", "emitted_at")
    exact_search_fields = ("id", "correlation_id")


@admin.register(StateDocument)
class StateDocumentAdmin(ReadOnlyAdmin):
    """Documents steps keep: a run's own (its correlation id as scope) or shared (no scope)."""

    list_display = ("key", "scope_or_shared", "version", "written_by", "updated_at")
    exact_search_fields = ("key", "scope", "written_by")

    @admin.display(description="scope", ordering="scope")
    def scope_or_shared(self, document: StateDocument) -> str:
        return document.scope or "shared"


@admin.register(ScheduleFire)
class ScheduleFireAdmin(ReadOnlyAdmin):
    """Every firing of a declared schedule: did last night's run happen, and what did it start?"""

    list_display = ("schedule", "slot", "outcome_badge", "reason", "run_link", "fired_at")
    list_filter = (declared_filter("schedule", "schedule", registry.schedules), "outcome")
    exact_search_fields = ("schedule", "correlation_id")
    change_list_template = "admin/celery_workflows/schedulefire/change_list.html"

    @admin.display(description="outcome", ordering="outcome")
    def outcome_badge(self, fire: ScheduleFire) -> str:
        colour = {"started": "completed", "replaced": "compensated"}.get(fire.outcome, "queued")
        return format_html(
            '<span class="cw-badge" data-status="{}" style="background:{};color:#fff;'
            'padding:2px 8px;border-radius:10px;font-size:11px">{}</span>',
            fire.outcome,
            BADGE_COLOURS[colour],
            fire.outcome,
        )

    @admin.display(description="workflow")
    def run_link(self, fire: ScheduleFire) -> str:
        if not fire.correlation_id:
            return "-"
        url = reverse(
            "admin:celery_workflows_workflowrun_change", args=[quote(fire.correlation_id)]
        )
        return format_html('<a href="{}">{}</a>', url, short(fire.correlation_id))

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        declared = [
            {
                "name": name,
                "when": spec.cron or f"every {spec.every}",
                "timezone": spec.timezone,
                "target": f"emit {spec.emit}" if spec.emit else f"enqueue {spec.enqueue}",
                "policies": f"concurrency {spec.concurrency}, missed {spec.missed}",
                "last": ScheduleFire.objects.filter(schedule=name).order_by("-slot").first(),
            }
            for name, spec in sorted(registry.schedules().items())
        ]
        return super().changelist_view(request, {**(extra_context or {}), "declared": declared})


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = ("at", "action", "actor", "correlation_id", "job_id")
    list_filter = ("action",)
    exact_search_fields = ("correlation_id", "job_id", "actor")


@admin.register(QueueControl)
class QueueDashboardAdmin(ReadOnlyAdmin):
    """The queue dashboard: one row per queue (waiting, delayed, leased, dead, oldest waiting,
    throughput, failure rate, paused), runs by status, a chart and the active leases. Pausing
    and resuming need the ``pause_queue`` permission and are audited."""

    change_list_template = "admin/celery_workflows/queuecontrol/dashboard.html"

    def has_pause_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("celery_workflows.pause_queue"))

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        data = dashboard.figures()
        context = {
            **self.admin_site.each_context(request),
            "title": "Queues",
            "opts": self.model._meta,
            "figures": data,
            "runs": [(status, badge(status), n) for status, n in data.runs.items()],
            "chart": dashboard.throughput_svg(data.minutes),
            "can_pause": self.has_pause_permission(request),
            **(extra_context or {}),
        }
        return TemplateResponse(request, self.change_list_template, context)

    def get_urls(self) -> list[Any]:
        return [
            path(
                "<str:queue>/<str:action>/",
                self.admin_site.admin_view(self.pause_view),
                name="celery_workflows_queuecontrol_pause",
            ),
            *super().get_urls(),
        ]

    def pause_view(self, request: HttpRequest, queue: str, action: str) -> HttpResponse:
        """Pause or resume one queue (POST), audited with the operator's name."""
        if request.method != "POST" or action not in ("pause", "resume"):
            return HttpResponse(status=405)
        if not self.has_pause_permission(request):
            raise PermissionDenied
        actor = request.user.get_username()
        try:
            if action == "pause":
                reason = request.POST.get("reason", "")[:200] or "paused in the admin"
                done = pause_queue(queue, actor=actor, reason=reason)
            else:
                done = resume_queue(queue, actor=actor)
        except WorkflowError as exc:
            self.message_user(request, str(exc), messages.ERROR)
        else:
            verb = "Paused" if action == "pause" else "Resumed"
            if done:
                self.message_user(request, f"{verb} {queue}.", messages.SUCCESS)
            else:
                self.message_user(request, f"{queue} was already {verb.lower()}.", messages.INFO)
        return HttpResponseRedirect(reverse("admin:celery_workflows_queuecontrol_changelist"))
