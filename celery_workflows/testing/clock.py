"""A clock a test moves forward, for the test process and its worker processes alike."""

from __future__ import annotations

import os
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

from .. import clock


class TestClock:
    """Moves the toolkit's clock (:func:`celery_workflows.clock.utcnow`) by an offset.

    The offset lives in a file; this process reads it at once, and worker processes started
    with :attr:`environment` read it on every clock reading. Moving time forward makes delayed
    jobs due, leases expire, deadlines pass, approval gates expire and the next schedule slot
    come, as the sweeper of a running worker sees them within a sweep interval. It does not
    shorten Celery's own countdowns (retries due within a minute are published with one), nor
    a handler's own ``time.sleep``.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, path: str | Path | None = None) -> None:
        if path is None:
            handle, name = tempfile.mkstemp(prefix="cw-clock-", suffix=".txt")
            os.close(handle)
            path = name
        self.path = Path(path)
        self._offset = 0.0
        self._write()

    @property
    def environment(self) -> dict[str, str]:
        """Environment variables that make a worker process follow this clock."""
        return {clock.CLOCK_FILE_ENV: str(self.path)}

    def install(self) -> TestClock:
        """Make this process follow the clock."""
        clock.use_offset_file(str(self.path))
        return self

    def uninstall(self) -> None:
        clock.use_offset_file(None)
        self.path.unlink(missing_ok=True)

    def now(self) -> datetime:
        return clock.utcnow()

    @property
    def offset(self) -> timedelta:
        return timedelta(seconds=self._offset)

    def advance(self, by: timedelta | float) -> datetime:
        """Move time forward by ``by`` (a timedelta or seconds); return the new now."""
        seconds = by.total_seconds() if isinstance(by, timedelta) else float(by)
        if seconds < 0:
            raise ValueError("a test clock only moves forward (leases and due times rely on it)")
        self._offset += seconds
        self._write()
        return self.now()

    def _write(self) -> None:
        # a new file replaces the old one at once: readers never see a half-written number,
        # and the new inode tells them to read it again
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(repr(self._offset))
        os.replace(temporary, self.path)
