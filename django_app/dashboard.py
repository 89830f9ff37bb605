"""The queue dashboard's figures: what is waiting, delayed, leased and dead per queue, how
fast each queue works and how often it fails, runs by status and the active leases.

Every query reads a partial index (queued, running or dead jobs only) or the small
per-minute table, never the whole job table, so the page stays fast with millions of finished
jobs (``make bench-admin``). The admin page, ``manage.py workflows stats`` and the JSON view
share :func:`figures`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from html import escape
from typing import Any

from django.core.cache import cache
from django.db.models import Count, Min, Q, Sum

from celery_workflows import registry
from celery_workflows.clock import utcnow
from celery_workflows.records import JobStatus, RunStatus

from .inflight import Stranded, stranded
from .models import Job, QueueControl, QueueMinute, WorkflowRun

#: the window of the throughput and failure figures
WINDOW = timedelta(hours=1)
#: run counts are cached this many seconds (counting 1M runs takes a while)
RUN_COUNTS_TTL = 30
#: active leases listed
LEASES_SHOWN = 50
#: what runs in flight need of removed declarations is cached this many seconds (it reads
#: the dead letters and the completed steps of unfinished runs)
STRANDED_TTL = 60


@dataclass(frozen=True)
class QueueFigures:
    queue: str
    waiting: int = 0
    delayed: int = 0
    leased: int = 0
    dead: int = 0
    #: seconds the oldest due job has waited (0 if none)
    oldest_waiting_s: float = 0.0
    #: successful attempts per minute over the window
    per_minute: float = 0.0
    #: failed attempts / attempts over the window (0 when idle)
    failure_rate: float = 0.0
    #: mean attempt duration over the window, in ms
    mean_ms: float = 0.0
    paused: bool = False
    paused_by: str = ""
    reason: str = ""
    failures_in_a_row: int = 0
    declared: bool = True
    #: the queue's limits in words ('' without any: :mod:`celery_workflows.limits`)
    limits: str = ""
    #: attempts holding an unexpired lease (a slot, under a concurrency cap)
    in_use: int = 0
    #: jobs a limit holds back now, and why
    held: int = 0
    held_why: str = ""


@dataclass(frozen=True)
class Lease:
    job_id: str
    queue: str
    worker: str
    attempt: int
    expires_at: datetime | None
    correlation_id: str


@dataclass(frozen=True)
class Figures:
    at: datetime
    queues: list[QueueFigures]
    runs: dict[str, int]
    leases: list[Lease]
    #: per minute of the window, oldest first: (minute, succeeded, failed)
    minutes: list[tuple[datetime, int, int]] = field(default_factory=list)
    #: queues and events that runs in flight need and this deploy no longer declares
    stranded: list[Stranded] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["at"] = self.at.isoformat()
        for lease in data["leases"]:
            lease["expires_at"] = lease["expires_at"] and lease["expires_at"].isoformat()
        data["minutes"] = [[m.isoformat(), s, f] for m, s, f in self.minutes]
        for entry, need in zip(data["stranded"], self.stranded, strict=True):
            entry["message"] = need.describe()
        return data


def run_counts() -> dict[str, int]:
    """Runs by status (cached for :data:`RUN_COUNTS_TTL` seconds)."""
    counts = cache.get("celery_workflows:run_counts")
    if counts is None:
        counts = dict(
            WorkflowRun.objects.order_by().values_list("status").annotate(n=Count("status"))
        )
        cache.set("celery_workflows:run_counts", counts, RUN_COUNTS_TTL)
    return {status.value: int(counts.get(status.value, 0)) for status in RunStatus}


def stranded_runs(cached: bool = True) -> list[Stranded]:
    """What runs in flight need of removed declarations (with ``cached``, read at most every
    :data:`STRANDED_TTL` seconds; the declarations are this process's)."""
    found = cache.get("celery_workflows:stranded") if cached else None
    if found is None:
        found = stranded()
        cache.set("celery_workflows:stranded", found, STRANDED_TTL)
    return list(found)


def figures(cached: bool = True) -> Figures:
    """The dashboard's figures; ``cached=False`` reads the slow ones (run counts aside) now."""
    now = utcnow()
    since = now - WINDOW
    rows: dict[str, dict[str, Any]] = {name: {} for name in registry.queues()}
    queued = (
        Job.objects.filter(status=JobStatus.QUEUED)
        .order_by()
        .values("queue")
        .annotate(
            waiting=Count("id", filter=Q(available_at__lte=now)),
            delayed=Count("id", filter=Q(available_at__gt=now)),
            oldest=Min("available_at", filter=Q(available_at__lte=now)),
        )
    )
    for row in queued:
        oldest = row["oldest"]
        rows.setdefault(row["queue"], {}).update(
            waiting=row["waiting"],
            delayed=row["delayed"],
            oldest_waiting_s=max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
        )
    for status, key in ((JobStatus.RUNNING, "leased"), (JobStatus.DEAD, "dead")):
        counted = (
            Job.objects.filter(status=status).order_by().values("queue").annotate(n=Count("id"))
        )
        for count in counted:
            rows.setdefault(count["queue"], {})[key] = count["n"]
    window = (
        QueueMinute.objects.filter(minute__gte=since)
        .order_by()
        .values("queue")
        .annotate(ok=Sum("succeeded"), bad=Sum("failed"), ms=Sum("duration_ms"))
    )
    for sums in window:
        ok, bad = sums["ok"] or 0, sums["bad"] or 0
        attempts = ok + bad
        rows.setdefault(sums["queue"], {}).update(
            per_minute=round(ok / (WINDOW.total_seconds() / 60), 2),
            failure_rate=round(bad / attempts, 4) if attempts else 0.0,
            mean_ms=round((sums["ms"] or 0) / attempts, 1) if attempts else 0.0,
        )
    for control in QueueControl.objects.all():
        rows.setdefault(control.queue, {}).update(
            paused=control.paused,
            paused_by=control.paused_by if control.paused else "",
            reason=control.reason if control.paused else "",
            failures_in_a_row=control.failures,
        )
    declared = registry.queues()
    _limits(rows, declared, now)
    queues = [
        QueueFigures(queue=name, declared=name in declared, **values)
        for name, values in sorted(rows.items())
    ]
    leases = [
        Lease(job_id, queue, worker, attempts, expires, correlation_id)
        for job_id, queue, worker, attempts, expires, correlation_id in Job.objects.filter(
            status=JobStatus.RUNNING
        )
        .order_by("lease_expires_at")
        .values_list("id", "queue", "worker", "attempts", "lease_expires_at", "correlation_id")[
            :LEASES_SHOWN
        ]
    ]
    per_minute: dict[datetime, list[int]] = {}
    for minute, ok, bad in (
        QueueMinute.objects.filter(minute__gte=since)
        .order_by()
        .values_list("minute")
        .annotate(ok=Sum("succeeded"), bad=Sum("failed"))
    ):
        per_minute[minute] = [ok or 0, bad or 0]
    start = since.replace(second=0, microsecond=0) + timedelta(minutes=1)
    minutes = [
        (m, *per_minute.get(m, [0, 0]))
        for m in (start + timedelta(minutes=i) for i in range(int(WINDOW.total_seconds() // 60)))
    ]
    return Figures(
        now,
        queues,
        run_counts(),
        leases,
        minutes,  # type: ignore[arg-type]
        stranded_runs(cached),
    )


def _limits(rows: dict[str, dict[str, Any]], declared: dict[str, Any], now: datetime) -> None:
    """Add to ``rows`` what the limits of the queues declared here hold back, and why."""
    limited = {name: spec.limits for name, spec in declared.items() if spec.limits is not None}
    if not limited:
        return
    names = list(limited)
    in_use = dict(
        Job.objects.filter(status=JobStatus.RUNNING, lease_expires_at__gt=now, queue__in=names)
        .order_by()
        .values_list("queue")
        .annotate(n=Count("id"))
    )
    held = dict(
        Job.objects.filter(
            status=JobStatus.QUEUED,
            published_at__isnull=True,
            available_at__lte=now,
            queue__in=[n for n in names if limited[n].caps],
        )
        .order_by()
        .values_list("queue")
        .annotate(n=Count("id"))
    )
    backlog = dict(
        QueueControl.objects.filter(queue__in=names).values_list("queue", "rate_backlog")
    )
    for name, limits in limited.items():
        row = rows.setdefault(name, {})
        row.update(limits=limits.describe(), in_use=in_use.get(name, 0))
        if held.get(name):
            full = limits.concurrency is not None and in_use.get(name, 0) >= limits.concurrency
            row.update(
                held=held[name],
                held_why="all slots in use"
                if full or limits.key is None
                else "their key's slots in use",
            )
        ahead = backlog.get(name, 0.0) - now.timestamp()
        if limits.rate is not None and ahead > 0:
            row["held"] = row.get("held", 0) + round(ahead / limits.interval)
            why = f"the rate: starts promised for the next {ahead:.1f} s"
            row["held_why"] = f"{row['held_why']}; {why}" if row.get("held_why") else why


def throughput_svg(minutes: list[tuple[datetime, int, int]], width: int = 720) -> str:
    """Attempts per minute as stacked bars (succeeded green, failed red), drawn here."""
    height, pad = 120, 24
    top = max([ok + bad for _, ok, bad in minutes] + [1])
    bar = (width - 2 * pad) / max(len(minutes), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="cw-throughput" width="{width}" '
        f'height="{height + 2 * pad}" role="img" aria-label="attempts per minute">',
        f'<text x="{pad}" y="14" font-size="11" fill="#555">attempts per minute, last hour '
        f"(max {top})</text>",
        f'<line x1="{pad}" y1="{pad + height}" x2="{width - pad}" y2="{pad + height}" '
        'stroke="#999"/>',
    ]
    for i, (minute, ok, bad) in enumerate(minutes):
        x = pad + i * bar
        ok_h = height * ok / top
        bad_h = height * bad / top
        label = escape(f"{minute:%H:%M}: {ok} succeeded, {bad} failed")
        parts.append(
            f'<g class="cw-minute" data-ok="{ok}" data-failed="{bad}"><title>{label}</title>'
            f'<rect x="{x:.1f}" y="{pad + height - ok_h:.1f}" width="{max(bar - 1, 1):.1f}" '
            f'height="{ok_h:.1f}" fill="#2e7d32"/>'
            f'<rect x="{x:.1f}" y="{pad + height - ok_h - bad_h:.1f}" '
            f'width="{max(bar - 1, 1):.1f}" height="{bad_h:.1f}" fill="#c62828"/></g>'
        )
    if minutes:
        parts.append(
            f'<text x="{pad}" y="{pad + height + 16}" font-size="10" fill="#777">'
            f"{minutes[0][0]:%H:%M}</text>"
            f'<text x="{width - pad}" y="{pad + height + 16}" font-size="10" fill="#777" '
            f'text-anchor="end">{minutes[-1][0]:%H:%M}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
