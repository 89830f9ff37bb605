"""How the ledger's raw SQL runs: the tables, the one object that knows the database's dialect,
the cursor and prepared statements, and statements sized for the parameter limit.

The ORM costs ~0.2 ms of Python per statement to compile; on a busy worker that is most of the
ledger's overhead, so the writes every job makes - insert, claim, outcome with its outbox - are
written by hand (:mod:`.ledger`, :mod:`.outcomes`). What differs between PostgreSQL, SQLite and
MariaDB/MySQL (``RETURNING``, ``ON CONFLICT`` or ``INSERT IGNORE``, appending to a JSON list,
locking a row, the outcome and its outbox in one statement) is decided by a :class:`Dialect`,
chosen from the connection's vendor; no other module branches on the vendor.
"""

from __future__ import annotations

import functools
import re
import sqlite3
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from django.db import (
    DEFAULT_DB_ALIAS,
    IntegrityError,
    connection,
    connections,
    models,
    transaction,
)
from django.db.backends.base.base import BaseDatabaseWrapper

from celery_workflows.records import NewJob

from .models import Event as EventRow
from .models import Gather, Job, QueueControl, WorkflowRun


def _columns(model: type[models.Model]) -> list[str]:
    return [str(f.column) for f in model._meta.concrete_fields]


T = TypeVar("T")

JOB = Job._meta.db_table
JOB_COLUMNS = _columns(Job)
EVENT = EventRow._meta.db_table
EVENT_COLUMNS = _columns(EventRow)
RUN = WorkflowRun._meta.db_table
CONTROL = QueueControl._meta.db_table
CONTROL_COLUMNS = _columns(QueueControl)
RUN_COLUMNS = _columns(WorkflowRun)
GATHER = Gather._meta.db_table
GATHER_COLUMNS = _columns(Gather)


def marks(n: int) -> str:
    return ", ".join(["%s"] * n)


class Dialect:
    """SQL that differs between databases. The base class speaks MariaDB/MySQL."""

    #: ``UPDATE/INSERT ... RETURNING``
    returning = False
    #: the outcome, its events, its jobs and the run's settling in ONE statement
    one_statement_outbox = False
    #: statements run as server-side prepared statements (psycopg 3)
    server_prepared = False
    #: what makes a SELECT lock the rows it reads until the transaction ends (SQLite has no
    #: row locks: its writers take turns on the whole database)
    lock_rows = " FOR UPDATE"
    #: the database's clock in Unix seconds, with a fraction (rate limits pace on it)
    epoch_now = "UNIX_TIMESTAMP(NOW(6))"
    #: the larger of its arguments
    greatest = "GREATEST"

    def relaxed_commit(self, update_sql: str) -> str:
        """``update_sql`` (an ``UPDATE ... SET ... WHERE``), committed without waiting for its
        WAL flush where the database allows it for one statement; unchanged elsewhere."""
        return update_sql

    def name_lock(self) -> str | None:
        """A statement (one parameter: a name) that holds a lock on the name until the
        transaction ends, or None where locking the rows read is enough (InnoDB locks the
        index gap a ``SELECT ... FOR UPDATE`` reads; SQLite's writers take turns anyway)."""
        return None

    def insert(self, table: str, columns: Sequence[str], rows: int, ignore: bool) -> str:
        """``INSERT`` of ``rows`` rows; ``ignore`` skips rows that hit a unique key."""
        values = ", ".join([f"({marks(len(columns))})"] * rows)
        verb = "INSERT IGNORE" if ignore else "INSERT"
        return f"{verb} INTO {table} ({', '.join(columns)}) VALUES {values}"

    def json_append(self, column: str) -> str:
        """An expression: the JSON list in ``column`` with one JSON value (a parameter) added."""
        return f"JSON_ARRAY_APPEND({column}, '$', CAST(%s AS JSON))"

    def upsert_counting(
        self, table: str, columns: Sequence[str], key: str, counter: str, rows: int = 1
    ) -> str:
        """INSERT ``rows`` rows; where ``key`` exists, add the new ``counter`` to the old one."""
        sql = self.insert(table, columns, rows, ignore=False)
        return f"{sql} ON DUPLICATE KEY UPDATE {counter} = {counter} + VALUES({counter})"


class SQLite(Dialect):
    returning = True
    lock_rows = ""
    epoch_now = "((julianday('now') - 2440587.5) * 86400.0)"
    greatest = "MAX"

    def insert(self, table: str, columns: Sequence[str], rows: int, ignore: bool) -> str:
        sql = super().insert(table, columns, rows, ignore=False)
        return f"{sql} ON CONFLICT DO NOTHING" if ignore else sql

    def json_append(self, column: str) -> str:
        return f"json_insert({column}, '$[#]', json(%s))"

    def upsert_counting(
        self, table: str, columns: Sequence[str], key: str, counter: str, rows: int = 1
    ) -> str:
        sql = self.insert(table, columns, rows, ignore=False)
        return (
            f"{sql} ON CONFLICT ({key}) DO UPDATE SET {counter} = {table}.{counter} + "
            f"excluded.{counter}"
        )


class PostgreSQL(SQLite):
    one_statement_outbox = True
    server_prepared = True
    lock_rows = " FOR UPDATE"
    epoch_now = "EXTRACT(EPOCH FROM clock_timestamp())::float8"
    greatest = "GREATEST"

    def relaxed_commit(self, update_sql: str) -> str:
        # set_config(..., is_local => true) lasts for this statement's own transaction only;
        # the UPDATE joins the one-row CTE so that it is evaluated
        head, where = update_sql.split(" WHERE ", 1)
        return (
            "WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true)) "
            f"{head} FROM relaxed WHERE {where}"
        )

    def json_append(self, column: str) -> str:
        return f"{column} || jsonb_build_array(%s::jsonb)"

    def name_lock(self) -> str | None:
        return "SELECT pg_advisory_xact_lock(hashtext(%s))"


_DIALECTS: dict[str, Dialect] = {
    "postgresql": PostgreSQL(),
    "sqlite": SQLite(),
    "mysql": Dialect(),
}


def dialect() -> Dialect:
    """The dialect of the default database connection."""
    return _dialect_of(connections[DEFAULT_DB_ALIAS])


def _dialect_of(db: BaseDatabaseWrapper) -> Dialect:
    return _DIALECTS.get(db.vendor, _DIALECTS["mysql"])


def execute(sql: str, params: Sequence[Any]) -> Any:
    """Run one statement; return the cursor's rows (empty when it returns none)."""
    return _run(sql, params, _rows)


def update(sql: str, params: Sequence[Any]) -> int:
    """Run one UPDATE; return how many rows it changed."""
    return int(_run(sql, params, _rowcount))


def _rows(cursor: Any) -> Any:
    """The rows the statement just run returned (none when it returns no rows). psycopg's
    ``pgresult`` says whether it does without building ``description`` (a column object per
    column, on every call)."""
    result = getattr(cursor, "pgresult", None)
    returns = bool(result.nfields) if result is not None else cursor.description is not None
    return cursor.fetchall() if returns else []


def _rowcount(cursor: Any) -> int:
    return int(cursor.rowcount)


def _run(sql: str, params: Sequence[Any], read: Callable[[Any], T]) -> T:
    """Run one of the ledger's statements and ``read`` its result from the cursor.

    On PostgreSQL through the connection's :class:`_RawStatements` (errors are Django's, as
    from any Django cursor); elsewhere through Django's cursor. The thread's connection is
    looked up once here: each attribute read through Django's ``connection`` proxy is a
    thread-local lookup, and the hot path makes many."""
    db = connections[DEFAULT_DB_ALIAS]
    if not _dialect_of(db).server_prepared:
        with db.cursor() as cursor:
            cursor.execute(sql, params)
            return read(cursor)
    db.ensure_connection()
    raw = db.connection
    statements = _RAW.get(db)
    if statements is None or statements.connection is not raw:  # first use, or reconnected
        statements = _RAW[db] = _RawStatements(raw)
    with db.wrap_database_errors:
        return read(statements.run(sql, params))


class _RawStatements:
    """How the ledger's statements run on one psycopg connection: on one cursor kept with it
    (making a cursor per statement cost ~5 % of a worker's Python per step), and on
    psycopg >= 3.2 a raw cursor given PostgreSQL's own ``$n`` placeholders
    (:func:`native_sql`). With prepared statements on, each statement is parsed and planned
    once per connection: that halves the database's CPU per job (planning the outcome
    statement costs more than running it)."""

    def __init__(self, connection: Any) -> None:
        import psycopg  # the PostgreSQL backend's driver (psycopg 3)

        self.connection = connection
        self.prepare = _prepare(connection)
        self.encoding = connection.info.encoding
        raw_cursor = getattr(psycopg, "RawCursor", None)
        # psycopg < 3.2 (Django accepts 3.1.8) has none: it converts %s itself
        self.native = raw_cursor is not None
        self.cursor = (raw_cursor or psycopg.Cursor)(connection)

    def run(self, sql: str, params: Sequence[Any]) -> Any:
        query = native_sql(sql, self.encoding) if self.native else sql
        self.cursor.execute(query, params, prepare=self.prepare)
        return self.cursor


#: each Django connection's statements (Django keeps one connection object per thread)
_RAW: weakref.WeakKeyDictionary[BaseDatabaseWrapper, _RawStatements] = weakref.WeakKeyDictionary()


def _prepare(raw: Any) -> bool:
    """Prepare the ledger's statements on first use when the connection ``raw`` has prepared
    statements on. Django turns them off unless ``OPTIONS["prepare_threshold"]`` is set (so that
    PgBouncer < 1.21 in transaction mode, which cannot keep them, works); the configuration
    reference recommends setting it without such a pooler."""
    return raw.prepare_threshold is not None


_PERCENT = re.compile("%(.?)", re.DOTALL)
#: statements longer than this are converted on each call, not kept: a multi-row INSERT of
#: ``enqueue_many()`` can be megabytes long and is rarely run twice with the same row count
CACHED_SQL_LENGTH = 32_768


def native_sql(sql: str, encoding: str) -> bytes:
    """``sql`` with its ``%s`` placeholders numbered as PostgreSQL's own ``$1, $2, ...`` (and
    ``%%`` as ``%``), encoded for the connection.

    psycopg converts ``%s`` itself on every call, with a Python loop over the statement's
    parts, and caches the result only for statements under 4 KB and 50 parameters - which the
    outcome statement (the hot path: the outcome, its events and jobs, the run's counters)
    exceeds: the conversion was ~10 % of a worker's Python per step. Converted once here (for
    statements up to :data:`CACHED_SQL_LENGTH`); the same bytes object each time also lets
    psycopg's prepared-statement cache find it by a hash computed once."""
    if len(sql) > CACHED_SQL_LENGTH:
        return _converted(sql, encoding)
    return _cached(sql, encoding)


def _converted(sql: str, encoding: str) -> bytes:
    out: list[str] = []
    count, last = 0, 0
    for match in _PERCENT.finditer(sql):
        out.append(sql[last : match.start()])
        mark = match.group(1)
        if mark == "s":
            count += 1
            out.append(f"${count}")
        elif mark == "%":
            out.append("%")
        else:
            raise ValueError(
                f"only %s placeholders are supported in the ledger's SQL: {sql[:300]!r}"
            )
        last = match.end()
    out.append(sql[last:])
    return "".join(out).encode(encoding)


_cached = functools.lru_cache(maxsize=512)(_converted)


def insert_rows(
    table: str, columns: list[str], rows: list[dict[str, Any]], key: str = "id"
) -> set[str]:
    """INSERT rows, skipping any that collide with a unique key; return the keys inserted.

    One statement where the dialect has ``RETURNING``; a savepoint per row elsewhere (which
    reports duplicates as errors). Must run inside a transaction.
    """
    if not rows:
        return set()
    d = dialect()
    if d.returning:
        inserted: set[str] = set()
        for batch in batches(rows, len(columns)):
            sql = d.insert(table, columns, len(batch), ignore=True) + f" RETURNING {key}"
            inserted.update(r[0] for r in execute(sql, [row[c] for row in batch for c in columns]))
        return inserted
    inserted = set()
    single = d.insert(table, columns, 1, ignore=False)
    for row in rows:
        try:
            with transaction.atomic():
                execute(single, [row[c] for c in columns])
        except IntegrityError:
            continue
        inserted.add(row[key])
    return inserted


def existing(jobs: list[NewJob]) -> list[NewJob]:
    """The jobs of ``jobs`` whose rows exist."""
    found: set[str] = set()
    for batch in batches(jobs, 1):
        rows = execute(
            f"SELECT id FROM {JOB} WHERE id IN ({marks(len(batch))})", [j.id for j in batch]
        )
        found.update(r[0] for r in rows)
    return [j for j in jobs if j.id in found]


def max_params() -> int:
    """How many parameters one statement may carry on the default database."""
    db = connections[DEFAULT_DB_ALIAS]
    if db.vendor == "sqlite":  # the library's own limit (Django assumes the oldest, 999)
        db.ensure_connection()
        return int(db.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    return int(db.features.max_query_params or 65535)  # PostgreSQL's and MySQL's protocol


def batches(items: Sequence[T], per_item: int) -> Iterator[Sequence[T]]:
    """``items`` in slices small enough for one statement each, at ``per_item`` parameters
    per item: ``enqueue_many()`` of ten thousand jobs, or a step that starts thousands of
    jobs, must not hit the parameter limit."""
    size = max(1, max_params() // per_item)
    for start in range(0, len(items), size):
        yield items[start : start + size]


@functools.cache
def cast_row(model: type[models.Model], columns: tuple[str, ...]) -> str:
    """``(CAST(%s AS type), ...)``: VALUES rows in an INSERT ... SELECT lose column types."""
    types = {f.column: f.db_type(connection) for f in model._meta.concrete_fields}
    return "(" + ", ".join(f"CAST(%s AS {types[c]})" for c in columns) + ")"
