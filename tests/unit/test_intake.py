"""The worker's Redis channel: what it changes in kombu's, against a real Redis.

Messages arriving through it are covered end to end (tests/e2e/test_bad_messages.py, the chaos
suite); here, the one thing it does that no message shows: the client it sends its commands
(acknowledgements, the unacked index) through is built once per connection pool, not once per
command, and a new pool - kombu's after a reconnect - gets a new one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection

from celery_workflows.intake import GuardedRedisChannel, guard_redis_transport
from tests.conftest import BROKER_URL

pytestmark = pytest.mark.skipif(
    not BROKER_URL.startswith("redis"), reason="the guarded channel is the Redis transport's"
)


@pytest.fixture
def channel() -> Iterator[Any]:
    with Connection(BROKER_URL) as connection:
        guard_redis_transport(connection.transport, lambda queue, raw, reason: None)
        channel = connection.channel()
        assert isinstance(channel, GuardedRedisChannel)
        yield channel


def test_commands_share_one_client_per_pool(channel: Any) -> None:
    first = channel._create_client()
    assert channel._create_client() is first
    with channel.conn_or_acquire() as client:
        assert client is first
        assert client.ping()


def test_a_new_pool_gets_a_new_client(channel: Any) -> None:
    before = channel._create_client()
    channel._pool = None  # what kombu does when it drops its connections
    after = channel._create_client()
    assert after is not before
    assert after.connection_pool is channel.pool
    assert after.ping()


def test_the_polling_client_stays_kombus_own(channel: Any) -> None:
    assert channel._create_client(asynchronous=True) is not channel._create_client()
