"""One clock for the whole toolkit: aware UTC datetimes from this host.

Leases are compared against this clock on every host, so worker hosts need synchronised clocks
(NTP); a skew shortens or lengthens leases by the same amount.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
