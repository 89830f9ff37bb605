"""How test handlers report what they did: one JSON line per run in the test Redis."""

from __future__ import annotations

import json
import os
import time
from functools import cached_property
from typing import Any

import redis

from celery_workflows import Job, RetryStrategy

#: short delays so retry tests take seconds: 0.5s, 1s, 2s ... each +/-20 %
FAST_RETRY = RetryStrategy(initial_delay=0.5, max_delay=2.0, multiplier=2, jitter_factor=0.2)


class Recorder:
    """Appends one JSON line per handler run to ``runs:<job id>`` in the test Redis."""

    @cached_property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(
            os.environ.get(
                "TEST_REDIS_URL", os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/11")
            )
        )

    def record(self, job: Job[Any], **extra: Any) -> None:
        entry = {"attempt": job.attempt, "t": time.time(), "pid": os.getpid(), **extra}
        self.redis.rpush(f"runs:{job.id}", json.dumps(entry))

    def runs(self, job_id: str) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.redis.lrange(f"runs:{job_id}", 0, -1)]


recorder = Recorder()
