"""A real ``celery worker`` subprocess: started, waited for, stopped or SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO

from .waiting import wait_for


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
        launcher: Iterable[str] = ("-m", "celery"),
    ) -> None:
        self.app = app
        self.queues = list(queues)
        self.concurrency = concurrency
        self.pool = pool
        self.env = dict(env or {})
        self.hostname = hostname
        self.log_path = log_path
        self.launcher = list(launcher)
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            *self.launcher,
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

    def wait_ready(self, timeout: float = 30.0) -> WorkerProcess:
        """Wait until the worker logs that it is ready to consume (needs ``log_path``)."""
        assert self.log_path is not None, "wait_ready() reads the worker's log: give log_path"
        log = Path(self.log_path)

        def ready() -> bool:
            if not self.alive():
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                raise RuntimeError(f"the worker exited before it was ready:\n{tail}")
            return log.exists() and " ready." in log.read_text(errors="replace")

        wait_for(ready, timeout=timeout, interval=0.05, message="the worker was not ready")
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

    def terminate(self) -> None:
        """Ask for a warm shutdown (SIGTERM) without waiting; :meth:`stop` waits for it."""
        if self.alive():
            os.killpg(self.pid, signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> None:
        """Warm shutdown (SIGTERM); SIGKILL if it takes longer than ``timeout``."""
        if not self.alive():
            self._close_log()
            return
        assert self.process is not None
        self.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._close_log()

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
