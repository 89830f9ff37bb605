"""``make bench-network``: ``workflow4`` and ``jobs_io5ms`` with PostgreSQL and Redis on "another
host" - reached through delaying TCP proxies (``bench/netdelay.py``; this kernel has no
``netem``) that add a round trip of 0.5 ms and of 2 ms.

Each side has its own proxies, so their traffic is counted apart: the toolkit reaches
PostgreSQL and Redis through them (producer and worker), plain Celery reaches Redis through its
own. The bench's counter of finished work goes straight to Redis (it is the instrument, not the
work). Rounds alternate between the sides; one line per scenario and round trip::

    BENCH net_<scenario>_rtt<ms> toolkit=.. celery=.. ratio=.. rtt_added_ms=..
          toolkit_db_trips_per_step=.. toolkit_redis_trips_per_step=..
          celery_redis_trips_per_step=.. proxy_cpu_ms_per_step=toolkit:..,celery:..

``rtt_added_ms`` is measured (a Redis PING through the proxy against one straight to Redis);
``*_trips_per_step`` counts request flights per step (a job of ``jobs_io5ms`` is one step),
pipelined commands sent together counting once; the proxies' own CPU per step is stated so
that their cost on this 2-core machine is known.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG, REDIS = "127.0.0.1:5432", "127.0.0.1:6379"
#: listening ports of the proxies: the toolkit's PostgreSQL and Redis, plain Celery's Redis
PORTS = {"toolkit_db": 15432, "toolkit_redis": 16379, "celery_redis": 16479}
TARGETS = {"toolkit_db": PG, "toolkit_redis": REDIS, "celery_redis": REDIS}
TOOLKIT_ENV = {
    "BENCH_DATABASE_URL": f"postgres://postgres@127.0.0.1:{PORTS['toolkit_db']}/cw_bench",
    "BENCH_BROKER_URL": f"redis://127.0.0.1:{PORTS['toolkit_redis']}/13",
    "BENCH_COUNTER_URL": f"redis://{REDIS}/13",
}
CELERY_BROKER = f"redis://127.0.0.1:{PORTS['celery_redis']}/13"
os.environ.update(TOOLKIT_ENV)  # this process produces for the toolkit through its proxies

from bench.run import (  # noqa: E402
    WORKERS,
    celery_jobs,
    clear_ledger,
    setup,
    toolkit_jobs,
    workflows,
)


class Proxy:
    def __init__(self, name: str, rtt_ms: float) -> None:
        self.name = name
        self.stats = Path(f"/tmp/cw-netdelay-{name}.json")
        self.process = subprocess.Popen(
            [
                sys.executable, str(ROOT / "bench" / "netdelay.py"),
                "--listen", str(PORTS[name]), "--target", TARGETS[name],
                "--rtt-ms", str(rtt_ms), "--stats", str(self.stats),
            ]
        )  # fmt: skip

    def requests(self) -> int:
        self.stats.unlink(missing_ok=True)
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while not self.stats.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.01)
        return int(json.loads(self.stats.read_text())["requests"])

    def cpu_ms(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def added_rtt_ms(port: int) -> float:
    import redis

    def p50(client: redis.Redis) -> float:
        client.ping()
        times = []
        for _ in range(200):
            start = time.perf_counter()
            client.ping()
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)

    return p50(redis.Redis(port=port)) - p50(redis.Redis(port=6379))


def measured(
    run: Callable[[], float], proxies: list[Proxy], steps: int
) -> tuple[float, dict[str, float], float]:
    """``run()``'s rate; request flights per step through each of ``proxies``; their CPU per
    step."""
    before = {p.name: p.requests() for p in proxies}
    cpu = sum(p.cpu_ms() for p in proxies)
    rate = run()
    trips = {p.name: (p.requests() - before[p.name]) / steps for p in proxies}
    return rate, trips, (sum(p.cpu_ms() for p in proxies) - cpu) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=400, help="jobs per jobs_io5ms round")
    parser.add_argument("-w", type=int, default=300, help="workflows per workflow4 round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rtt", type=float, nargs="*", default=[0.5, 2.0])
    args = parser.parse_args()
    if len(args.rtt) > 1:  # one process per round trip: its connections are to its proxies
        for rtt in args.rtt:
            command = [sys.executable, __file__, "--rtt", str(rtt), "-n", str(args.n)]
            command += ["-w", str(args.w), "--rounds", str(args.rounds)]
            subprocess.run(command, check=True)
        return
    from bench.work import STEPS

    for rtt in args.rtt:
        proxies = {name: Proxy(name, rtt) for name in PORTS}
        time.sleep(1)
        setup()
        from bench import plain_app
        from bench.celery_app import QUEUES
        from celery_workflows.testing import WorkerProcess

        plain_app.app.conf.broker_url = CELERY_BROKER
        env = {"PYTHONPATH": str(ROOT), **TOOLKIT_ENV}
        workers = [
            WorkerProcess(
                "bench.celery_app", QUEUES, concurrency=WORKERS, env=env,
                log_path=f"/tmp/cw-net-toolkit-{rtt}.log",
            ).start(),
            WorkerProcess(
                "bench.plain_app", [plain_app.QUEUE], concurrency=WORKERS,
                env={**env, "BENCH_BROKER_URL": CELERY_BROKER},
                log_path=f"/tmp/cw-net-celery-{rtt}.log",
            ).start(),
        ]  # fmt: skip
        try:
            time.sleep(4)
            added = added_rtt_ms(PORTS["toolkit_redis"])
            toolkit_side = [proxies["toolkit_db"], proxies["toolkit_redis"]]
            celery_side = [proxies["celery_redis"]]
            scenarios = {
                "workflow4": (
                    args.w * STEPS,
                    lambda: workflows("toolkit", args.w)[0],
                    lambda: workflows("celery", args.w)[0],
                ),
                "jobs_io5ms": (
                    args.n,
                    lambda: toolkit_jobs(args.n, 5),
                    lambda: celery_jobs(args.n, 5),
                ),
            }
            for name, (steps, toolkit, celery) in scenarios.items():
                toolkit()  # warm both paths
                celery()
                t, c, trips_t, trips_c, cpu_t, cpu_c = [], [], [], [], [], []
                for _ in range(args.rounds):
                    rate, trips, cpu = measured(celery, celery_side, steps)
                    c.append(rate), trips_c.append(trips), cpu_c.append(cpu)
                    rate, trips, cpu = measured(toolkit, toolkit_side, steps)
                    t.append(rate), trips_t.append(trips), cpu_t.append(cpu)
                    clear_ledger()
                tm, cm = statistics.median(t), statistics.median(c)

                def med(rows: list[dict[str, float]], key: str) -> float:
                    return statistics.median(row[key] for row in rows)

                print(f"  net {name} rtt {rtt}: toolkit {[round(x) for x in t]}, "
                      f"celery {[round(x) for x in c]}")  # fmt: skip
                print(
                    f"BENCH net_{name}_rtt{rtt:g} toolkit={tm:.0f} celery={cm:.0f} "
                    f"ratio={tm / cm:.2f} rtt_added_ms={added:.2f} "
                    f"toolkit_db_trips_per_step={med(trips_t, 'toolkit_db'):.2f} "
                    f"toolkit_redis_trips_per_step={med(trips_t, 'toolkit_redis'):.2f} "
                    f"celery_redis_trips_per_step={med(trips_c, 'celery_redis'):.2f} "
                    f"proxy_cpu_ms_per_step=toolkit:{statistics.median(cpu_t):.2f},"
                    f"celery:{statistics.median(cpu_c):.2f} "
                    f"steps={steps} rounds={args.rounds} workers={WORKERS}"
                )
        finally:
            for worker in workers:
                worker.stop()
            for proxy in proxies.values():
                proxy.stop()


if __name__ == "__main__":
    main()
