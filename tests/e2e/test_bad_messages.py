"""No bytes pushed onto a worker's queue can stop it, and none vanish unseen.

Each kind of bad message is either dead-lettered - with its reason and its raw body, stored
whatever its encoding - or, for a well-formed notice about a job the ledger does not know,
dropped with a warning. The same worker keeps running real jobs throughout.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from pathlib import Path

import pytest
from kombu import Exchange, Queue

from celery_workflows import list_dead_letters
from celery_workflows.testing import wait_for
from tests.conftest import BROKER_URL
from tests.proj.celery_app import app
from tests.proj.workflows import t

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("transactional_db")]

ECHO = t.queue("echo")
ON_REDIS = BROKER_URL.startswith("redis")


def envelope(content: bytes, **overrides: object) -> bytes:
    """A kombu Redis envelope around ``content``, with ``overrides`` applied."""
    data = {
        "body": base64.b64encode(content).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"task": ECHO.task_name, "id": uuid.uuid4().hex},
        "properties": {
            "body_encoding": "base64",
            "delivery_tag": uuid.uuid4().hex,
            "delivery_info": {"exchange": "", "routing_key": ECHO.qualified_name},
            "priority": 0,
        },
    }
    data.update(overrides)
    return json.dumps(data).encode()


INNER = b'[["0", 1], {}, {}]'
#: items pushed straight onto the Redis list, most not even messages (kombu's transport level):
#: (item, reason, what the dead letter keeps - the item, or the body of a message it made)
RAW_ITEMS = {
    "empty item": (b"", "not JSON", b""),
    "text": (b"hello", "not JSON", b"hello"),
    "bytes that are not UTF-8": (
        b"\xff\xfe\x00garbage",
        "not JSON",
        b"\xff\xfe\x00garbage".decode("utf-8", "replace").encode(),  # as kombu decoded it
    ),
    "a JSON string": (b'"x"', "not a message", b'"x"'),
    "a JSON list": (b"[1, 2]", "not a message", b"[1, 2]"),
    "an envelope without properties": (b'{"body": "x"}', "not a message", b'{"body": "x"}'),
    "properties that are not an object": (
        b'{"body": "", "properties": 5}',
        "not a message",
        b'{"body": "", "properties": 5}',
    ),
    "a body that is not base64": (envelope(b"x", body="!!!notbase64"), "not a message", None),
    "headers that are not an object": (envelope(INNER, headers=[1]), "not a message", None),
    "no content type": (envelope(INNER, **{"content-type": None}), "content type None", INNER),
}

#: real messages with a bad body, sent through kombu (any broker): (body, content type, reason)
MESSAGES = {
    "a body that is not JSON": (b"{not json", "application/json", "could not be decoded"),
    "a short body": (b'[["a", 1]]', "application/json", "[args, kwargs, embed]"),
    "kwargs that are not a mapping": (b'[["a", 1], [], {}]', "application/json", "[args, kw"),
    "args that are not a list": (b'["a", {}, {}]', "application/json", "[args, kwargs"),
    "one argument": (b'[["only-one"], {}, {}]', "application/json", "expected args"),
    "a job id with NUL": (b'[["a\\u0000b", 1], {}, {}]', "application/json", "32 hex"),
    "an attempt that is not a number": (
        json.dumps([["0" * 32, "one"], {}, {}]).encode(),
        "application/json",
        "attempt",
    ),
    "kwargs": (json.dumps([["0" * 32, 1], {"x": 1}, {}]).encode(), "application/json", "kwargs"),
    "pickle": (b"\x80\x04N.", "application/x-python-serialize", "not application/json"),
    "text/plain": (b"hello", "text/plain", "not application/json"),
}


def push_raw(item: bytes) -> None:
    """Put ``item`` on the queue as it is: onto the Redis list, or as an AMQP message body with
    no headers at all."""
    if ON_REDIS:
        with app.connection_for_write() as conn:
            conn.default_channel.client.lpush(ECHO.qualified_name, item)
        return
    queue = declared(ECHO.qualified_name)
    with app.connection_for_write() as conn:
        conn.Producer().publish(
            item, exchange=queue.exchange, routing_key=queue.routing_key, declare=[queue]
        )


def declared(name: str) -> Queue:
    """The queue as the toolkit declares it (RabbitMQ refuses other arguments)."""
    from celery_workflows import priorities

    if name.startswith("celery_workflows."):
        return Queue(name, Exchange(name), routing_key=name)
    priorities.declare(app, [name])
    return app.amqp.queues[name]


def publish(
    body: bytes,
    content_type: str,
    case: str,
    task: str = ECHO.task_name,
    queue_name: str = ECHO.qualified_name,
) -> None:
    queue = declared(queue_name)
    with app.connection_for_write() as conn:
        conn.Producer().publish(
            body,
            exchange=queue.exchange,
            routing_key=queue.routing_key,
            declare=[queue],
            content_type=content_type,
            content_encoding="binary" if content_type != "application/json" else "utf-8",
            headers={"task": task, "id": uuid.uuid4().hex, "case": case},
        )


def dead_letter_where(match, queue: str = ECHO.qualified_name) -> object:
    return wait_for(
        lambda: next((d for d in list_dead_letters(queue, 500) if match(d)), None),
        timeout=15,
        message="no dead letter for the message",
    )


@pytest.mark.parametrize("case", list(RAW_ITEMS))
def test_a_queue_item_that_is_not_a_message_is_dead_lettered_with_its_raw_bytes(
    case, session_worker, wait_status
):
    item, reason, kept = RAW_ITEMS[case]
    kept = item if kept is None else kept
    if not ON_REDIS:  # on RabbitMQ the bytes arrive as the body of a message without headers
        reason, kept = "rejected as invalid", item
    push_raw(item)
    digest = hashlib.sha256(kept).hexdigest()
    dead = dead_letter_where(lambda d: d.payload.get("body", {}).get("sha256") == digest)
    assert reason in dead.dead_reason
    assert base64.b64decode(dead.payload["body"]["base64"]) == kept
    assert "\x00" not in json.dumps(dead.payload)
    assert session_worker.alive()
    job = t.enqueue("echo", {"after": case})  # and the worker still runs jobs
    wait_status(job.job_id, "succeeded")


@pytest.mark.parametrize("case", list(MESSAGES))
def test_a_message_with_a_bad_body_is_dead_lettered_before_it_runs(
    case, session_worker, wait_status
):
    body, content_type, reason = MESSAGES[case]
    publish(body, content_type, case)
    dead = dead_letter_where(lambda d: d.payload.get("headers", {}).get("case") == case)
    assert reason in dead.dead_reason
    assert base64.b64decode(dead.payload["body"]["base64"]) == body
    assert session_worker.alive()
    job = t.enqueue("echo", {"after": case})
    wait_status(job.job_id, "succeeded")


def test_a_message_for_an_unregistered_task_is_dead_lettered_with_the_reason(session_worker):
    publish(b'[["x", 1], {}, {}]', "application/json", "renamed", task="celery_workflows.t.old")
    dead = dead_letter_where(lambda d: d.payload.get("headers", {}).get("case") == "renamed")
    assert "unknown task 'celery_workflows.t.old'" in dead.dead_reason
    assert dead.payload["headers"]["task"] == "celery_workflows.t.old"


@pytest.mark.parametrize(
    "queue", ["celery_workflows.events", "celery_workflows.schedules"], ids=["events", "schedules"]
)
def test_an_unknown_task_on_the_toolkits_own_queues_is_dead_lettered(start_worker, queue):
    worker = start_worker([queue], concurrency=1, name="own-queues")
    publish(
        b"[[], {}, {}]", "application/json", f"odd-{queue}", task="someone.elses", queue_name=queue
    )
    dead = dead_letter_where(
        lambda d: d.payload.get("headers", {}).get("case") == f"odd-{queue}", queue=queue
    )
    assert "unknown task 'someone.elses'" in dead.dead_reason
    assert worker.alive()
    worker.stop()


def test_a_notice_for_a_job_the_ledger_does_not_know_is_dropped_with_a_warning(
    session_worker, wait_status
):
    unknown = uuid.uuid4().hex
    ECHO.task.apply_async(args=(unknown, 1), queue=ECHO.qualified_name)
    log = Path(session_worker.log_path)
    wait_for(
        lambda: f"dropped a notice for job {unknown}" in log.read_text(),
        timeout=10,
        message="no warning for the unknown job's notice",
    )
    assert unknown not in [d.id for d in list_dead_letters(ECHO.qualified_name, 500)]
    job = t.enqueue("echo", {"after": "unknown job"})
    wait_status(job.job_id, "succeeded")
