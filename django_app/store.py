"""The Django implementation of :class:`celery_workflows.store.Store`, assembled from its roles:
the hot-path ledger (:mod:`.ledger`), the sweeper's queries (:mod:`.maintenance`), operator
actions (:mod:`.operations`), runs, gates and states (:mod:`.runs`) and queue controls
(:mod:`.holds`)."""

from __future__ import annotations

from .holds import QueueHolds
from .ledger import SqlLedger
from .maintenance import SweeperQueries
from .operations import OperatorActions
from .reconnect import reconnecting
from .runs import RunRecords


@reconnecting
class DjangoStore(SqlLedger, SweeperQueries, OperatorActions, RunRecords, QueueHolds):
    """Every role on the project's default database; each method is one short transaction,
    retried on a new connection when the old one was dropped (see :mod:`.reconnect`)."""
