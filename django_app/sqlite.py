"""SQLite shared by several worker processes (the embedded default).

Several processes writing one SQLite file need WAL journaling (readers do not block the writer)
and a busy timeout. On Django >= 5.1 put them in ``OPTIONS`` (``init_command``,
``transaction_mode="IMMEDIATE"``, ``timeout``); older Django has no ``init_command``, so with
``CELERY_WORKFLOWS_SQLITE_WAL = True`` this app sets WAL on every new SQLite connection.
"""

from __future__ import annotations

from typing import Any

from django.db.backends.signals import connection_created


def _enable_wal(sender: Any, connection: Any, **kwargs: Any) -> None:
    if connection.vendor == "sqlite":
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")


def install(enabled: bool) -> None:
    if enabled:
        connection_created.connect(_enable_wal, dispatch_uid="celery_workflows_sqlite_wal")
