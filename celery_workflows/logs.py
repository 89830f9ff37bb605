"""Log lines that say which workflow they belong to.

While an attempt runs, every log record made in its thread - the toolkit's and the handler's
own, through any logger - carries ``workflow_id``, ``business_key``, ``queue``, ``job_id`` and
``attempt`` as record attributes. How they are shown is the Celery setting
``workflows_log_format``, applied to the worker's handlers when Celery sets up logging:

- ``"text"`` (default): Celery's own format, with `` [workflow=... key=... queue=... job=...
  attempt=...]`` appended to lines made during an attempt, so ``grep A-1001 worker.log`` finds
  an order's whole story;
- ``"json"``: one JSON object per line (time, level, logger, message, the fields above,
  exception) for log pipelines;
- ``"plain"``: leave the handlers alone (the attributes are still on every record, for your
  own formatter: ``%(business_key)s`` and so on).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .errors import ConfigurationError

LOG_FORMATS = ("text", "json", "plain")
FIELDS = ("workflow_id", "business_key", "queue", "job_id", "attempt")


@dataclass(frozen=True)
class LogContext:
    workflow_id: str
    business_key: str
    queue: str
    job_id: str
    attempt: int

    def as_text(self) -> str:
        key = f" key={self.business_key}" if self.business_key else ""
        return (
            f"workflow={self.workflow_id}{key} queue={self.queue} job={self.job_id} "
            f"attempt={self.attempt}"
        )


_current: ContextVar[LogContext | None] = ContextVar("celery_workflows_log", default=None)


@contextmanager
def attempt_context(context: LogContext) -> Iterator[None]:
    """Within this block, log records carry ``context``."""
    token = _current.set(context)
    try:
        yield
    finally:
        _current.reset(token)


def current() -> LogContext | None:
    return _current.get()


_factory_installed = False


def install_record_factory() -> None:
    """Make every log record carry the current attempt's fields (empty outside attempts)."""
    global _factory_installed
    if _factory_installed:
        return
    base = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base(*args, **kwargs)
        context = _current.get()
        if context is None:
            for name in FIELDS:
                setattr(record, name, "")
            record.workflow_context = ""
        else:
            # plain attribute reads: dataclasses.asdict() deep-copies every field, on every
            # record of every attempt
            for name in FIELDS:
                setattr(record, name, getattr(context, name))
            record.workflow_context = context.as_text()
        return record

    logging.setLogRecordFactory(factory)
    _factory_installed = True


class ContextFormatter(logging.Formatter):
    """Another formatter's lines, with the attempt's fields appended when there are any."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        line = self.inner.format(record)
        context = getattr(record, "workflow_context", "")
        if not context:
            return line
        first, newline, rest = line.partition("\n")  # after the message, before a traceback
        return f"{first} [{context}]{newline}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for name in FIELDS:
            value = getattr(record, name, "")
            if value != "":
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def log_format(conf: Any) -> str:
    value = conf.get("workflows_log_format", "text")
    if value not in LOG_FORMATS:
        raise ConfigurationError(
            f"workflows_log_format must be one of {LOG_FORMATS}, got {value!r}"
        )
    return str(value)


def apply_format(logger: logging.Logger, fmt: str) -> None:
    """Set ``fmt`` on the handlers Celery just configured on ``logger``."""
    if fmt == "plain":
        return
    for handler in logger.handlers:
        current_formatter = handler.formatter
        if fmt == "json":
            if not isinstance(current_formatter, JsonFormatter):
                handler.setFormatter(JsonFormatter())
        elif not isinstance(current_formatter, ContextFormatter):
            handler.setFormatter(ContextFormatter(current_formatter))
