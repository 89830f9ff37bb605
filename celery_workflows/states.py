"""The state store: small JSON documents that workflow steps keep, with optimistic locking.

Each document has a scope. A run's own documents (``ctx.states`` in a handler, or
``states(correlation_id)`` anywhere) are seen only by that run's steps and are deleted with the
run when it is pruned. Shared documents (``ctx.shared_states``, or ``states()``) are seen by
every run - a rate table, a list of backorders a nightly run rechecks - and pruning never
deletes them. Every write bumps the document's version. :meth:`States.update_state` and
:meth:`States.merge_state` are compare-and-set loops, so two steps writing the same document
concurrently never lose each other's changes; :meth:`States.set_state` overwrites (last writer
wins) and says so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .coroutines import to_async
from .errors import StateConflictError
from .payloads import to_json
from .records import StateValue
from .store import Runs, get_store

#: compare-and-set retries before update_state gives up (only under pathological contention)
MAX_UPDATE_ATTEMPTS = 50


class States:
    """Access to the documents of one scope: a run's own (``correlation_id``), or shared by
    every run (``correlation_id=None``); ``writer`` is the run writing (for the audit)."""

    def __init__(
        self,
        correlation_id: str | None,
        runs: Runs,
        writer: str | None = None,
    ) -> None:
        self.correlation_id = correlation_id
        self.scope = correlation_id or ""
        self.writer = writer or correlation_id
        self._runs = runs

    @property
    def runs(self) -> Runs:
        return self._runs

    def get(self, key: str) -> StateValue | None:
        """The document and its version, or None if it was never written."""
        return self.runs.get_state(self.scope, _check_key(key))

    def get_state(self, key: str, default: Any = None) -> Any:
        found = self.get(key)
        return default if found is None else found.value

    def set_state(self, key: str, value: Any) -> int:
        """Overwrite the document (last writer wins); return its new version."""
        version = self.runs.put_state(
            self.scope, _check_key(key), _json(key, value), None, self.writer
        )
        assert version is not None  # an unconditional write cannot lose
        return version

    def compare_and_set(self, key: str, value: Any, expected_version: int) -> int:
        """Write only if the document is still at ``expected_version`` (0: does not exist yet).

        Returns the new version; raises :class:`StateConflictError` if someone wrote first.
        """
        if expected_version < 0:
            raise ValueError("expected_version must be >= 0")
        version = self.runs.put_state(
            self.scope, _check_key(key), _json(key, value), expected_version, self.writer
        )
        if version is None:
            raise StateConflictError(
                f"state {key!r} changed since version {expected_version}; read it and try again"
            )
        return version

    def update_state(self, key: str, change: Callable[[Any], Any], default: Any = None) -> Any:
        """Apply ``change(current)`` atomically (retrying on conflict); return the new value.

        ``change`` may run more than once, so it must be a pure function of its argument.
        """
        for _ in range(MAX_UPDATE_ATTEMPTS):
            found = self.get(key)
            current, version = (default, 0) if found is None else (found.value, found.version)
            new = change(current)
            try:
                self.compare_and_set(key, new, version)
            except StateConflictError:
                continue
            return new
        raise StateConflictError(
            f"state {key!r}: gave up after {MAX_UPDATE_ATTEMPTS} conflicting writers"
        )

    def merge_state(self, key: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``patch`` into the (dict) document atomically; return the merged document."""

        def merge(current: Any) -> dict[str, Any]:
            if current is not None and not isinstance(current, dict):
                raise TypeError(f"state {key!r} is not a JSON object; cannot merge into it")
            return {**(current or {}), **patch}

        result: dict[str, Any] = self.update_state(key, merge)
        return result

    # async variants, for ``async def`` handlers and views: the same calls, run in Django's
    # thread-sensitive executor (see :mod:`celery_workflows.coroutines`)

    async def aget(self, key: str) -> StateValue | None:
        return await to_async(self.get)(key)

    async def aget_state(self, key: str, default: Any = None) -> Any:
        return await to_async(self.get_state)(key, default)

    async def aset_state(self, key: str, value: Any) -> int:
        return await to_async(self.set_state)(key, value)

    async def acompare_and_set(self, key: str, value: Any, expected_version: int) -> int:
        return await to_async(self.compare_and_set)(key, value, expected_version)

    async def aupdate_state(
        self, key: str, change: Callable[[Any], Any], default: Any = None
    ) -> Any:
        return await to_async(self.update_state)(key, change, default)

    async def amerge_state(self, key: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return await to_async(self.merge_state)(key, patch)


def states(correlation_id: str | None = None) -> States:
    """The state store outside a handler (views, commands, tests): the documents of run
    ``correlation_id``, or - without it - the documents shared by every run."""
    return States(correlation_id, get_store())


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not 0 < len(key) <= 255:
        raise ValueError(f"state key must be a string of 1-255 characters, got {key!r}")
    return key


def _json(key: str, value: Any) -> Any:
    return to_json(f"state {key!r}", value)
