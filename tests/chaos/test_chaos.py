"""Chaos: workers killed, the broker wiped, database connections cut, crashes at the worst
instruction, and garbage on the queues - while real workflows run. Nothing may be lost and
no outcome may be recorded twice.

Run with ``make chaos`` (PostgreSQL, Redis and RabbitMQ on loopback). Each scenario prints

    CHAOS <name> workflows=N completed=N lost=0 duplicated=0 reexecutions=N seconds=S

where ``lost`` counts workflows that did not reach a final status, ``duplicated`` counts jobs
whose outcome was recorded more than once or whose side effect is missing, and
``reexecutions`` counts handler runs beyond one per job (killed or taken-over attempts, all
absorbed by the side effect's idempotency key).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from django.db import connection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu import Connection

from celery_workflows import PayloadError
from celery_workflows.testing import WorkerProcess, wait_for
from tests.proj.chaos import QUEUES, STEPS, chaos

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("transactional_db")]

REDIS_BROKER = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/3")
AMQP_BROKER = os.environ.get("CHAOS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/cw-chaos")
FINAL = ("completed", "dead_lettered", "compensated", "cancelled")


class Fleet:
    """Worker processes on the chaos queues, which a test can kill and restart."""

    def __init__(self, env: dict[str, str], log_dir: Path, broker: str, name: str) -> None:
        self.env = {**env, "CELERY_BROKER_URL": broker, "WORKFLOWS_REPUBLISH_AFTER": "2"}
        self.name = name
        self.log_dir = log_dir
        self.workers: list[WorkerProcess] = []
        self.started = 0

    def start(self, count: int = 1) -> None:
        for _ in range(count):
            self.workers.append(self._new())

    def _new(self) -> WorkerProcess:
        self.started += 1
        name = f"{self.name}{self.started}"
        return WorkerProcess(
            "tests.proj.celery_app",
            QUEUES,
            concurrency=2,
            env=self.env,
            hostname=f"{name}@%h",
            log_path=str(self.log_dir / f"{name}.log"),
        ).start()

    def kill_something(self, rng: random.Random) -> str:
        """SIGKILL a random pool child (most of the time) or a whole worker, restarted."""
        index = rng.randrange(len(self.workers))
        worker = self.workers[index]
        children = pool_children(worker.pid)
        if children and rng.random() < 0.6:
            os.kill(rng.choice(children), 9)
            return "child"
        worker.kill()
        self.workers[index] = self._new()
        return "worker"

    def alive(self) -> bool:
        return all(w.alive() for w in self.workers)

    def logs(self) -> str:
        return "".join(
            p.read_text(errors="replace") for p in self.log_dir.glob(f"{self.name}*.log")
        )

    def stop(self) -> None:
        for worker in self.workers:
            worker.kill()


def pool_children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


@pytest.fixture
def fleet(worker_env, tmp_path) -> Iterator[Callable[[str], Fleet]]:
    made: list[Fleet] = []

    def make(broker: str = REDIS_BROKER, **env: str) -> Fleet:
        made.append(Fleet({**worker_env, **env}, tmp_path, broker, f"chaos{len(made)}-"))
        return made[-1]

    yield make
    for f in made:
        f.stop()


@pytest.fixture
def recorder_redis(redis_client: redis.Redis) -> redis.Redis:
    for key in redis_client.scan_iter("chaos:*"):
        redis_client.delete(key)
    return redis_client


def start_workflows(tag: str, count: int, work_ms: int = 20, **options: str) -> list[str]:
    return [
        chaos.emit(
            "chaosStarted", {"n": f"{tag}-{i}", "work_ms": work_ms}, **options
        ).correlation_id
        for i in range(count)
    ]


def settled(ids: list[str], timeout: float) -> None:
    from django_app.models import WorkflowRun

    def done() -> bool:
        return WorkflowRun.objects.filter(correlation_id__in=ids, status__in=FINAL).count() == len(
            ids
        )

    wait_for(done, timeout=timeout, interval=0.5, message="workflows did not all settle")


def report(
    name: str,
    ids: list[str],
    seconds: float,
    redis_client: redis.Redis,
    extra: dict[str, int] | None = None,
) -> dict[str, int]:
    from django_app.models import Job, WorkflowRun

    runs = dict(
        WorkflowRun.objects.filter(correlation_id__in=ids).values_list("correlation_id", "status")
    )
    completed = sum(1 for s in runs.values() if s == "completed")
    lost = len(ids) - sum(1 for s in runs.values() if s in FINAL)
    jobs = list(
        Job.objects.filter(correlation_id__in=ids).values_list("id", "status", "attempt_log")
    )
    twice = sum(1 for _, _, log in jobs if sum(a["outcome"] == "succeeded" for a in log) > 1)
    succeeded = [job_id for job_id, status, _ in jobs if status == "succeeded"]
    missing = sum(1 for job_id in succeeded if not redis_client.exists(f"chaos:effect:{job_id}"))
    runs_count = sum(int(redis_client.get(f"chaos:runs:{job_id}") or 0) for job_id, _, _ in jobs)
    figures = {
        "workflows": len(ids),
        "completed": completed,
        "lost": lost,
        "duplicated": twice + missing,
        "reexecutions": runs_count - len(jobs),
        "jobs": len(jobs),
    }
    more = "".join(f" {key}={value}" for key, value in (extra or {}).items())
    print(
        f"\nCHAOS {name} workflows={len(ids)} completed={completed} lost={lost} "
        f"duplicated={twice + missing} reexecutions={runs_count - len(jobs)}{more} "
        f"seconds={seconds:.1f}"
    )
    return figures


def test_sigkill_loop(fleet, recorder_redis):
    workers = fleet()
    workers.start(2)
    started = time.monotonic()
    ids = start_workflows("kill", 300, work_ms=40)
    stop = threading.Event()
    rng = random.Random(7)
    kills: list[str] = []

    def loop() -> None:
        while not stop.wait(rng.uniform(1.5, 2.5)):
            kills.append(workers.kill_something(rng))

    killer = threading.Thread(target=loop, daemon=True)
    killer.start()
    try:
        settled(ids, timeout=300)
    finally:
        stop.set()
        killer.join()
    figures = report("sigkill_loop", ids, time.monotonic() - started, recorder_redis)
    print(
        f"  sigkill_loop: {kills.count('child')} pool children and {kills.count('worker')} "
        "whole workers SIGKILLed"
    )
    assert kills, "the loop killed nothing"
    assert figures["completed"] == 300 and figures["lost"] == 0 and figures["duplicated"] == 0
    assert figures["jobs"] == 300 * STEPS


def purge(broker: str) -> None:
    if broker.startswith("redis"):
        redis.Redis.from_url(broker).flushdb()
        return
    with Connection(broker) as conn:
        for queue in QUEUES:
            with conn.channel() as channel:
                channel.queue_purge(queue)


@pytest.mark.parametrize("broker", [REDIS_BROKER, AMQP_BROKER], ids=["redis", "rabbitmq"])
def test_broker_loss(broker, fleet, recorder_redis):
    from django_app.models import Job

    workers = fleet(broker)
    workers.start(1)
    started = time.monotonic()
    ids = start_workflows(f"wipe-{broker[:5]}", 100, work_ms=30)
    wait_for(
        lambda: Job.objects.filter(correlation_id__in=ids, status="succeeded").count() > 100,
        timeout=60,
    )
    purge(broker)  # every notice in the broker is gone; the ledger still owes them
    settled(ids, timeout=120)
    name = "broker_loss_" + ("redis" if broker.startswith("redis") else "rabbitmq")
    figures = report(name, ids, time.monotonic() - started, recorder_redis)
    assert figures["completed"] == 100 and figures["lost"] == 0 and figures["duplicated"] == 0


def backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def terminate_backends(spare: int) -> int:
    """Terminate every connection to the test database but this thread's and ``spare``."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND pid <> %s",
            [spare],
        )
        return int(cursor.fetchone()[0])


def test_database_connections_killed(fleet, recorder_redis):
    from django_app.models import Job

    workers = fleet()
    workers.start(2)
    time.sleep(2)  # both workers connected
    started = time.monotonic()
    ids = start_workflows("dbkill", 200, work_ms=50)
    stop = threading.Event()
    terminated: list[int] = []
    ours = backend_pid()  # the test's own connection, which reads the results

    def loop() -> None:
        while not stop.wait(2):
            terminated.append(terminate_backends(spare=ours))

    killer = threading.Thread(target=loop, daemon=True)
    killer.start()
    try:
        settled(ids, timeout=180)
    finally:
        stop.set()
        killer.join()
    # a dead connection is retried on a new one, never counted against the job
    charged = [
        a
        for log in Job.objects.filter(correlation_id__in=ids).values_list("attempt_log", flat=True)
        for a in log
        if a["outcome"] != "succeeded"
    ]
    figures = report(
        "db_connections_killed",
        ids,
        time.monotonic() - started,
        recorder_redis,
        {"charged_by_connection_loss": len(charged)},
    )
    rounds = len(terminated)
    print(f"  db_connections_killed: {sum(terminated)} backends terminated in {rounds} rounds")
    assert sum(terminated) > 0, "no connection was terminated"
    assert figures["completed"] == 200 and figures["lost"] == 0 and figures["duplicated"] == 0
    assert charged == []
    assert workers.alive()


def test_die_before_settling(fleet, recorder_redis):
    workers = fleet()
    workers.start(1)
    started = time.monotonic()
    ids = [
        chaos.emit(
            "chaosStarted",
            {"n": f"die-{i}"},
            correlation_id=f"die-after-outcome-{uuid.uuid4().hex}",
        ).correlation_id
        for i in range(30)
    ]
    settled(ids, timeout=120)  # each last step's process died right after its outcome
    figures = report("die_before_settling", ids, time.monotonic() - started, recorder_redis)
    assert figures["completed"] == 30 and figures["lost"] == 0 and figures["duplicated"] == 0
    assert workers.logs().count("signal 9") >= 30


# -- fuzz ----------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def envelopes() -> st.SearchStrategy[bytes]:
    """Kombu Redis envelopes with one part fuzzed: body, headers, content type, properties."""
    import base64

    def build(body: bytes, task: object, content_type: object, args: object) -> bytes:
        inner = json.dumps([args, {}, {}]).encode() if args is not None else body
        return json.dumps(
            {
                "body": base64.b64encode(inner).decode(),
                "content-encoding": "utf-8",
                "content-type": content_type,
                "headers": {"task": task, "id": uuid.uuid4().hex},
                "properties": {
                    "body_encoding": "base64",
                    "delivery_tag": uuid.uuid4().hex,
                    "delivery_info": {"exchange": "", "routing_key": "x"},
                    "priority": 0,
                },
            }
        ).encode()

    task_names = st.sampled_from([f"celery_workflows.{q}" for q in QUEUES]) | st.text(max_size=30)
    return st.builds(
        build,
        st.binary(max_size=64),
        task_names,
        st.sampled_from(["application/json", None, "text/plain", "application/x-python-serialize"]),
        st.none() | st.lists(JSON, max_size=3),
    )


RAW = (
    st.binary(max_size=300)
    | JSON.map(lambda v: json.dumps(v).encode())
    | envelopes()
    | st.just(b"x" * 2_000_000)  # oversized
)


def test_fuzz(fleet, recorder_redis):
    from django_app.models import Job

    workers = fleet()
    workers.start(1)
    started = time.monotonic()
    broker = redis.Redis.from_url(REDIS_BROKER)
    pushed: list[bytes] = []
    accepted: list[str] = []
    rejected: list[str] = []
    ids = start_workflows("fuzz-real", 50)

    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
    )
    @given(item=RAW, queue=st.sampled_from(QUEUES))
    def push(item: bytes, queue: str) -> None:
        broker.lpush(queue, item)
        pushed.append(item)

    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
    )
    @given(payload=JSON | st.text(alphabet=st.characters(codec=None), max_size=20))
    def start(payload: object) -> None:
        try:
            accepted.append(chaos.emit("chaosStarted", payload).correlation_id)
        except PayloadError as exc:
            rejected.append(str(exc))

    push()
    start()
    ids += start_workflows("fuzz-real-after", 50)
    settled(ids + accepted, timeout=180)
    assert workers.alive(), "a worker died"

    def accounted() -> int:
        dead = Job.objects.filter(status="dead", queue__in=[*QUEUES, "?"]).count()
        dropped = workers.logs().count("dropped a notice for job")
        return dead + dropped

    wait_for(lambda: accounted() >= len(pushed), timeout=30, message="garbage went unaccounted")
    figures = report("fuzz", ids + accepted, time.monotonic() - started, recorder_redis)
    print(
        f"  fuzz: {len(pushed)} raw items pushed, {accounted()} dead-lettered or dropped with a "
        f"warning; {len(accepted)} fuzzed payloads accepted, {len(rejected)} refused at the door"
    )
    assert accounted() == len(pushed)
    assert figures["lost"] == 0 and figures["duplicated"] == 0
    assert all("payload" in reason for reason in rejected)


# -- partitions ----------------------------------------------------------------------------

PROXY = Path(__file__).resolve().parents[2] / "bench" / "netdelay.py"


class Link:
    """A TCP link a test can cut and heal: ``bench/netdelay.py`` with no delay. While cut it
    reads and holds everything, delivers nothing and closes nothing - a partition, as both
    ends see one."""

    def __init__(self, target: str) -> None:
        import socket
        import subprocess
        import sys

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process = subprocess.Popen(
            [sys.executable, str(PROXY), "--listen", str(self.port), "--target", target,
             "--rtt-ms", "0"]
        )  # fmt: skip
        wait_for(self._listening, timeout=10, message="the link's proxy did not start")

    def _listening(self) -> bool:
        import socket

        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def toggle(self) -> None:
        os.kill(self.process.pid, signal.SIGUSR2)

    def close(self) -> None:
        self.process.kill()
        self.process.wait(10)


def through(url: str, link: Link) -> str:
    """``url`` with its host and port replaced by the link's."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{link.port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


@pytest.mark.parametrize("cut", ["database", "broker"])
def test_partition(cut, fleet, recorder_redis, worker_env):
    """A worker host cut off - from the database, or from the broker - for longer than its
    leases while its handlers run, then healed: the other worker takes its jobs over, its late
    writes are fenced, nothing is lost and no outcome is recorded twice."""
    from urllib.parse import urlsplit

    from django_app.models import Job

    url = worker_env["DATABASE_URL"] if cut == "database" else REDIS_BROKER
    target = urlsplit(url).netloc.rsplit("@", 1)[-1]
    link = Link(target)
    try:
        if cut == "database":
            isolated = fleet(DATABASE_URL=through(url, link))
        else:
            isolated = fleet(through(url, link))
        healthy = fleet()
        isolated.start(1)
        healthy.start(1)
        time.sleep(3)  # both connected
        started = time.monotonic()
        ids = start_workflows(f"cut-{cut}", 60, work_ms=400)
        wait_for(
            lambda: Job.objects.filter(correlation_id__in=ids, status="running").count() >= 3,
            timeout=30,
        )
        link.toggle()  # cut: the handlers under way on the isolated host keep running
        time.sleep(8)  # longer than the 3 s leases: the healthy worker takes their jobs over
        link.toggle()  # healed: what the isolated host wrote meanwhile arrives now
        settled(ids, timeout=180)
        # one per attempt (the worker writes each log line to its log twice: plain and formatted)
        fenced = len(set(re.findall(r"late result of job (\w+) attempt (\d+)", isolated.logs())))
        figures = report(
            f"partition_{cut}",
            ids,
            time.monotonic() - started,
            recorder_redis,
            {"cut_seconds": 8, "late_writes_fenced": fenced},
        )
        assert figures["completed"] == 60 and figures["lost"] == 0
        assert figures["duplicated"] == 0
        assert figures["jobs"] == 60 * STEPS
        if cut == "database":
            # the cut-off worker's outcomes of taken-over attempts reached the ledger late
            assert fenced > 0
        assert isolated.alive() and healthy.alive()
    finally:
        link.close()
