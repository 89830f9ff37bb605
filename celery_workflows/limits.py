"""Flow control across every worker: a concurrency cap, one (or N) at a time per key, a rate.

A queue declared with ``limits=Limits(...)`` protects what its steps call - a payment provider
that takes 20 requests a second, an ERP that must never see two updates of one customer at
once. The limits are enforced by the ledger's claim, the one door every attempt passes (a
worker's notice, the sweeper's re-publish, a redrive); a limited queue is never continued
locally, so no path goes around them. Whatever the number of worker hosts and processes:

- ``concurrency=N``: at most N attempts of the queue hold a lease at once. A slot is the lease
  itself - an attempt whose lease expired (its worker was killed) no longer counts, so nothing
  is held forever.
- ``key="customer_id"`` (a field of the payload, dotted for nested ones) with ``per_key=N``
  (default 1): at most N attempts of jobs with the same key value run at once; other keys run.
- ``rate="20/s"`` (``/s``, ``/m``, ``/h``): attempts start evenly spaced, at most one per
  1/20 s - smooth, never a burst of 20 at the top of each second.

A job the claim holds back is not charged an attempt and is never lost: held by a cap, it waits
in the ledger and the next attempt of its queue to finish sends it on (highest priority first,
then oldest), with the sweeper as a backstop; held by the rate, it is sent again for the moment
a start will be free. See docs/limits.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from .errors import ConfigurationError, PayloadError

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_PERIODS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0}
_PERIODS |= {"h": 3600.0, "hour": 3600.0}
#: the fastest rate a limit may ask for: the ledger paces starts, and a start costs a claim
MAX_RATE_PER_SECOND = 1000.0


class HeldBy(StrEnum):
    """Why the claim held a job back."""

    CONCURRENCY = "concurrency"
    KEY = "key"
    RATE = "rate"


@dataclass(frozen=True)
class Held:
    """The claim's answer for a job a limit held back (not charged, not lost)."""

    by: HeldBy
    #: for the rate: seconds until the start promised to this job (0: free again already),
    #: its notice to be sent with that countdown; None: beyond the publish horizon, the
    #: sweeper sends it when due
    retry_in: float | None = None


@dataclass(frozen=True)
class Limits:
    """A queue's flow control, across every worker. Validated when declared."""

    #: at most this many attempts of the queue at once; None: no cap
    concurrency: int | None = None
    #: payload field (``a.b`` for nested ones) whose value serialises jobs; None: no key
    key: str | None = None
    #: with ``key``: at most this many attempts per key value at once
    per_key: int = 1
    #: ``"20/s"``, ``"100/m"``, ``"5/h"``: attempts started per period, evenly spaced
    rate: str | None = None

    def __post_init__(self) -> None:
        for name in ("concurrency", "per_key"):
            value = getattr(self, name)
            if value is None and name == "concurrency":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"Limits.{name} must be an int >= 1, got {value!r}")
        if self.key is not None:
            check_key_path("Limits.key", self.key)
        if self.key is None and self.per_key != 1:
            raise ConfigurationError("Limits.per_key needs Limits.key (the field to count by)")
        if (
            self.key is not None
            and self.concurrency is not None
            and self.per_key > self.concurrency
        ):
            raise ConfigurationError(
                f"Limits.per_key ({self.per_key}) can never be reached under "
                f"Limits.concurrency ({self.concurrency})"
            )
        if self.rate is not None:
            self.interval  # noqa: B018 - parses and validates
        if self.concurrency is None and self.key is None and self.rate is None:
            raise ConfigurationError("Limits() sets no limit: give concurrency, key or rate")

    @property
    def interval(self) -> float:
        """Seconds between two starts under ``rate`` (0: no rate)."""
        if self.rate is None:
            return 0.0
        match = _RATE.match(self.rate) if isinstance(self.rate, str) else None
        if match is None:
            raise ConfigurationError(
                f"Limits.rate must read like '20/s', '100/m' or '5/h', got {self.rate!r}"
            )
        count, period = float(match[1]), _PERIODS[match[2]]
        if count <= 0:
            raise ConfigurationError(
                f"Limits.rate must allow at least one start, got {self.rate!r}"
            )
        if count / period > MAX_RATE_PER_SECOND:
            raise ConfigurationError(
                f"Limits.rate {self.rate!r} is above {MAX_RATE_PER_SECOND:g} starts a second, "
                "more than one queue's claims can pace: leave the rate out instead"
            )
        return period / count

    @property
    def caps(self) -> bool:
        """Whether a slot must be free to start (a cap or a key)."""
        return self.concurrency is not None or self.key is not None

    def describe(self) -> str:
        """The limits in a few words, for the dashboard and ``workflows stats``."""
        parts = []
        if self.concurrency is not None:
            parts.append(f"{self.concurrency} at once")
        if self.key is not None:
            parts.append(f"{self.per_key} per {self.key}")
        if self.rate is not None:
            parts.append(self.rate.replace(" ", ""))
        return ", ".join(parts)

    def check_schema(self, where: str, schema: type[BaseModel] | None) -> None:
        """Refuse a key the payload schema cannot hold (a typo found at start, not at run)."""
        if self.key is None or schema is None:
            return
        model: Any = schema
        for part in self.key.split("."):
            fields = getattr(model, "model_fields", None)
            if fields is None:
                return  # a free-form value below here: checked per payload
            if part not in fields:
                raise ConfigurationError(
                    f"{where}: Limits.key {self.key!r} is not a field of "
                    f"{schema.__name__} (fields: {', '.join(sorted(schema.model_fields))})"
                )
            model = fields[part].annotation

    def key_of(self, where: str, payload: Any) -> str:
        """The key value of a JSON ``payload`` ('' without a key); a payload without it is
        refused at enqueue, naming the field (nothing is written)."""
        if self.key is None:
            return ""
        return key_value(where, payload, self.key, "the queue's limit key")


def check_key_path(what: str, path: Any) -> None:
    """Refuse a key that cannot name a payload field (``a.b`` for nested ones)."""
    if not isinstance(path, str) or not all(p.isidentifier() for p in path.split(".")):
        raise ConfigurationError(
            f"{what} must name a payload field (dotted for nested ones), got {path!r}"
        )


def key_value(where: str, payload: Any, path: str, role: str) -> str:
    """The value at ``path`` (dotted) of a JSON ``payload``, as text; a payload without it, or
    with a value that is not a string or number, is refused naming ``role``."""
    value = payload
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise PayloadError(f"{where}: payload has no {path!r}, {role}")
        value = value[part]
    if value is None or isinstance(value, dict | list):
        raise PayloadError(f"{where}: {role} {path!r} must be a string or number, got {value!r}")
    text = str(value)
    if len(text) > 200:
        raise PayloadError(f"{where}: {role} {path!r} is longer than 200 characters")
    return text


def held_by(limits: Limits, in_queue: int, with_key: int) -> HeldBy | None:
    """The rule of the caps: what holds a job back when ``in_queue`` attempts of its queue and
    ``with_key`` of its key hold an unexpired lease (None: a slot is free)."""
    if limits.concurrency is not None and in_queue >= limits.concurrency:
        return HeldBy.CONCURRENCY
    if limits.key is not None and with_key >= limits.per_key:
        return HeldBy.KEY
    return None


def paced(next_start: float, now: float, interval: float) -> float | None:
    """The rule of the rate (the generic cell rate algorithm with no burst): a start at ``now``
    is allowed when ``next_start`` has come; the answer is the new ``next_start``, or None."""
    if next_start > now:
        return None
    return max(next_start, now) + interval
