"""Connection health for the ledger: a dropped connection is reopened and the statement retried.

A worker keeps its database connection between jobs (``CELERY_DB_REUSE_MAX``), and the server
may drop it between two statements - a failover, a pooler restart, an idle timeout,
``pg_terminate_backend``. Django notices only when the next statement fails, and a Celery
worker never calls ``close_old_connections()``, so without this every later job of that process
would fail on the dead connection.

Every store method is wrapped (:func:`reconnecting`): when it fails because the connection is
gone, or because the database says "try again" (a lock timeout, a deadlock, a serialization
failure), the connection is closed if it is unusable and the method runs again - at once, then
with backoff - for up to :data:`RETRY_BUDGET_SECONDS`; then it raises
:class:`~celery_workflows.errors.LedgerUnavailableError`. Inside a caller's own transaction
nothing is retried: that transaction is lost, and the caller must see the error.

Running a store method again is safe even when the first run committed and only its reply was
lost, because each write is conditional or keyed: a claim matches its own lease token again,
an outcome recognises the token it left on the row (:meth:`SqlLedger.record_outcome`), inserts
recognise their own ids, and the sweeper's writes are conditional on what they read.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import DatabaseError, InterfaceError, OperationalError, connection

from celery_workflows.errors import LedgerUnavailableError
from celery_workflows.store import Controls, Ledger, Maintenance, Operations, Runs

logger = logging.getLogger("celery_workflows.ledger")

#: how long a store call keeps retrying before it gives up
RETRY_BUDGET_SECONDS = 10.0
#: longest pause between two tries
MAX_PAUSE_SECONDS = 1.0
#: SQLSTATE classes and codes that mean "the connection is gone" or "try again"
RETRY_SQLSTATES = ("08", "40001", "40P01", "55P03", "57P01", "57P02", "57P03", "53300")
#: store methods that are not database calls (or only close a connection)
NOT_WRAPPED = {"on_commit", "atomic", "atomic_step", "run_on_commit_now", "release_connection"}

T = TypeVar("T", bound=type)


def store_methods() -> set[str]:
    """The methods of the storage protocols, which a store implements."""
    return {
        name
        for protocol in (Ledger, Maintenance, Operations, Runs, Controls)
        for name in vars(protocol)
        if not name.startswith("_") and callable(vars(protocol)[name])
    } - NOT_WRAPPED


def reconnecting(cls: T) -> T:
    """Class decorator: wrap every storage-protocol method of ``cls`` with :func:`retrying`."""
    for name in store_methods():
        setattr(cls, name, retrying(getattr(cls, name)))
    return cls


def retrying(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        if connection.in_atomic_block:
            return method(*args, **kwargs)
        deadline = time.monotonic() + RETRY_BUDGET_SECONDS
        pause = 0.0
        while True:
            try:
                return method(*args, **kwargs)
            except (OperationalError, InterfaceError) as exc:
                if not transient(exc):
                    raise
                if time.monotonic() + pause > deadline:
                    raise LedgerUnavailableError(
                        f"{method.__name__}: the database did not answer within "
                        f"{RETRY_BUDGET_SECONDS:g}s ({exc})"
                    ) from exc
                logger.warning("%s failed (%s); retrying", method.__name__, exc)
                time.sleep(pause)
                pause = min(MAX_PAUSE_SECONDS, max(0.05, pause * 2))

    return call


def transient(exc: OperationalError | InterfaceError) -> bool:
    """Whether ``exc`` means the connection is gone or the database asks to try again; a gone
    connection is closed here, so the next statement opens a new one."""
    if not usable():
        close()
        return True
    if isinstance(exc, InterfaceError):
        return True
    sqlstate = getattr(exc.__cause__, "sqlstate", None) or getattr(exc.__cause__, "pgcode", None)
    if isinstance(sqlstate, str):
        return sqlstate.startswith(RETRY_SQLSTATES)
    text = str(exc).lower()
    return (
        "locked" in text or "deadlock" in text or "gone away" in text or "lost connection" in text
    )


def usable() -> bool:
    if connection.connection is None:
        return True  # nothing open: the next statement connects
    try:
        return bool(connection.is_usable())
    except DatabaseError:
        return False


def close() -> None:
    try:
        connection.close()
    except DatabaseError:
        connection.connection = None
