"""``make bench-processes``: one ``celery worker -c 4`` against two ``celery worker -c 2`` on
the same host, for the toolkit and for plain Celery - how to run workers for throughput.

A worker's main process does all of its broker work (taking messages, acknowledging them,
handing them to the pool) on one core; with four pool processes behind it, it is what caps
the worker. Two workers of two processes each have two main processes. For each layout and
side: ``jobs`` and ``jobs_io5ms`` as in ``make bench`` (N jobs enqueued one by one), rounds
alternating between the sides, one line each::

    BENCH processes_<layout>_<scenario> toolkit=.. celery=.. ratio=.. layout=1x4|2x2 ...
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import celery_jobs, clear_ledger, setup, toolkit_jobs  # noqa: E402

LAYOUTS = {"1x4": (1, 4), "2x2": (2, 2)}


def start(layout: str) -> list[object]:
    from bench.celery_app import QUEUES
    from bench.plain_app import QUEUE
    from celery_workflows.testing import WorkerProcess

    workers, concurrency = LAYOUTS[layout]
    env = {"PYTHONPATH": str(ROOT)}
    started = []
    for i in range(workers):
        for app, queues in (("bench.celery_app", QUEUES), ("bench.plain_app", [QUEUE])):
            started.append(
                WorkerProcess(
                    app,
                    queues,
                    concurrency=concurrency,
                    log_path=f"/tmp/cw-processes-{app.split('.')[-1]}-{layout}-{i}.log",
                    hostname=f"{app.split('.')[-1]}{i}@%h",
                    env=env,
                ).start()
            )
    return started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=3000, help="jobs per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    setup()
    for layout in LAYOUTS:
        workers = start(layout)
        try:
            time.sleep(4)
            for name, io_ms, n in (("jobs", 0.0, args.n), ("jobs_io5ms", 5.0, args.n // 2)):
                celery_jobs(200, io_ms)
                toolkit_jobs(200, io_ms)
                t, c = [], []
                for _ in range(args.rounds):
                    c.append(celery_jobs(n, io_ms))
                    t.append(toolkit_jobs(n, io_ms))
                    clear_ledger()
                tm, cm = statistics.median(t), statistics.median(c)
                rounds = f"toolkit {[round(x) for x in t]}, celery {[round(x) for x in c]}"
                print(f"  {layout} {name}: {rounds}")
                print(
                    f"BENCH processes_{layout}_{name} toolkit={tm:.0f} celery={cm:.0f} "
                    f"ratio={tm / cm:.2f} layout={layout} n={n} rounds={args.rounds} "
                    f"io_ms={io_ms:g}"
                )
        finally:
            for worker in workers:
                worker.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
