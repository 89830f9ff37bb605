"""The business work both sides of the benchmark do, and how hops are measured."""

import os
import time
from typing import Any

import redis

#: the bench's own instrument: straight to Redis even when the broker is reached through the
#: delaying proxy of ``bench/network.py`` (the work is not what is measured there)
counter = redis.Redis.from_url(
    os.environ.get("BENCH_COUNTER_URL")
    or os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/13")
)

#: steps of the workflow4 scenario
STEPS = 4


def work(counter_key: str, io_ms: float) -> None:
    """One unit of business work: optionally wait on "I/O" (an API call, say), then count."""
    if io_ms:
        time.sleep(io_ms / 1000)
    counter.incr(counter_key)


def hop(payload: dict[str, Any], step: int) -> None:
    """Record, for sampled workflows, how long the hand-over from the previous step took
    (the previous step stamped ``t`` when it emitted; step 1 has no previous step)."""
    if step > 1 and payload.get("sample") and payload.get("t"):
        counter.rpush(payload["hops"], round((time.time() - payload["t"]) * 1000, 3))


def next_payload(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "t": time.time()}


def timed(payload: dict[str, Any]) -> None:
    """The limits scenario's work: ``io_ms`` of "I/O", noting its span (start,end) in Redis."""
    start = time.time()
    if payload["io_ms"]:
        time.sleep(payload["io_ms"] / 1000)
    counter.rpush(payload["spans"], f"{start},{time.time()}")
    counter.incr(payload["counter"])


def branch_result(payload: dict[str, Any]) -> dict[str, float]:
    """A branch of the fan-out scenario: no work; its end is stamped for the gather's hop."""
    return {"t": time.time()}


def gathered(results: list[dict[str, float]], counter_key: str, hops: str) -> None:
    """The fan-in: the hop is the time since the last branch ended."""
    counter.rpush(hops, round((time.time() - max(r["t"] for r in results)) * 1000, 3))
    counter.incr(counter_key)
