"""``make bench``: the toolkit's queue workers against plain Celery tasks, side by side.

Needs Redis and PostgreSQL. One worker (2 prefork processes, the same settings for both sides)
consumes both queues; rounds alternate toolkit / plain Celery and the medians are compared, so
the shared machine's noise hits both sides alike. Each scenario ends with one line:

    BENCH <scenario> toolkit=<x> celery=<y> ratio=<x/y> ...
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")


def ensure_database(name: str = "cw_bench") -> None:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
        if not c.execute("select 1 from pg_database where datname = %s", [name]).fetchone():
            c.execute(f'create database "{name}"')


def setup() -> None:
    import django
    from django.core.management import call_command

    ensure_database()
    django.setup()
    call_command("migrate", verbosity=0)


def wait_counter(counter, key: str, n: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while int(counter.get(key) or 0) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: only {counter.get(key)} of {n} jobs done in {timeout}s")
        time.sleep(0.005)


def round_toolkit(n: int, io_ms: float = 0) -> float:
    from bench.celery_app import bench, counter

    key = f"bench:{uuid.uuid4().hex}"
    start = time.perf_counter()
    for _ in range(n):
        bench.enqueue("step", {"counter": key, "io_ms": io_ms})
    wait_counter(counter, key, n)
    return n / (time.perf_counter() - start)


def round_celery(n: int, io_ms: float = 0) -> float:
    from bench.celery_app import counter, plain_step

    key = f"bench:{uuid.uuid4().hex}"
    start = time.perf_counter()
    for _ in range(n):
        plain_step.apply_async((key, io_ms), queue="bench.plain")
    wait_counter(counter, key, n)
    return n / (time.perf_counter() - start)


def scenario_jobs(name: str, n: int, rounds: int, io_ms: float) -> None:
    from django_app.models import Job

    toolkit, celery = [], []
    round_celery(200, io_ms)  # warm both paths (connections, imports, prefork children)
    round_toolkit(200, io_ms)
    for _ in range(rounds):
        celery.append(round_celery(n, io_ms))
        toolkit.append(round_toolkit(n, io_ms))
        Job.objects.all().delete()
    t, c = statistics.median(toolkit), statistics.median(celery)
    print(
        f"  {name}: toolkit rounds {[round(x) for x in toolkit]}, "
        f"celery rounds {[round(x) for x in celery]}"
    )
    print(
        f"BENCH {name} toolkit={t:.0f} celery={c:.0f} ratio={t / c:.2f} "
        f"n={n} rounds={rounds} workers=2 io_ms={io_ms:g}"
    )


def round_workflow(side: str, w: int) -> tuple[float, list[float]]:
    from bench.celery_app import STEPS, bench, counter, plain_wf

    key, hops = f"bench:{uuid.uuid4().hex}", f"hops:{uuid.uuid4().hex}"
    start = time.perf_counter()
    for i in range(w):
        payload = {"counter": key, "hops": hops, "sample": i % 10 == 0, "t": time.time()}
        if side == "toolkit":
            bench.enqueue("wf1", payload)
        else:
            plain_wf.apply_async((1, payload), queue="bench.plain")
    wait_counter(counter, key, w)
    rate = w * STEPS / (time.perf_counter() - start)
    return rate, [float(x) for x in counter.lrange(hops, 0, -1)]


def scenario_workflow4(w: int, rounds: int) -> None:
    from django_app.models import Event, Job, WorkflowRun

    toolkit, celery, hops_t, hops_c = [], [], [], []
    round_workflow("celery", 100)
    round_workflow("toolkit", 100)
    for _ in range(rounds):
        rate, hops = round_workflow("celery", w)
        celery.append(rate)
        hops_c += hops
        rate, hops = round_workflow("toolkit", w)
        toolkit.append(rate)
        hops_t += hops
        writes = Job.objects.count(), Event.objects.count(), WorkflowRun.objects.count()
        Job.objects.all().delete()
        Event.objects.all().delete()
        WorkflowRun.objects.all().delete()
    t, c = statistics.median(toolkit), statistics.median(celery)

    def pct(values: list[float], q: float) -> float:
        values = sorted(values)
        return values[min(len(values) - 1, int(q * len(values)))]

    print(
        f"  workflow4: toolkit rounds {[round(x) for x in toolkit]}, "
        f"celery rounds {[round(x) for x in celery]}; last round wrote jobs/events/runs "
        f"{writes}; plain-celery hop p50={pct(hops_c, 0.5):.1f}ms p99={pct(hops_c, 0.99):.1f}ms"
    )
    print(
        f"BENCH workflow4 toolkit={t:.0f} celery={c:.0f} ratio={t / c:.2f} "
        f"hop_p50_ms={pct(hops_t, 0.5):.1f} hop_p99_ms={pct(hops_t, 0.99):.1f} "
        f"workflows={w} rounds={rounds} workers=2"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=2000, help="jobs per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-w", type=int, default=2000, help="workflows per workflow4 round")
    parser.add_argument("--only", choices=["jobs", "workflow4"], help="run one scenario")
    args = parser.parse_args()
    setup()
    from bench.celery_app import counter
    from celery_workflows.testing import WorkerProcess

    counter.flushdb()
    worker = WorkerProcess(
        "bench.celery_app",
        ["bench.step", "bench.plain", "bench.wf1", "bench.wf2", "bench.wf3", "bench.wf4"],
        concurrency=2,
        log_path="/tmp/cw-bench-worker.log",
        env={"PYTHONPATH": str(ROOT)},
    ).start()
    try:
        time.sleep(2)
        if args.only in (None, "jobs"):
            scenario_jobs("jobs", args.n, args.rounds, io_ms=0)
            scenario_jobs("jobs_io5ms", args.n // 2, args.rounds, io_ms=5)
        if args.only in (None, "workflow4"):
            scenario_workflow4(args.w, args.rounds)
    finally:
        worker.stop()


if __name__ == "__main__":
    main()
