"""``make bench``: the toolkit's queue workers against plain Celery tasks, side by side.

Needs Redis and PostgreSQL. Each side has its own worker (2 prefork processes, the same
settings; the plain side's project does not install celery-workflows), consuming only its
own queues. Rounds alternate toolkit / plain Celery and the medians are compared, so the shared
machine's noise hits both sides alike. Each scenario ends with one line:

    BENCH <scenario> toolkit=<x> celery=<y> ratio=<x/y> ...

- ``jobs``, ``jobs_io5ms``: N independent jobs enqueued one by one (``enqueue()`` vs
  ``apply_async()``), each one Redis INCR (after 5 ms of "I/O");
- ``jobs_batch``: the same N jobs, enqueued with ``enqueue_many()`` (plain Celery: a loop of
  ``apply_async()``, which is what Celery offers for independent tasks);
- on the ``jobs`` and ``jobs_io5ms`` lines, ``floor``: the same jobs through the floor
  (:mod:`bench.floor_app`: the toolkit's statements and messages with none of its code), and
  ``floor_ratio`` = toolkit / floor - the share of what the statements allow that the toolkit
  reaches;
- on the ``jobs*`` lines, ``cpu_ms_per_job``: the CPU time the whole machine's processes spent
  per job during the rounds (producer, worker, PostgreSQL, Redis; from ``/proc``), and where it
  went - on a 2-core machine the rate is bound by it as much as by round trips;
- ``limits``: two worker processes of 4 pool processes each (8 in all) run N jobs of 20 ms
  "I/O" on a queue with ``Limits(concurrency=4)`` and N jobs of no work on one with
  ``Limits(rate="100/s")``; the line gives the largest concurrency and the most starts in any
  second seen (both must equal the limit, never exceed it), the capped throughput against
  the ideal (4 / 20 ms = 200/s), the same jobs on an unlimited queue (``unlimited``) and on
  plain Celery's 8 processes (``celery``: Celery has no global cap);
- ``fanout``: one step maps N do-nothing branches (``ctx.map``) gathered into one step, against
  a plain Celery ``chord`` of N tasks with the Redis result backend (which counts the header's
  results natively), in branches/s; ``gather_hop`` is the time from the last branch's end to the
  gathering step's start; ``join_hop`` the same for a join of two events
  (``service.join``; plain Celery: a chord of two), one at a time on idle workers;
- ``workflow4``: W four-step workflows, linked by events and subscriptions (plain Celery: by
  ``apply_async()`` at the end of each step), all enqueued at once - a backlog. ``hop`` is the
  time from one step's hand-over to the next step's start (steps 2-4), sampled on 10 % of the
  workflows; ``hop_idle`` the same with one workflow at a time on idle workers; ``rss_mb`` the
  largest worker pool process's resident memory after the rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

WORKERS = 2


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


def clear_ledger() -> None:
    """Empty the ledger between rounds. TRUNCATE, not DELETE: this machine's PostgreSQL runs
    with autovacuum off, and a million deleted rows left behind would slow every later round
    (index scans over dead entries) as no production ledger, vacuumed as usual, would be."""
    from django.db import connection

    from django_app.models import Event, Gather, Job, WorkflowRun

    # a round ends when the last step's handler has counted, a moment before its outcome is
    # written: let those outcomes land first (emptied under them, they would be rejected)
    deadline = time.monotonic() + 10
    while Job.objects.filter(status="running").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    tables = ", ".join(model._meta.db_table for model in (Job, Event, WorkflowRun, Gather))
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {tables}")


def wait_counter(key: str, n: int, timeout: float = 600) -> None:
    from bench.work import counter

    deadline = time.monotonic() + timeout
    while int(counter.get(key) or 0) < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: only {counter.get(key)} of {n} done in {timeout}s")
        time.sleep(0.001)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


# -- sides ---------------------------------------------------------------------------------


def toolkit_jobs(n: int, io_ms: float, batch: bool = False) -> float:
    from bench.celery_app import bench

    key = f"bench:{uuid.uuid4().hex}"
    start = time.perf_counter()
    payload = {"counter": key, "io_ms": io_ms}
    if batch:
        for chunk in range(0, n, 500):
            bench.enqueue_many("step", [payload] * min(500, n - chunk))
    else:
        for _ in range(n):
            bench.enqueue("step", payload)
    wait_counter(key, n)
    return n / (time.perf_counter() - start)


def celery_jobs(n: int, io_ms: float, batch: bool = False) -> float:
    from bench.plain_app import QUEUE, plain_step

    key = f"bench:{uuid.uuid4().hex}"
    start = time.perf_counter()
    for _ in range(n):
        plain_step.apply_async((key, io_ms), queue=QUEUE)
    wait_counter(key, n)
    return n / (time.perf_counter() - start)


def floor_jobs(n: int, io_ms: float) -> float:
    from bench import floor_app

    key = f"bench:{uuid.uuid4().hex}"
    start = time.perf_counter()
    for _ in range(n):
        floor_app.enqueue({"counter": key, "io_ms": io_ms})
    wait_counter(key, n)
    return n / (time.perf_counter() - start)


def start_workflow(side: str, payload: dict[str, object]) -> None:
    if side == "toolkit":
        from bench.celery_app import bench

        bench.enqueue("wf1", payload)
    else:
        from bench.plain_app import QUEUE, plain_wf

        plain_wf.apply_async((1, payload), queue=QUEUE)


def workflows(side: str, w: int, sample_every: int = 10) -> tuple[float, list[float]]:
    """W workflows enqueued at once; steps/s and the sampled hops."""
    from bench.work import STEPS, counter

    key, hops = f"bench:{uuid.uuid4().hex}", f"hops:{uuid.uuid4().hex}"
    start = time.perf_counter()
    for i in range(w):
        sample = i % sample_every == 0
        start_workflow(side, {"counter": key, "hops": hops, "sample": sample, "t": time.time()})
    wait_counter(key, w)
    rate = w * STEPS / (time.perf_counter() - start)
    return rate, [float(x) for x in counter.lrange(hops, 0, -1)]


def idle_hops(side: str, count: int) -> list[float]:
    """One workflow at a time on idle workers."""
    from bench.work import counter

    key, hops = f"bench:{uuid.uuid4().hex}", f"hops:{uuid.uuid4().hex}"
    for i in range(count):
        start_workflow(side, {"counter": key, "hops": hops, "sample": True, "t": time.time()})
        wait_counter(key, i + 1)
        time.sleep(0.02)  # idle again
    return [float(x) for x in counter.lrange(hops, 0, -1)]


def cpu_ticks() -> dict[str, tuple[str, int]]:
    """Every process's command line and CPU time (user + system, in clock ticks) from /proc."""
    ticks: dict[str, tuple[str, int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks[proc.name] = (cmd, int(fields[11]) + int(fields[12]))
    return ticks


def cpu_share(before: dict[str, tuple[str, int]], worker_pid: int) -> Counter[str]:
    """CPU ticks spent since ``before``, by role: this producer, the side's worker (its main
    process and pool), PostgreSQL, Redis and anything else on the machine."""
    spent: Counter[str] = Counter()
    for pid, (cmd, now) in cpu_ticks().items():
        if pid not in before:
            continue
        if pid == str(os.getpid()):
            role = "producer"
        elif pid == str(worker_pid) or f"ppid:{worker_pid}" == _parent(pid):
            role = "worker"
        elif cmd.startswith("postgres"):
            role = "postgres"
        elif "redis-server" in cmd:
            role = "redis"
        else:
            role = "other"
        spent[role] += now - before[pid][1]
    return spent


def _parent(pid: str) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return "ppid:" + stat[stat.rindex(")") + 2 :].split()[1]


def child_rss_mb(worker_pid: int) -> float:
    """The largest resident set among a worker's pool processes, in MB."""
    sizes = []
    children = Path(f"/proc/{worker_pid}/task/{worker_pid}/children").read_text().split()
    for child in children:
        for line in Path(f"/proc/{child}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                sizes.append(int(line.split()[1]) / 1024)
    return max(sizes) if sizes else float("nan")


# -- scenarios -----------------------------------------------------------------------------


def alternate(
    rounds: int,
    toolkit: Callable[[], float],
    celery: Callable[[], float],
    floor: Callable[[], float] | None = None,
) -> tuple[list[float], list[float], list[float]]:
    t, c, f = [], [], []
    for _ in range(rounds):
        c.append(celery())
        t.append(toolkit())
        if floor is not None:
            f.append(floor())
        clear_ledger()
    return t, c, f


def with_cpu(run: Callable[[], float], worker_pid: int, spent: Counter[str]) -> Callable[[], float]:
    """``run``, adding the machine's CPU ticks it took, by role, to ``spent``."""

    def measured() -> float:
        before = cpu_ticks()
        rate = run()
        spent.update(cpu_share(before, worker_pid))
        return rate

    return measured


def per_job_ms(spent: Counter[str], jobs: int) -> str:
    """Ticks by role as milliseconds of CPU per job: ``total/worker/producer/postgres/...``."""
    ms = {role: ticks * 1000 / os.sysconf("SC_CLK_TCK") / jobs for role, ticks in spent.items()}
    roles = ("worker", "producer", "postgres", "redis", "other")
    return f"{sum(ms.values()):.2f}(" + "/".join(f"{ms.get(r, 0):.2f}" for r in roles) + ")"


def scenario_jobs(
    name: str, n: int, rounds: int, io_ms: float, pids: dict[str, int], batch: bool = False
) -> None:
    celery_jobs(200, io_ms)  # warm every path (connections, imports, pool processes)
    toolkit_jobs(200, io_ms, batch)
    if not batch:
        floor_jobs(200, io_ms)
    cpu_t: Counter[str] = Counter()
    cpu_c: Counter[str] = Counter()
    cpu_f: Counter[str] = Counter()
    t, c, f = alternate(
        rounds,
        with_cpu(lambda: toolkit_jobs(n, io_ms, batch), pids["toolkit"], cpu_t),
        with_cpu(lambda: celery_jobs(n, io_ms, batch), pids["celery"], cpu_c),
        None if batch else with_cpu(lambda: floor_jobs(n, io_ms), pids["floor"], cpu_f),
    )
    tm, cm = statistics.median(t), statistics.median(c)
    print(
        f"  {name}: toolkit rounds {[round(x) for x in t]}, celery rounds {[round(x) for x in c]}"
        + (f", floor rounds {[round(x) for x in f]}" if f else "")
    )
    floor = ""
    if f:
        fm = statistics.median(f)
        floor = (
            f"floor={fm:.0f} floor_ratio={tm / fm:.2f} "
            f"floor_cpu_ms_per_job={per_job_ms(cpu_f, n * rounds)} "
        )
    print(
        f"BENCH {name} toolkit={tm:.0f} celery={cm:.0f} ratio={tm / cm:.2f} {floor}"
        f"cpu_ms_per_job={per_job_ms(cpu_t, n * rounds)} "
        f"celery_cpu_ms_per_job={per_job_ms(cpu_c, n * rounds)} "
        f"n={n} rounds={rounds} workers={WORKERS} io_ms={io_ms:g}"
    )


def scenario_workflow4(w: int, rounds: int, idle: int, pids: dict[str, int]) -> None:
    workflows("celery", 100)
    workflows("toolkit", 100)
    t, c, hops_t, hops_c = [], [], [], []
    for _ in range(rounds):
        rate, hops = workflows("celery", w)
        c.append(rate)
        hops_c += hops
        rate, hops = workflows("toolkit", w)
        t.append(rate)
        hops_t += hops
        clear_ledger()
    idle_c = idle_hops("celery", idle)
    idle_t = idle_hops("toolkit", idle)
    clear_ledger()
    tm, cm = statistics.median(t), statistics.median(c)
    print(
        f"  workflow4: toolkit rounds {[round(x) for x in t]}, celery rounds "
        f"{[round(x) for x in c]} (steps/s)"
    )
    print(
        f"BENCH workflow4 toolkit={tm:.0f} celery={cm:.0f} ratio={tm / cm:.2f} "
        f"hop_p50_ms={pct(hops_t, 0.5):.1f} hop_p99_ms={pct(hops_t, 0.99):.1f} "
        f"celery_hop_p50_ms={pct(hops_c, 0.5):.1f} celery_hop_p99_ms={pct(hops_c, 0.99):.1f} "
        f"hop_idle_p50_ms={pct(idle_t, 0.5):.2f} hop_idle_p99_ms={pct(idle_t, 0.99):.2f} "
        f"celery_hop_idle_p50_ms={pct(idle_c, 0.5):.2f} "
        f"celery_hop_idle_p99_ms={pct(idle_c, 0.99):.2f} "
        f"rss_mb={child_rss_mb(pids['toolkit']):.1f} "
        f"celery_rss_mb={child_rss_mb(pids['celery']):.1f} "
        f"workflows={w} rounds={rounds} workers={WORKERS}"
    )


def most_at_once(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    now = best = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


def most_starts_per_second(spans: list[tuple[float, float]]) -> int:
    """The most starts in any window [t, t + 1 s)."""
    starts = sorted(a for a, _ in spans)
    best, first = 0, 0
    for last, t in enumerate(starts):
        while starts[first] <= t - 1.0:
            first += 1
        best = max(best, last - first + 1)
    return best


def limited_round(queue: str, n: int, io_ms: float) -> tuple[float, list[tuple[float, float]]]:
    """N jobs on ``queue`` (a toolkit queue, or plain Celery's); rate and spans."""
    from bench.work import counter

    key, spans = f"bench:{uuid.uuid4().hex}", f"spans:{uuid.uuid4().hex}"
    payload = {"counter": key, "spans": spans, "io_ms": io_ms}
    start = time.perf_counter()
    if queue == "plain":
        from bench.plain_app import LIMITS_QUEUE, plain_timed

        for _ in range(n):
            plain_timed.apply_async((payload,), queue=LIMITS_QUEUE)
    else:
        from bench.celery_app import bench

        for chunk in range(0, n, 500):
            bench.enqueue_many(queue, [payload] * min(500, n - chunk))
    wait_counter(key, n)
    rate = n / (time.perf_counter() - start)
    pairs = [x.decode().split(",") for x in counter.lrange(spans, 0, -1)]
    return rate, [(float(a), float(b)) for a, b in pairs]


def scenario_limits(n: int, rounds: int) -> None:
    from bench.celery_app import LIMIT_CAP, LIMIT_RATE, LIMITED_QUEUES
    from bench.plain_app import LIMITS_QUEUE
    from celery_workflows.testing import WorkerProcess

    env = {"PYTHONPATH": str(ROOT)}
    workers = [
        WorkerProcess(app, queues, concurrency=4, log_path=f"/tmp/cw-bench-{name}{i}.log", env=env)
        for i in (0, 1)
        for app, queues, name in (
            ("bench.celery_app", LIMITED_QUEUES, "limits"),
            ("bench.plain_app", [LIMITS_QUEUE], "plain-limits"),
        )
    ]
    for worker in workers:
        worker.start()
    try:
        time.sleep(3)
        io_ms = 20.0
        for queue in ("plain", "free", "capped"):
            limited_round(queue, 100, io_ms)  # warm up
        free, capped, plain, concurrency, paced, per_second = [], [], [], [], [], []
        for _ in range(rounds):
            plain.append(limited_round("plain", n, io_ms)[0])
            free.append(limited_round("free", n, io_ms)[0])
            rate, spans = limited_round("capped", n, io_ms)
            capped.append(rate)
            concurrency.append(most_at_once(spans))
            rate, spans = limited_round("paced", n, 0)
            paced.append(rate)
            per_second.append(most_starts_per_second(spans))
            clear_ledger()
        tm, cm = statistics.median(capped), statistics.median(plain)
        ideal = LIMIT_CAP * 1000 / io_ms
        print(
            f"  limits: capped {[round(x) for x in capped]}, unlimited {[round(x) for x in free]}, "
            f"plain celery {[round(x) for x in plain]}, paced {[round(x) for x in paced]} (jobs/s)"
        )
        print(
            f"BENCH limits toolkit={tm:.0f} celery={cm:.0f} ratio={tm / cm:.2f} "
            f"cap={LIMIT_CAP} max_concurrency={max(concurrency)} "
            f"ideal={ideal:.0f} capped_vs_ideal={tm / ideal:.2f} "
            f"unlimited={statistics.median(free):.0f} "
            f"rate={LIMIT_RATE} max_starts_per_s={max(per_second)} "
            f"paced={statistics.median(paced):.1f} "
            f"n={n} rounds={rounds} processes=2x4 io_ms={io_ms:g}"
        )
    finally:
        for worker in workers:
            worker.stop()


def fanout_round(side: str, n: int) -> tuple[float, list[float]]:
    """One fan-out of ``n`` do-nothing branches and its gather: branches/s, and the gather's
    hop (last branch's end to the gathering step's start)."""
    from bench.work import counter

    key, hops = f"bench:{uuid.uuid4().hex}", f"hops:{uuid.uuid4().hex}"
    start = time.perf_counter()
    if side == "toolkit":
        from bench.celery_app import bench

        bench.enqueue("fanout", {"n": n, "counter": key, "hops": hops})
    else:
        from bench.plain_app import start_chord

        start_chord(n, key, hops)
    wait_counter(key, 1)
    return n / (time.perf_counter() - start), [float(x) for x in counter.lrange(hops, 0, -1)]


def join_hops(side: str, count: int) -> list[float]:
    """Two branches and their join, one at a time on idle workers: the join's hop."""
    from bench.work import counter

    key, hops = f"bench:{uuid.uuid4().hex}", f"hops:{uuid.uuid4().hex}"
    for i in range(count):
        if side == "toolkit":
            from bench.celery_app import bench

            bench.emit("joinStarted", {"counter": key, "hops": hops})
        else:
            from celery import chord

            from bench.plain_app import QUEUE, plain_branch, plain_gather

            pair = [plain_branch.s({}).set(queue=QUEUE) for _ in range(2)]
            chord(pair)(plain_gather.s(key, hops).set(queue=QUEUE))
        wait_counter(key, i + 1)
    return [float(x) for x in counter.lrange(hops, 0, -1)]


def scenario_fanout(n: int, rounds: int, idle: int) -> None:
    fanout_round("celery", 100)  # warm both paths
    fanout_round("toolkit", 100)
    t, c, hops_t, hops_c = [], [], [], []
    for _ in range(rounds):
        rate, hops = fanout_round("celery", n)
        c.append(rate)
        hops_c += hops
        rate, hops = fanout_round("toolkit", n)
        t.append(rate)
        hops_t += hops
        clear_ledger()
    join_c, join_t = join_hops("celery", idle), join_hops("toolkit", idle)
    clear_ledger()
    tm, cm = statistics.median(t), statistics.median(c)
    print(
        f"  fanout: toolkit rounds {[round(x) for x in t]}, celery rounds "
        f"{[round(x) for x in c]} (branches/s)"
    )
    print(
        f"BENCH fanout toolkit={tm:.0f} celery={cm:.0f} ratio={tm / cm:.2f} "
        f"gather_hop_p50_ms={statistics.median(hops_t):.2f} "
        f"celery_gather_hop_p50_ms={statistics.median(hops_c):.2f} "
        f"join_hop_p50_ms={statistics.median(join_t):.2f} "
        f"celery_join_hop_p50_ms={statistics.median(join_c):.2f} "
        f"join_hop_p99_ms={pct(join_t, 0.99):.2f} celery_join_hop_p99_ms={pct(join_c, 0.99):.2f} "
        f"n={n} rounds={rounds} joins={idle} workers={WORKERS}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=2000, help="jobs per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-w", type=int, default=2000, help="workflows per workflow4 round")
    parser.add_argument("--idle", type=int, default=60, help="workflows run one at a time")
    parser.add_argument("--branches", type=int, default=1000, help="branches per fan-out")
    parser.add_argument(
        "--only",
        choices=["jobs", "batch", "workflow4", "limits", "fanout"],
        help="one scenario",
    )
    args = parser.parse_args()
    setup()
    from bench.celery_app import FANOUT_QUEUES, QUEUES
    from bench.floor_app import QUEUE as FLOOR_QUEUE
    from bench.plain_app import QUEUE
    from bench.work import counter
    from celery_workflows.testing import WorkerProcess

    counter.flushdb()
    clear_ledger()
    env = {"PYTHONPATH": str(ROOT)}
    toolkit = WorkerProcess(
        "bench.celery_app",
        [*QUEUES, *FANOUT_QUEUES],
        concurrency=WORKERS,
        log_path="/tmp/cw-bench-toolkit.log",
        env=env,
    ).start()
    plain = WorkerProcess(
        "bench.plain_app",
        [QUEUE],
        concurrency=WORKERS,
        log_path="/tmp/cw-bench-celery.log",
        env=env,
    ).start()
    floor = WorkerProcess(
        "bench.floor_app",
        [FLOOR_QUEUE],
        concurrency=WORKERS,
        log_path="/tmp/cw-bench-floor.log",
        env={**env, "DJANGO_SETTINGS_MODULE": "bench.plain_settings"},
    ).start()
    try:
        time.sleep(3)
        pids = {"toolkit": toolkit.pid, "celery": plain.pid, "floor": floor.pid}
        if args.only in (None, "jobs"):
            scenario_jobs("jobs", args.n, args.rounds, io_ms=0, pids=pids)
            scenario_jobs("jobs_io5ms", args.n // 2, args.rounds, io_ms=5, pids=pids)
        if args.only in (None, "batch"):
            scenario_jobs("jobs_batch", args.n, args.rounds, io_ms=0, pids=pids, batch=True)
        if args.only in (None, "workflow4"):
            scenario_workflow4(args.w, args.rounds, args.idle, pids)
        if args.only in (None, "limits"):
            scenario_limits(args.n // 4, args.rounds)
        if args.only in (None, "fanout"):
            scenario_fanout(args.branches, args.rounds, args.idle)
    finally:
        toolkit.stop()
        plain.stop()
        floor.stop()


if __name__ == "__main__":
    main()
