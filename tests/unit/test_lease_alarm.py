"""The lease alarm stops a handler that overruns its lease (celery_workflows/lease.py): on its
own, and inside the scope a task opens around a chain of local continuations, where the
handler is installed once for the chain."""

import signal
import time

import pytest

from celery_workflows.errors import LeaseExpired
from celery_workflows.lease import LeaseAlarm, alarm_scope


def overrun(lease_seconds: float) -> None:
    with LeaseAlarm(lease_seconds):
        time.sleep(lease_seconds * 20)


def mine(signum, frame):  # a handler the process had before
    raise AssertionError("the previous handler must not run during an attempt")


@pytest.fixture
def previous_handler():
    before = signal.signal(signal.SIGALRM, mine)
    yield mine
    signal.signal(signal.SIGALRM, before)


def test_an_alarm_on_its_own_stops_an_overrun_and_puts_the_previous_handler_back(
    previous_handler,
):
    with pytest.raises(LeaseExpired):
        overrun(0.05)
    assert signal.getsignal(signal.SIGALRM) is previous_handler


def test_every_attempt_of_a_chain_is_stopped_by_its_own_alarm(previous_handler):
    with alarm_scope():
        for lease in (0.05, 0.08):  # two steps of one chain, each overrunning
            with pytest.raises(LeaseExpired, match=f"visibility timeout \\({lease:g}s\\)"):
                overrun(lease)
        with LeaseAlarm(5):  # a step that finishes in time is not interrupted
            time.sleep(0.05)
    assert signal.getsignal(signal.SIGALRM) is previous_handler
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_between_the_attempts_of_a_chain_no_alarm_is_armed(previous_handler):
    with alarm_scope():
        with LeaseAlarm(5):
            pass
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        signal.raise_signal(signal.SIGALRM)  # a stray alarm between attempts is ignored
