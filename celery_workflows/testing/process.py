"""Helpers for testing workflows against a real Celery worker process.

Queue behaviour (leases, retries, crashes) only means something on a real worker and broker,
so these helpers start ``celery worker`` as a subprocess and wait for conditions with a
deadline instead of sleeping.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import IO, TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The awaited condition did not hold before the deadline."""


def wait_for(
    predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, message: str = ""
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(message or f"condition not met within {timeout}s")
        time.sleep(interval)


class WorkerProcess:
    """A ``celery -A <app> worker`` subprocess consuming ``queues``.

    ``env`` is added to the current environment (point ``DATABASE_URL`` at the test database).
    Use as a context manager, or call :meth:`start` / :meth:`stop`; :meth:`kill` sends SIGKILL to
    the whole worker (main process and pool children), as a crash or OOM kill would.
    """

    def __init__(
        self,
        app: str,
        queues: Iterable[str],
        *,
        concurrency: int = 1,
        pool: str = "prefork",
        env: Mapping[str, str] | None = None,
        hostname: str | None = None,
        log_path: str | None = None,
    ) -> None:
        self.app = app
        self.queues = list(queues)
        self.concurrency = concurrency
        self.pool = pool
        self.env = dict(env or {})
        self.hostname = hostname
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            self.app,
            "worker",
            "-Q",
            ",".join(self.queues),
            "-c",
            str(self.concurrency),
            "-P",
            self.pool,
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
            "-l",
            "INFO",
        ]
        if self.hostname:
            cmd += ["-n", self.hostname]
        return cmd

    def start(self) -> WorkerProcess:
        self._log = open(self.log_path, "wb") if self.log_path else None  # noqa: SIM115
        self.process = subprocess.Popen(
            self.command(),
            # unbuffered, so the log file shows what happened up to the moment it is read
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            stdout=self._log if self._log is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the worker and its pool children at once - no shutdown, no acks."""
        if self.alive():
            os.killpg(self.pid, signal.SIGKILL)
            assert self.process is not None
            self.process.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self, timeout: float = 10.0) -> None:
        """Warm shutdown (SIGTERM); SIGKILL if it takes longer than ``timeout``."""
        if not self.alive():
            self._close_log()
            return
        assert self.process is not None
        os.killpg(self.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._close_log()

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
