"""Payload checks shared by jobs, events and state documents: JSON only, schema if declared,
storable by every supported database, and not larger than the configured limit."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import (
    ConfigurationError,
    PayloadNotSerializableError,
    PayloadTooLargeError,
    PayloadValidationError,
)

#: a NUL character as JSON writes it: ``\u0000`` after an even number of backslashes (an odd
#: number means the backslash before ``u0000`` is itself escaped text, not a NUL)
_ESCAPED_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")

#: default of ``workflows_max_payload_bytes``: the largest job or event payload (as UTF-8 JSON)
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024


def max_payload_bytes(conf: Any) -> int:
    """``workflows_max_payload_bytes`` from a Celery app's config, validated."""
    value = conf.get("workflows_max_payload_bytes", DEFAULT_MAX_PAYLOAD_BYTES)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(
            f"workflows_max_payload_bytes must be a positive int (bytes), got {value!r}"
        )
    return value


def to_json(what: str, payload: Any, max_bytes: int | None = None) -> Any:
    """``payload`` in JSON form (a pydantic model is dumped by alias), or raise naming ``what``.

    Rejected: anything JSON cannot encode, NaN/Infinity, NUL characters and unpaired
    surrogates (PostgreSQL's jsonb stores neither), and payloads larger than ``max_bytes``
    (``workflows_max_payload_bytes``).
    """
    if isinstance(payload, BaseModel):
        payload = payload.model_dump(mode="json", by_alias=True)
    try:
        encoded = json.dumps(payload, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise PayloadNotSerializableError(
            f"{what}: payload is not JSON-serialisable ({exc}); "
            "pass plain dicts/lists/str/numbers or a pydantic model"
        ) from exc
    if b"\\u0000" in encoded and _ESCAPED_NUL.search(encoded):
        raise PayloadNotSerializableError(
            f"{what}: payload contains a NUL character (\\u0000), which databases cannot store"
        )
    if max_bytes is not None and len(encoded) > max_bytes:
        raise PayloadTooLargeError(
            f"{what}: payload is {len(encoded)} bytes as JSON, more than "
            f"workflows_max_payload_bytes={max_bytes}; store large data elsewhere and pass a "
            "reference"
        )
    return payload


def validated(what: str, schema: type[BaseModel], payload: Any) -> BaseModel:
    """``payload`` parsed by ``schema``, or :class:`PayloadValidationError` naming ``what``."""
    try:
        return schema.model_validate(payload)
    except ValidationError as exc:
        raise PayloadValidationError(
            f"{what}: payload does not match {schema.__name__}: {exc}"
        ) from exc


def storable_text(text: str) -> str:
    """``text`` as every supported database stores it: NUL characters and unpaired
    surrogates (which PostgreSQL refuses) written out as escapes."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text
