"""One clock for the whole toolkit: aware UTC datetimes from this host.

Leases are compared against this clock on every host, so worker hosts need synchronised clocks
(NTP); a skew shortens or lengthens leases by the same amount.

Every time the toolkit reads - lease expiry, a retry's or a delayed start's due time, deadlines,
approval expiry, dashboard ages - comes from :func:`utcnow`, which is what lets the test kit
(:mod:`celery_workflows.testing`) move time forward for the test process and its worker
processes alike: when ``CELERY_WORKFLOWS_CLOCK_FILE`` names a file, the number of seconds it
holds is added to the host's time. Unset (production), the only cost is one ``None`` check.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

#: environment variable naming the file that holds the clock's offset in seconds (tests only)
CLOCK_FILE_ENV = "CELERY_WORKFLOWS_CLOCK_FILE"

_offset_file: str | None = os.environ.get(CLOCK_FILE_ENV) or None
_cached: tuple[tuple[int, int], float] = ((-1, -1), 0.0)  # ((inode, mtime_ns), offset seconds)


def utcnow() -> datetime:
    now = datetime.now(UTC)
    if _offset_file is None:
        return now
    return now + timedelta(seconds=_offset())


def use_offset_file(path: str | None) -> None:
    """Read the offset from ``path`` in this process from now on (None: the host's time)."""
    global _offset_file, _cached
    _offset_file, _cached = path, ((-1, -1), 0.0)


def _offset() -> float:
    global _cached
    assert _offset_file is not None
    try:
        stat = os.stat(_offset_file)
    except FileNotFoundError:
        return 0.0
    # the test kit replaces the file (a new inode) on every change, so a change is never
    # missed even where mtimes are coarse
    key = (stat.st_ino, stat.st_mtime_ns)
    if key != _cached[0]:
        with open(_offset_file) as f:
            text = f.read().strip()
        _cached = (key, float(text) if text else 0.0)
    return _cached[1]
