"""Payload checks shared by jobs, events and state documents: JSON only, schema if declared."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import PayloadNotSerializableError, PayloadValidationError


def to_json(what: str, payload: Any) -> Any:
    """``payload`` in JSON form (a pydantic model is dumped by alias), or raise naming ``what``."""
    if isinstance(payload, BaseModel):
        payload = payload.model_dump(mode="json", by_alias=True)
    try:
        json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PayloadNotSerializableError(
            f"{what}: payload is not JSON-serialisable ({exc}); "
            "pass plain dicts/lists/str/numbers or a pydantic model"
        ) from exc
    return payload


def validated(what: str, schema: type[BaseModel], payload: Any) -> BaseModel:
    """``payload`` parsed by ``schema``, or :class:`PayloadValidationError` naming ``what``."""
    try:
        return schema.model_validate(payload)
    except ValidationError as exc:
        raise PayloadValidationError(
            f"{what}: payload does not match {schema.__name__}: {exc}"
        ) from exc
