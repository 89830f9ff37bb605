"""``make bench-peers``: the toolkit beside the durable peers, on the same PostgreSQL.

Each side runs the same business work (one Redis INCR, after ``io_ms`` of "I/O") with its own
worker and two jobs at a time:

- ``toolkit``: queue workers, ``celery worker -c 2`` (as in ``make bench``);
- ``celery``: plain Celery tasks, ``celery worker -c 2`` (the reference of every BENCH line;
  it records nothing);
- ``procrastinate``: procrastinate's own worker, ``procrastinate worker -c 2`` (one asyncio
  process; its sync tasks run in threads);
- ``django_tasks_db``: a standard Django Task on django-tasks' database backend, run by two
  ``manage.py db_worker`` processes (one task at a time each; polling every 50 ms when idle);
- ``toolkit_tasks``: the same Django Task on the toolkit's Tasks backend
  (``celery_workflows.contrib.tasks``), run by the toolkit's worker;
- ``dbos`` (``workflow4`` only): a DBOS workflow of four steps on a DBOS queue, run by one
  DBOS process taking two workflows at a time (``bench/peer_dbos.py``).

Scenarios: ``jobs`` and ``jobs_io5ms`` (N jobs enqueued one by one, as in ``make bench``) and
``workflow4`` (W four-step workflows enqueued at once; procrastinate: each task defers the
next; DBOS: one workflow whose four steps are checkpointed). Rounds alternate between the
sides; medians are compared. Each scenario ends with one
line ``BENCH peers_<scenario> toolkit=.. celery=.. ratio=.. procrastinate=.. ...`` with
``peer_ratio`` (the toolkit against the fastest durable peer) and, on the jobs lines,
``tasks_ratio`` (the toolkit's Tasks backend against django-tasks' database backend). The
peers' versions are pinned in the ``peers`` extra of pyproject.toml.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ["DJANGO_SETTINGS_MODULE"] = "bench.peers_settings"

from bench.run import (  # noqa: E402
    WORKERS,
    celery_jobs,
    clear_ledger,
    cpu_ticks,
    pct,
    setup,
    toolkit_jobs,
    wait_counter,
    workflows,
)

JOB_SIDES = ("celery", "toolkit", "procrastinate", "django_tasks_db", "toolkit_tasks")
WORKFLOW_SIDES = ("celery", "toolkit", "procrastinate", "dbos")


def prepare_peers() -> None:
    """procrastinate's schema (once per database); the peers' tables emptied."""
    from django.db import connection

    from bench.peer_procrastinate import procrastinate_app

    procrastinate_app.open()
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('procrastinate_jobs')")
        if cursor.fetchone()[0] is None:
            procrastinate_app.schema_manager.apply_schema()
    clear_peers()


def clear_peers() -> None:
    from django.db import connection
    from django_tasks_db.models import DBTaskResult

    clear_ledger()
    with connection.cursor() as cursor:
        cursor.execute(
            f"TRUNCATE procrastinate_jobs, {DBTaskResult._meta.db_table} RESTART IDENTITY CASCADE"
        )
        cursor.execute("SELECT to_regclass('dbos.workflow_status')")
        if cursor.fetchone()[0] is not None:  # DBOS's worker makes its schema when it starts
            cursor.execute("TRUNCATE dbos.workflow_status CASCADE")


def procrastinate_jobs(n: int, io_ms: float) -> float:
    from bench.peer_procrastinate import procrastinate_step

    key = f"bench:{uuid.uuid4().hex}"
    start = time.perf_counter()
    for _ in range(n):
        procrastinate_step.defer(counter_key=key, io_ms=io_ms)
    wait_counter(key, n)
    return n / (time.perf_counter() - start)


def tasks_jobs(n: int, io_ms: float, backend: str) -> float:
    from bench.peer_tasks import tasks_step

    key = f"bench:{uuid.uuid4().hex}"
    target = tasks_step.using(backend=backend)
    start = time.perf_counter()
    for _ in range(n):
        target.enqueue(key, io_ms)
    wait_counter(key, n)
    return n / (time.perf_counter() - start)


def job_side(side: str, n: int, io_ms: float) -> float:
    if side == "toolkit":
        return toolkit_jobs(n, io_ms)
    if side == "celery":
        return celery_jobs(n, io_ms)
    if side == "procrastinate":
        return procrastinate_jobs(n, io_ms)
    return tasks_jobs(n, io_ms, "db" if side == "django_tasks_db" else "default")


def peer_workflows(
    w: int, start_one: Callable[[dict[str, object]], object], sample_every: int = 10
) -> tuple[float, list[float]]:
    """W workflows started by ``start_one(payload)``, all at once; steps/s and sampled hops."""
    from bench.work import STEPS, counter

    key, hops = f"bench:{uuid.uuid4().hex}", f"hops:{uuid.uuid4().hex}"
    start = time.perf_counter()
    for i in range(w):
        start_one({"counter": key, "hops": hops, "sample": i % sample_every == 0, "t": time.time()})
    wait_counter(key, w)
    rate = w * STEPS / (time.perf_counter() - start)
    return rate, [float(x) for x in counter.lrange(hops, 0, -1)]


def procrastinate_workflows(w: int) -> tuple[float, list[float]]:
    from bench.peer_procrastinate import procrastinate_wf

    return peer_workflows(w, lambda payload: procrastinate_wf.defer(k=1, payload=payload))


def dbos_workflows(w: int) -> tuple[float, list[float]]:
    from bench.peer_dbos import client, enqueue

    producer = client()
    try:
        return peer_workflows(w, lambda payload: enqueue(producer, payload))
    finally:
        producer.destroy()


def workflow_side(side: str, w: int) -> tuple[float, list[float]]:
    if side == "procrastinate":
        return procrastinate_workflows(w)
    if side == "dbos":
        return dbos_workflows(w)
    return workflows(side, w)


def machine_ms(run: Callable[[], float], n: int, spent: dict[str, float], side: str) -> float:
    """``run``, adding the CPU milliseconds the whole machine spent per job to ``spent``."""
    before = cpu_ticks()
    rate = run()
    after = cpu_ticks()
    ticks = sum(now - before[pid][1] for pid, (_, now) in after.items() if pid in before)
    spent[side] = spent.get(side, 0.0) + ticks * 1000 / os.sysconf("SC_CLK_TCK") / n
    return rate


def line(name: str, medians: dict[str, float], extra: str) -> str:
    peers = max(medians.get(side, 0.0) for side in ("procrastinate", "django_tasks_db", "dbos"))
    fields = " ".join(
        f"{side}={rate:.0f}" for side, rate in medians.items() if side not in ("toolkit", "celery")
    )
    toolkit, celery = medians["toolkit"], medians["celery"]
    return (
        f"BENCH {name} toolkit={toolkit:.0f} celery={celery:.0f} ratio={toolkit / celery:.2f} "
        f"{fields} peer_ratio={toolkit / peers:.2f} {extra}"
    )


def scenario_jobs(name: str, n: int, rounds: int, io_ms: float) -> None:
    for side in JOB_SIDES:  # warm every path
        job_side(side, 100, io_ms)
    clear_peers()
    rates: dict[str, list[float]] = {side: [] for side in JOB_SIDES}
    cpu: dict[str, float] = {}
    for _ in range(rounds):
        for side in JOB_SIDES:
            rates[side].append(
                machine_ms(lambda side=side: job_side(side, n, io_ms), n, cpu, side)  # type: ignore[misc]
            )
        clear_peers()
    medians = {side: statistics.median(values) for side, values in rates.items()}
    for side, values in rates.items():
        print(f"  peers_{name} {side}: rounds {[round(x) for x in values]} (jobs/s)")
    cpu_text = ",".join(f"{side}:{ms / rounds:.2f}" for side, ms in cpu.items())
    print(
        line(
            f"peers_{name}",
            medians,
            f"tasks_ratio={medians['toolkit_tasks'] / medians['django_tasks_db']:.2f} "
            f"cpu_ms_per_job={cpu_text} n={n} rounds={rounds} concurrency={WORKERS} "
            f"io_ms={io_ms:g}",
        )
    )


def scenario_workflow4(w: int, rounds: int) -> None:
    for side in WORKFLOW_SIDES:
        workflow_side(side, 100)
    clear_peers()
    rates: dict[str, list[float]] = {side: [] for side in WORKFLOW_SIDES}
    hops: dict[str, list[float]] = {side: [] for side in WORKFLOW_SIDES}
    for _ in range(rounds):
        for side in WORKFLOW_SIDES:
            rate, sampled = workflow_side(side, w)
            rates[side].append(rate)
            hops[side] += sampled
        clear_peers()
    medians = {side: statistics.median(values) for side, values in rates.items()}
    for side, values in rates.items():
        print(f"  peers_workflow4 {side}: rounds {[round(x) for x in values]} (steps/s)")
    hop_text = " ".join(f"{side}_hop_p50_ms={pct(hops[side], 0.5):.1f}" for side in hops)
    print(
        line(
            "peers_workflow4",
            medians,
            f"{hop_text} workflows={w} rounds={rounds} concurrency={WORKERS}",
        )
    )


def start_workers() -> list[object]:
    """Every side's worker, each with two jobs at a time."""
    from bench.celery_app import QUEUES
    from bench.peer_procrastinate import PROCRASTINATE_QUEUE
    from bench.plain_app import QUEUE
    from celery_workflows.testing import WorkerProcess

    env = {"PYTHONPATH": str(ROOT), "DJANGO_SETTINGS_MODULE": "bench.peers_settings"}
    workers: list[object] = [
        WorkerProcess(
            "bench.celery_app",
            [*QUEUES, "tasks.default"],
            concurrency=WORKERS,
            log_path="/tmp/cw-peers-toolkit.log",
            env=env,
        ).start(),
        WorkerProcess(
            "bench.plain_app",
            [QUEUE],
            concurrency=WORKERS,
            log_path="/tmp/cw-peers-celery.log",
            env={**env, "DJANGO_SETTINGS_MODULE": "bench.plain_settings"},
        ).start(),
    ]
    full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1", "BENCH_DBOS_WORKERS": str(WORKERS)}
    commands = [
        [sys.executable, "-m", "bench.peer_dbos"],
        [
            sys.executable,
            "-m",
            "procrastinate",
            "--app=bench.peer_procrastinate.procrastinate_app",
            "worker",
            "-q",
            PROCRASTINATE_QUEUE,
            "-c",
            str(WORKERS),
        ],
        *[
            [
                sys.executable,
                "-m",
                "django",
                "db_worker",
                "--backend",
                "db",
                "--queue-name",
                "default",
                "--interval",
                "0.05",
                "--no-startup-delay",
                "--worker-id",
                f"bench-{i}",
            ]
            for i in range(WORKERS)
        ],
    ]
    for i, command in enumerate(commands):
        log = open(f"/tmp/cw-peers-{i}.log", "wb")  # noqa: SIM115 - closed with the process
        workers.append(subprocess.Popen(command, env=full_env, stdout=log, stderr=log))
    return workers


def stop_workers(workers: list[object]) -> None:
    for worker in workers:
        if isinstance(worker, subprocess.Popen):
            worker.terminate()
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
        else:
            worker.stop()  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=2000, help="jobs per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-w", type=int, default=1000, help="workflows per workflow4 round")
    parser.add_argument("--only", choices=["jobs", "workflow4"], help="one scenario")
    args = parser.parse_args()
    setup()
    prepare_peers()
    from bench.work import counter

    counter.flushdb()
    workers = start_workers()
    try:
        time.sleep(4)
        if args.only in (None, "jobs"):
            scenario_jobs("jobs", args.n, args.rounds, io_ms=0)
            scenario_jobs("jobs_io5ms", args.n // 2, args.rounds, io_ms=5)
        if args.only in (None, "workflow4"):
            scenario_workflow4(args.w, args.rounds)
    finally:
        stop_workers(workers)


if __name__ == "__main__":
    main()
