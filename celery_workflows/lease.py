"""Leases: one attempt owns a job until its lease expires.

The ledger records each attempt's lease token and expiry; :class:`LeaseAlarm` makes the handler
honour it from inside the worker process, by raising :class:`LeaseExpired` shortly before the
lease runs out (the margin leaves time to record the failure under the still-valid lease).

The alarm uses ``SIGALRM``, which interrupts blocking sleeps and most system calls. It only works
in a process's main thread, outside any greenlet - which is where Celery's prefork and solo
pools run tasks. Under the threads, gevent or eventlet pools the alarm is not armed (a signal
would interrupt whichever thread or greenlet happens to run): an overrunning handler runs on,
its lease expires, the sweeper hands the job to another attempt, and the fence in the ledger
rejects whatever the overrunning handler writes afterwards.
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType

from .errors import LeaseExpired

#: fraction of the lease kept back so the worker can still record an overrun itself
ALARM_MARGIN_FRACTION = 0.1
#: upper bound of that margin, in seconds
ALARM_MARGIN_MAX_SECONDS = 1.0


def new_lease_token() -> str:
    return uuid.uuid4().hex


_HOST = socket.gethostname()


def worker_name() -> str:
    """``host:pid`` of this process, recorded on every attempt (made once per pid: a pool
    process is a fork, with a pid of its own)."""
    return _name_of_pid(os.getpid())


def worker_name_of(pid: int) -> str:
    """``host:pid`` of process ``pid`` of this host."""
    return f"{_HOST}:{pid}"


_name_of_pid = functools.lru_cache(maxsize=1)(worker_name_of)


def _in_greenlet() -> bool:
    """True inside a greenlet other than the main one (gevent and eventlet pools)."""
    greenlet = sys.modules.get("greenlet")
    current = getattr(greenlet, "getcurrent", None)
    return current is not None and current().parent is not None


def alarm_margin(lease_seconds: float) -> float:
    return min(ALARM_MARGIN_MAX_SECONDS, lease_seconds * ALARM_MARGIN_FRACTION)


class LeaseAlarm:
    """Raise :class:`LeaseExpired` in the handler when its lease is about to run out.

    Inside :func:`alarm_scope` (the worker's task body, around a chain of local continuations)
    the scope's handler stays installed and each alarm only sets and clears the timer;
    elsewhere each alarm installs its own handler and restores the previous one."""

    def __init__(self, lease_seconds: float) -> None:
        self.lease_seconds = lease_seconds
        self._armed = False
        self._own_handler = False
        self._previous: object = None

    @property
    def supported(self) -> bool:
        return _alarms_supported()

    def __enter__(self) -> LeaseAlarm:
        if _scope.thread == threading.get_ident():
            _scope.armed = self
            self._armed = True
        elif self.supported:
            self._previous = signal.signal(signal.SIGALRM, self._fire)
            self._own_handler = self._armed = True
        self.reset(self.lease_seconds)
        return self

    def reset(self, lease_seconds: float) -> None:
        """Re-arm for a lease that now ends ``lease_seconds`` from now (after an extension)."""
        if self._armed:
            delay = max(0.001, lease_seconds - alarm_margin(lease_seconds))
            signal.setitimer(signal.ITIMER_REAL, delay)

    def _fire(self, signum: int, frame: FrameType | None) -> None:
        raise LeaseExpired(f"handler exceeded its visibility timeout ({self.lease_seconds:g}s)")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._armed:
            return
        signal.setitimer(signal.ITIMER_REAL, 0)
        self._armed = False
        if self._own_handler:
            signal.signal(signal.SIGALRM, self._previous)  # type: ignore[arg-type]
            self._own_handler = False
        else:
            _scope.armed = None


def _alarms_supported() -> bool:
    return (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and not _in_greenlet()
    )


class _Scope:
    """The alarm scope open in this process: its thread, and the alarm now armed in it."""

    thread: int | None = None
    armed: LeaseAlarm | None = None


_scope = _Scope()


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    armed = _scope.armed
    if armed is not None:
        armed._fire(signum, frame)


@contextmanager
def alarm_scope() -> Iterator[None]:
    """Install the lease alarms' handler once for the attempts run in this block (a task and
    its local continuations), instead of once per attempt - two ``signal.signal`` calls per
    step saved; the previous handler is back when the block ends."""
    if _scope.thread is not None or not _alarms_supported():
        yield  # nested, or alarms cannot be armed here: each LeaseAlarm decides for itself
        return
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    _scope.thread = threading.get_ident()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _scope.thread = None
        _scope.armed = None
        signal.signal(signal.SIGALRM, previous)
