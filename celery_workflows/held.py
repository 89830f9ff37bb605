"""Notices of the steps' queues, taken from Redis without kombu's acknowledgement bookkeeping,
and handed back by the worker that holds them.

On Redis, kombu emulates acknowledgements: each message it delivers is first copied into an
"unacked" hash and its index (one MULTI/EXEC), and deleted from them when it is acknowledged
(another), so that the messages of a consumer that died can be restored once the transport's
visibility timeout (an hour by default) has passed. For a step's notice that copy repeats what
the ledger keeps already: the job row is the job, and the sweeper sends a queued job's notice
again when nobody claimed it within ``workflows_republish_after`` (asking the broker first, so
that a notice still waiting in the queue is not doubled).

So the worker's consumer takes the notices of the declared steps' queues with ``no_ack`` - two
Redis transactions fewer per job in the worker's main process, which is what caps a worker's
throughput - and keeps in memory what kombu kept in Redis:

- a notice counts against the prefetch limit from the moment it is taken until Celery
  acknowledges it (when a pool process starts its job), as an unacknowledged message did;
- a notice the worker still holds when its channel closes (a warm shutdown, a deploy, a lost
  connection it recovers from) is pushed back to the head of its queue then, as kombu restores
  its unacknowledged messages; a rejected one with ``requeue`` goes back at once;
- a worker killed outright loses the notices it held, as it lost kombu's copies to the
  visibility timeout: the sweeper's re-publish sends them again, as it did before.

External event envelopes and schedule ticks are not in the ledger before they are delivered:
their queues keep kombu's acknowledgements. RabbitMQ acknowledges natively: nothing changes
there.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.utils.json import dumps

logger = logging.getLogger("celery_workflows.consumer")


class NoticeHolder:
    """Mixin for kombu's Redis ``Channel``: what it took from ``no_ack`` queues and has not
    seen acknowledged (delivery tag -> message)."""

    held: dict[str, Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.held = {}
        self._unacked_queues: set[str] = set()
        super().__init__(*args, **kwargs)

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._unacked_queues.add(queue)
        else:
            self._unacked_queues.discard(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)  # type: ignore[misc]

    def hold(self, message: Any, queue: str) -> None:
        """Note ``message``, just taken from ``queue``, if that queue is consumed ``no_ack``."""
        if queue in self._unacked_queues:
            self.held[message.delivery_tag] = message

    def release(self, message: Any, requeue: bool) -> bool:
        """Forget a held ``message`` (acknowledged, or rejected - pushed back if ``requeue``);
        False if it was not held."""
        if self.held.pop(message.delivery_tag, None) is None:
            return False
        if requeue:
            self.hand_back([message])
        return True

    def hand_back(self, messages: list[Any]) -> None:
        """Push ``messages`` back to the head of the queues they came from (what BRPOP takes
        next), marked redelivered, in one round trip."""
        with self.conn_or_acquire() as client:  # type: ignore[attr-defined]
            pipe = client.pipeline()
            for message in messages:
                payload = message._raw
                try:
                    payload["headers"]["redelivered"] = True
                    payload["properties"]["delivery_info"]["redelivered"] = True
                except (KeyError, TypeError):
                    pass
                priority = self._get_message_priority(payload, reverse=False)  # type: ignore[attr-defined]
                pipe.rpush(self._q_for_pri(message.consumed_from, priority), dumps(payload))  # type: ignore[attr-defined]
            pipe.execute()

    def close(self) -> None:
        held, self.held = list(self.held.values()), {}
        if held:
            try:
                self.hand_back(held)
                logger.info("handed back %d notice(s) this worker held", len(held))
            except Exception:
                # the broker is gone: the ledger still has every one of these jobs queued, and
                # the sweeper sends their notices again (workflows_republish_after)
                logger.warning(
                    "%d held notice(s) could not be handed back; the sweeper re-sends them",
                    len(held),
                    exc_info=True,
                )
        super().close()  # type: ignore[misc]


def holding_qos(base: Any) -> type:
    """kombu's Redis ``QoS``, counting the channel's held notices against the prefetch limit
    as it counts its unacknowledged messages."""

    def taken(self: Any) -> int:
        """Unacknowledged messages and held notices: what the prefetch limit bounds."""
        return len(self._delivered) - len(self._dirty) + len(self.channel.held)

    def can_consume(self: Any) -> bool:
        return not self.prefetch_count or taken(self) < self.prefetch_count

    def can_consume_max_estimate(self: Any) -> int | None:
        if not self.prefetch_count:
            return None
        return max(int(self.prefetch_count) - taken(self), 0)

    return type(
        f"Holding{base.__name__}",
        (base,),
        {"can_consume": can_consume, "can_consume_max_estimate": can_consume_max_estimate},
    )


def holding_message_class(base: Any) -> type:
    """The channel's ``Message`` class: a held notice's acknowledgement or rejection is noted
    in memory (nothing to tell Redis); others go to kombu as usual."""

    def ack(self: Any, multiple: bool = False) -> None:
        if self.channel is not None and self.channel.release(self, requeue=False):
            self._state = "ACK"
            return
        base.ack(self, multiple=multiple)

    def reject(self: Any, requeue: bool = False) -> None:
        if self.channel is not None and self.channel.release(self, requeue=requeue):
            self._state = "REQUEUED" if requeue else "REJECTED"
            return
        base.reject(self, requeue=requeue)

    def requeue(self: Any) -> None:
        reject(self, requeue=True)

    return type(base.__name__, (base,), {"ack": ack, "reject": reject, "requeue": requeue})
