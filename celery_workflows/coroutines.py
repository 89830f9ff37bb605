"""``async def`` handlers: run on an event loop that belongs to the worker process.

A Celery worker calls task bodies synchronously, so an async handler's coroutine is run to
completion here, on one event loop per process and thread (prefork children, the solo pool,
each thread of ``-P threads``; a loop is never shared across a fork). Everything around the
handler stays as it is: the claim before it and the fenced outcome write after it run outside
the loop, and the lease alarm (``SIGALRM``) interrupts the loop as it interrupts a sync
handler - the coroutine is then cancelled, so its ``finally`` blocks and ``async with`` exits
run, and the attempt ends as a lease expiry.

Inside a running loop Django refuses synchronous database access, so handlers use the async
variants of the context's database calls (``await ctx.aextend_lease()``,
``await ctx.states.aget_state(...)``, ...); they run the same store calls in Django's
thread-sensitive executor (:func:`asgiref.sync.sync_to_async`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

T = TypeVar("T")
P = ParamSpec("P")

#: longest wait for a cancelled handler to finish its cleanup
CANCEL_GRACE_SECONDS = 5.0

_local = threading.local()


def event_loop() -> asyncio.AbstractEventLoop:
    """This process's (and thread's) loop, created on first use and after a fork."""
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None or loop.is_closed() or getattr(_local, "pid", None) != os.getpid():
        loop = asyncio.new_event_loop()
        _local.loop, _local.pid = loop, os.getpid()
    return loop


def run(awaitable: Awaitable[T]) -> T:
    """Run ``awaitable`` to completion on this process's loop and return its result.

    Whatever interrupts the loop - the lease alarm's ``LeaseExpired``, a ``SystemExit`` -
    cancels the coroutine, gives it :data:`CANCEL_GRACE_SECONDS` to clean up, and propagates.
    """
    loop = event_loop()
    task = loop.create_task(_as_coroutine(awaitable))
    try:
        return loop.run_until_complete(task)
    except BaseException:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                loop.run_until_complete(asyncio.wait([task], timeout=CANCEL_GRACE_SECONDS))
        raise


async def _as_coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable


def to_async(function: Callable[P, T]) -> Callable[P, Coroutine[Any, Any, T]]:
    """An async variant of a synchronous database call, for use inside async handlers."""
    from asgiref.sync import sync_to_async

    @functools.wraps(function)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        return await sync_to_async(function, thread_sensitive=True)(*args, **kwargs)

    return call
