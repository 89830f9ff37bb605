"""How the ledger's hand-written SQL reaches the database (django_app/statements.py)."""

from __future__ import annotations

import weakref

import pytest
from django.db import connection

from django_app import statements
from django_app.statements import CACHED_SQL_LENGTH, execute, native_sql
from tests.helpers import postgres_only


def test_placeholders_are_numbered_as_postgresql_numbers_its_own():
    assert native_sql("SELECT %s, %s FROM t WHERE a = %s", "utf-8") == (
        b"SELECT $1, $2 FROM t WHERE a = $3"
    )


def test_a_doubled_percent_sign_is_a_literal_one():
    assert native_sql("SELECT 'a%%b' LIKE %s", "utf-8") == b"SELECT 'a%b' LIKE $1"


def test_named_placeholders_are_refused_with_the_statement():
    with pytest.raises(ValueError, match=r"only %s placeholders"):
        native_sql("SELECT %(name)s", "utf-8")


def test_the_same_statement_is_converted_once():
    # the hot path runs the same outcome statement for every step
    sql = "UPDATE t SET a = %s WHERE id = %s"
    assert native_sql(sql, "utf-8") is native_sql(sql, "utf-8")


@pytest.mark.usefixtures("transactional_db")
def test_statements_run_with_their_parameters_and_literal_percent_signs():
    rows = execute("SELECT %s || '%%', %s + 1", ["50", 41])
    assert [tuple(r) for r in rows] == [("50%", 42)]


@postgres_only("psycopg caches its own conversion only under 4 KB and 50 parameters")
@pytest.mark.usefixtures("transactional_db")
def test_on_postgresql_a_statement_longer_than_psycopgs_cache_limits_runs():
    values = list(range(200))
    sql = "SELECT " + " + ".join(["%s::int"] * len(values))
    assert len(sql) > 1000
    ((total,),) = execute(sql, values)
    assert total == sum(values)


@postgres_only("the fallback is psycopg's own conversion")
@pytest.mark.usefixtures("transactional_db")
def test_with_psycopg_before_3_2_statements_run_through_its_own_conversion(monkeypatch):
    # Django accepts psycopg 3.1.8, which has no RawCursor
    import psycopg

    raw_cursor = psycopg.RawCursor
    monkeypatch.setattr(statements, "_RAW", weakref.WeakKeyDictionary())  # none kept yet
    monkeypatch.delattr(psycopg, "RawCursor")
    rows = execute("SELECT %s || '%%', %s + 1", ["50", 41])
    assert [tuple(r) for r in rows] == [("50%", 42)]
    (kept,) = statements._RAW.values()
    assert not kept.native and not isinstance(kept.cursor, raw_cursor)


@postgres_only("the kept cursor is PostgreSQL's")
@pytest.mark.usefixtures("transactional_db")
def test_after_a_reconnect_statements_run_on_the_new_connection():
    # the cursor is kept with its connection: a closed one's must not be used again
    assert [tuple(r) for r in execute("SELECT %s", [1])] == [(1,)]
    connection.close()
    assert [tuple(r) for r in execute("SELECT %s", [2])] == [(2,)]


def test_a_very_long_statement_is_converted_but_not_kept():
    # enqueue_many() writes thousands of rows in one INSERT: keeping such texts would hold
    # megabytes per distinct row count
    long_sql = "SELECT " + ", ".join(["%s"] * 20_000)
    assert len(long_sql) > CACHED_SQL_LENGTH
    first = native_sql(long_sql, "utf-8")
    assert first.startswith(b"SELECT $1, $2") and first.endswith(b"$20000")
    assert native_sql(long_sql, "utf-8") is not first
