"""DBOS's side of ``make bench-peers``: the workflow4 scenario as a DBOS workflow of four steps
on a DBOS queue, run by one DBOS process (``python -m bench.peer_dbos``) that takes
``WORKERS`` workflows at a time - the same two-at-a-time as every other side.

DBOS checkpoints each step's output in its system database (here the bench's PostgreSQL, schema
``dbos``) and runs a workflow's steps one after another in the process that dequeued it; the
bench enqueues with ``DBOSClient``, as a producer in another process would. The queue is polled;
its interval (``BENCH_DBOS_POLL``, 10 ms) is set well below DBOS's default of 1 s, which would
cap a two-at-a-time queue at a few workflows a second.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from dbos import DBOS, DBOSClient, DBOSConfig

from bench.work import STEPS, counter, hop, next_payload

DBOS_QUEUE = "bench"
WORKFLOW_NAME = "bench_wf"
DATABASE_URL = os.environ.get(
    "BENCH_FLOOR_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/cw_bench"
)
WORKERS = int(os.environ.get("BENCH_DBOS_WORKERS", "2"))


@DBOS.step()
def bench_step(k: int, payload: dict[str, Any]) -> dict[str, Any]:
    """One step: note the hand-over from the previous step; stamp the next."""
    hop(payload, k)
    return next_payload(payload)


@DBOS.workflow(name=WORKFLOW_NAME)
def bench_wf(payload: dict[str, Any]) -> None:
    for k in range(1, STEPS + 1):
        payload = bench_step(k, payload)
    counter.incr(payload["counter"])


def client() -> DBOSClient:
    """The producer's handle on the queue (the bench process enqueues through it)."""
    return DBOSClient(system_database_url=DATABASE_URL)


def enqueue(dbos_client: DBOSClient, payload: dict[str, Any]) -> None:
    dbos_client.enqueue({"queue_name": DBOS_QUEUE, "workflow_name": WORKFLOW_NAME}, payload)


def main() -> None:
    config: DBOSConfig = {
        "name": "cw-bench",
        "system_database_url": DATABASE_URL,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()
    DBOS.register_queue(
        DBOS_QUEUE,
        worker_concurrency=WORKERS,
        polling_interval_sec=float(os.environ.get("BENCH_DBOS_POLL", "0.01")),
        on_conflict="always_update",
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    DBOS.destroy()


if __name__ == "__main__":
    main()
