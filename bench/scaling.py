"""``make bench-scaling``: how the cost grows - workflow4 throughput and hops with 1, 2 and 4
worker processes per side and 1,000 and 10,000 workflows, toolkit and plain Celery side by side.

One round per cell (the 10k rounds take minutes); prints a Markdown table and one BENCH line
per cell.
"""

from __future__ import annotations

import sys
import time

from run import ROOT, clear_ledger, pct, setup, workflows

PROCESSES = (1, 2, 4)
SIZES = (1_000, 10_000)


def main() -> None:
    setup()
    from bench.celery_app import QUEUES
    from bench.plain_app import QUEUE
    from bench.work import counter
    from celery_workflows.testing import WorkerProcess

    counter.flushdb()
    clear_ledger()
    rows = []
    env = {"PYTHONPATH": str(ROOT)}
    for processes in PROCESSES:
        toolkit = WorkerProcess(
            "bench.celery_app", QUEUES, concurrency=processes, env=env, log_path="/tmp/cw-s-t.log"
        ).start()
        plain = WorkerProcess(
            "bench.plain_app", [QUEUE], concurrency=processes, env=env, log_path="/tmp/cw-s-c.log"
        ).start()
        try:
            time.sleep(3)
            workflows("celery", 100)
            workflows("toolkit", 100)
            for size in SIZES:
                c_rate, c_hops = workflows("celery", size, sample_every=50)
                t_rate, t_hops = workflows("toolkit", size, sample_every=50)
                clear_ledger()
                rows.append((processes, size, t_rate, c_rate, pct(t_hops, 0.99), pct(c_hops, 0.99)))
                print(
                    f"BENCH scaling_p{processes}_w{size} toolkit={t_rate:.0f} "
                    f"celery={c_rate:.0f} ratio={t_rate / c_rate:.2f} "
                    f"hop_p99_ms={pct(t_hops, 0.99):.1f} celery_hop_p99_ms={pct(c_hops, 0.99):.1f}",
                    flush=True,
                )
        finally:
            toolkit.stop()
            plain.stop()
    print(
        "\n| worker processes | workflows | toolkit steps/s | Celery steps/s | ratio | "
        "toolkit hop p99 | Celery hop p99 |"
    )
    print("|---|---|---|---|---|---|---|")
    for p, w, t, c, th, ch in rows:
        print(f"| {p} | {w:,} | {t:.0f} | {c:.0f} | {t / c:.2f} | {th:.0f} ms | {ch:.0f} ms |")


if __name__ == "__main__":
    sys.exit(main())
