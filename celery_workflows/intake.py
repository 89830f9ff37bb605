"""Checks on what arrives at a worker, so no message can stop it and none vanishes unseen.

Anything can be pushed onto a queue a worker consumes: an empty string, bytes that are not
UTF-8, JSON that is not a message, a message whose body is not ``[args, kwargs, embed]``, a
notice with a job id of the wrong shape. Left alone, some of these crash the worker's main
process - inside kombu's Redis transport (celery/kombu: an item that is not a JSON message
raises out of ``Channel._brpop_read``) or inside Celery's message handling - and every workflow
on its queues stalls; others fail in a pool process and disappear with a log line.

Here each message is checked where it enters. One that cannot be run is dead-lettered with its
reason and its raw body (stored safely whatever its encoding: a text preview, base64, size and
SHA-256); the worker goes on. The toolkit's consumer (:mod:`celery_workflows.celery_integration`)
applies these checks; :class:`GuardedRedisChannel` is the narrowest wrap of kombu's Redis
channel that catches what fails before a message object exists.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

from .held import NoticeHolder, holding_message_class, holding_qos
from .payloads import storable_text

#: what a job id looks like (a UUID as 32 hex digits); anything else is not one of our notices
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
#: raw body bytes kept with a dead letter (the size and SHA-256 of the whole body are kept too)
MAX_STORED_BODY_BYTES = 64 * 1024
#: characters of the body's text preview
PREVIEW_CHARS = 2000

#: called as ``on_unreadable(queue, raw, reason)`` for an item that is not a message at all
UnreadableHandler = Callable[[str, Any, str], None]


def notice_problem(args: Any, kwargs: Any) -> str | None:
    """Why ``args``/``kwargs`` are not a queue notice ``[job_id, attempt]``, or None."""
    if not isinstance(args, list | tuple) or len(args) != 2:
        return "malformed notice: expected args [job_id, attempt]"
    job_id, attempt = args
    if not isinstance(job_id, str) or not JOB_ID.match(job_id):
        return f"malformed notice: job id {storable_text(repr(job_id))[:80]} is not 32 hex digits"
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        return f"malformed notice: attempt {storable_text(repr(attempt))[:40]} is not an int >= 1"
    if kwargs:
        return "malformed notice: expected no kwargs"
    return None


def envelope_problem(args: Any, kwargs: Any) -> str | None:
    """Why ``args``/``kwargs`` are not ``[event envelope]`` for the events task, or None."""
    if not isinstance(args, list | tuple) or len(args) != 1 or not isinstance(args[0], dict):
        return "malformed event envelope: expected one argument, the envelope as a JSON object"
    if kwargs:
        return "malformed event envelope: expected no kwargs"
    return None


def message_problem(message: Any, args_problem: Callable[[Any, Any], str | None]) -> str | None:
    """Why a Celery message (task protocol 2) cannot be run as one of our tasks, or None.

    Decodes the body in the consumer (our bodies are a few dozen bytes), so a malformed one is
    dead-lettered there instead of failing in a pool process where it would only be logged.
    """
    if message.content_type != "application/json":
        return f"content type {message.content_type!r} is not application/json (JSON only)"
    try:
        body = message.decode()
    except Exception as exc:
        return f"message body could not be decoded: {exc}"
    if not (
        isinstance(body, list)
        and len(body) == 3
        and isinstance(body[0], list)
        and isinstance(body[1], dict)
        and isinstance(body[2], dict | type(None))
    ):
        return "message body is not [args, kwargs, embed] with a list and two objects"
    return args_problem(body[0], body[1])


def stored_body(raw: Any) -> dict[str, Any]:
    """A raw message body in a form any database stores, whatever it contains."""
    if isinstance(raw, str):
        data = raw.encode("utf-8", "surrogatepass")
    elif isinstance(raw, bytes | bytearray | memoryview):
        data = bytes(raw)
    else:
        data = json.dumps(raw, default=repr).encode("utf-8", "surrogatepass")
    return {
        "text": storable_text(data[:PREVIEW_CHARS].decode("utf-8", "replace")),
        "base64": base64.b64encode(data[:MAX_STORED_BODY_BYTES]).decode("ascii"),
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "truncated": len(data) > MAX_STORED_BODY_BYTES,
    }


def message_record(message: Any) -> dict[str, Any]:
    """What a dead letter keeps of a Celery/kombu message: its headers and its raw body."""
    headers = getattr(message, "headers", None)
    return {
        "headers": _storable(headers if isinstance(headers, dict) else {"raw": repr(headers)}),
        "content_type": storable_text(str(getattr(message, "content_type", ""))),
        "body": stored_body(getattr(message, "body", b"")),
    }


def _storable(value: Any) -> Any:
    """``value`` with every string made storable and anything not JSON written as its repr."""
    if isinstance(value, dict):
        return {storable_text(str(k)): _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    if isinstance(value, str):
        return storable_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return storable_text(repr(value))


class UnreadableMessage(Exception):
    """A queue item kombu could not turn into a message; carries what was read."""

    def __init__(self, raw: Any, reason: str) -> None:
        super().__init__(reason)
        self.raw = raw
        self.reason = reason


class _RememberingCycle:
    """Kombu's queue cycle, remembering the queue its last ``BRPOP`` reply came from."""

    def __init__(self, cycle: Any) -> None:
        self._cycle = cycle
        self.last: str = ""

    def rotate(self, last_used: str) -> Any:
        self.last = last_used
        return self._cycle.rotate(last_used)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cycle, name)


class GuardedRedisChannel:
    """Mixin for kombu's Redis ``Channel``: an item that is not a valid message is handed to
    ``on_unreadable`` instead of raising out of the event loop (which stops the worker)."""

    on_unreadable: UnreadableHandler
    _queue_cycle: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._command_client: Any = None
        super().__init__(*args, **kwargs)
        self._queue_cycle = _RememberingCycle(self._queue_cycle)

    def _create_client(self, asynchronous: bool = False) -> Any:
        """One redis-py client for the commands sent outside the polling connection.

        kombu builds a new client object for each of them - two per message consumed (noting
        it unacknowledged, then acknowledging it) - and building one costs ~50 µs, most of it
        filling the client's table of reply callbacks: a tenth of the worker's main process per
        message. The object holds no connection (each command takes one from the channel's
        pool and gives it back), so one per pool serves them all; the polling client is
        kombu's own."""
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[misc]
        pool = self.pool  # type: ignore[attr-defined]
        client = self._command_client
        if client is None or client.connection_pool is not pool:
            client = self._command_client = super()._create_client()  # type: ignore[misc]
        return client

    def _brpop_read(self, **options: Any) -> Any:
        try:
            return super()._brpop_read(**options)  # type: ignore[misc]
        except UnreadableMessage as exc:
            raw, reason = exc.raw, exc.reason
        except json.JSONDecodeError as exc:
            raw, reason = exc.doc, f"queue item is not JSON: {exc}"
        except UnicodeDecodeError as exc:
            raw, reason = exc.object, f"queue item is not UTF-8: {exc}"
        self.on_unreadable(self._queue_cycle.last, raw, reason)
        return True


def guarded_message_class(base: type) -> type:
    """kombu's Redis ``Message`` class, raising :class:`UnreadableMessage` (with the payload)
    for a payload that is not a message, instead of a bare TypeError or KeyError. It also
    remembers the list it was popped from (``consumed_from``): on Redis the routing key in a
    message's delivery info is whatever its sender wrote."""

    def __init__(self: Any, payload: Any, channel: Any = None, **kwargs: Any) -> None:
        try:
            base.__init__(self, payload, channel=channel, **kwargs)  # type: ignore[misc]
        except Exception as exc:
            raw = json.dumps(payload, default=repr)  # the queue item, as kombu parsed it
            raise UnreadableMessage(raw, f"queue item is not a message: {exc!r}") from exc
        cycle = getattr(channel, "_queue_cycle", None)
        self.consumed_from = getattr(cycle, "last", "")
        if isinstance(channel, NoticeHolder):
            channel.hold(self, self.consumed_from)

    return type(f"Guarded{base.__name__}", (base,), {"__init__": __init__})


def guard_redis_transport(transport: Any, on_unreadable: UnreadableHandler) -> bool:
    """Give this (not yet connected) Redis transport guarded channels, which also hold the
    notices of ``no_ack`` queues (:mod:`celery_workflows.held`); whether it is Redis's."""
    try:
        from kombu.transport.redis import Transport as RedisTransport
    except ImportError:  # pragma: no cover - celery[redis] is a dependency
        return False
    if not isinstance(transport, RedisTransport):
        return False
    base = transport.Channel
    if issubclass(base, GuardedRedisChannel):
        return True
    transport.Channel = type(
        f"Guarded{base.__name__}",
        (GuardedRedisChannel, NoticeHolder, base),
        {
            "on_unreadable": staticmethod(on_unreadable),
            "Message": holding_message_class(guarded_message_class(base.Message)),
            "QoS": holding_qos(base.QoS),
        },
    )
    return True
