"""``make bench-admin``: the admin on 1,000,000 runs and 5,000,000 jobs in PostgreSQL.

Generates the rows once with ``generate_series`` (skipped when they are already there), then
renders the run list, a status filter, a search, a run's page, the dead-letter list and the
queue dashboard (with an hour of per-minute figures for every queue) through
Django's test client, several times each, and prints the median render time and the number of
SQL queries of each. The budget is 300 ms per page.

    BENCH admin_scale toolkit=<slowest p50 ms> celery=n/a ratio=n/a budget_ms=300 ...
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.admin_settings"

QUEUES = [
    "validateInventory",
    "processPayment",
    "createShipment",
    "sendConfirmation",
    "notifyBackorder",
]
BUDGET_MS = 300


def generate(runs: int) -> None:
    from django.db import connection

    from django_app.models import Job, QueueMinute, WorkflowRun

    have = WorkflowRun.objects.count()
    if have >= runs:
        print(f"  data: {have} runs already present")
        return
    print(f"  generating {runs} runs and {runs * 5} jobs ...", flush=True)
    started = time.perf_counter()
    Job.objects.all().delete()
    WorkflowRun.objects.all().delete()
    queues = "ARRAY[" + ", ".join(f"'order.{q}'" for q in QUEUES) + "]"
    with connection.cursor() as c:
        c.execute(
            f"""INSERT INTO {WorkflowRun._meta.db_table}
            (correlation_id, name, business_key, started_by, status, started_at, finished_at,
             last_job_id, pending_jobs, dead_jobs, cancelled_jobs, compensation_jobs,
             failed_compensations, ended_by, definition_version)
            SELECT md5('run' || g), 'order', 'o-' || g, 'orderPlaced',
              CASE WHEN g %% 100 = 0 THEN 'running' WHEN g %% 50 = 1 THEN 'dead_lettered'
                   ELSE 'completed' END,
              now() - make_interval(secs => g * 2),
              CASE WHEN g %% 100 = 0 THEN NULL ELSE now() - make_interval(secs => g * 2 - 1) END,
              '', CASE WHEN g %% 100 = 0 THEN 1 ELSE 0 END,
              CASE WHEN g %% 50 = 1 THEN 1 ELSE 0 END, 0, 0, 0, '', ''
            FROM generate_series(1, %s) g""",
            [runs],
        )
        c.execute(
            f"""INSERT INTO {Job._meta.db_table}
            (id, service, queue, status, payload, result, attempts, max_attempts, priority,
             correlation_id, idempotency_key, available_at, published_at, lease_token,
             lease_expires_at, worker, started_at, finished_at, cancel_requested, dead_reason,
             attempt_log, caused_by, trace_id, redriven_from_id, compensates, created_at)
            SELECT md5('job' || j), 'order', ({queues})[s + 1],
              CASE WHEN r %% 50 = 1 AND s = 1 THEN 'dead'
                   WHEN r %% 100 = 0 AND s = 4 THEN 'queued' ELSE 'succeeded' END,
              jsonb_build_object('orderId', 'o-' || r, 'items', jsonb_build_array(
                jsonb_build_object('sku', 'book', 'qty', 1))),
              NULL, 1, 5, NULL, md5('run' || r), NULL, t, t, NULL, NULL, 'bench:1', t,
              t + interval '3 milliseconds', false,
              CASE WHEN r %% 50 = 1 AND s = 1 THEN 'non-retryable CardDeclined: card declined'
                   ELSE '' END,
              jsonb_build_array(jsonb_build_object('attempt', 1, 'outcome', 'succeeded',
                'worker', 'bench:1', 'duration_ms', 3, 'error', '', 'traceback', '',
                'started_at', t, 'finished_at', t)),
              NULL, '', NULL, NULL, t
            FROM (SELECT j, (j - 1) / 5 + 1 AS r, (j - 1) %% 5 AS s,
                         now() - make_interval(secs => ((j - 1) / 5 + 1) * 2)
                           + make_interval(secs => ((j - 1) %% 5) * 0.01) AS t
                  FROM generate_series(1, %s) j) x""",
            [runs * 5],
        )
        c.execute(
            f"""INSERT INTO {QueueMinute._meta.db_table}
            (queue, minute, succeeded, failed, dead, duration_ms)
            SELECT q, date_trunc('minute', now()) - make_interval(mins => m), 600, 6, 1, 1800
            FROM unnest({queues}) q, generate_series(0, 59) m"""
        )
    # a live ledger is kept vacuumed by autovacuum; freshly bulk-loaded rows are not yet, and
    # without a visibility map PostgreSQL cannot use the index-only scans production gets
    with connection.cursor() as c:
        for model in (WorkflowRun, Job, QueueMinute):
            c.execute(f"VACUUM ANALYZE {model._meta.db_table}")
    print(f"  generated in {time.perf_counter() - started:.0f}s", flush=True)


def measure(client, url: str, repeat: int) -> tuple[float, float, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    first = None
    times = []
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as queries:
            start = time.perf_counter()
            response = client.get(url)
            elapsed = (time.perf_counter() - start) * 1000
        assert response.status_code == 200, (url, response.status_code)
        first = elapsed if first is None else first
        times.append(elapsed)
    return first or 0.0, statistics.median(times), len(queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    from bench.run import ensure_database

    ensure_database("cw_bench_admin")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    generate(args.runs)

    from django.contrib.auth.models import User
    from django.test import Client

    from django_app.models import Job, WorkflowRun

    user = User.objects.filter(username="bench").first() or User.objects.create_superuser(
        "bench", "bench@example.com", "bench"
    )
    client = Client()
    client.force_login(user)
    dead_run = WorkflowRun.objects.filter(status="dead_lettered").order_by("-started_at").first()
    assert dead_run is not None
    pages = {
        "changelist": "/admin/celery_workflows/workflowrun/",
        "filter_status": "/admin/celery_workflows/workflowrun/?status__exact=dead_lettered",
        "filter_workflow_page5": "/admin/celery_workflows/workflowrun/?name=order&p=5",
        "search_business_key": f"/admin/celery_workflows/workflowrun/?q={dead_run.business_key}",
        "detail": f"/admin/celery_workflows/workflowrun/{dead_run.correlation_id}/change/",
        "dead_letters": "/admin/celery_workflows/deadletter/",
        "queue_dashboard": "/admin/celery_workflows/queuecontrol/",
        "status_json": f"/workflows/runs/{dead_run.business_key}.json",
    }
    worst = 0.0
    summary = []
    for name, url in pages.items():
        first, median, queries = measure(client, url, args.repeat)
        worst = max(worst, median)
        summary.append(f"{name}_ms={median:.0f}")
        print(f"  {name:<22} first {first:6.0f} ms   median {median:6.0f} ms   {queries} queries")
    runs = WorkflowRun.objects.count()
    jobs = Job.objects.count()
    print(
        f"BENCH admin_scale toolkit={worst:.0f} celery=n/a ratio=n/a budget_ms={BUDGET_MS} "
        f"runs={runs} jobs={jobs} " + " ".join(summary)
    )


if __name__ == "__main__":
    main()
