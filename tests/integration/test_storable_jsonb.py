"""PostgreSQL takes whatever middleware.storable makes: every output is valid jsonb (and every
storable text valid text), and reads back as the value Python decodes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings

from middleware.storable import storable_json, storable_text
from tests.unit.test_storable import LIMIT, any_text, hostile_values

pytestmark = [pytest.mark.integration, pytest.mark.sql]


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hostile_values)
def test_postgresql_accepts_every_sanitized_value_as_jsonb(conn: psycopg.Connection[Any], value: Any) -> None:
    text = storable_json(value, LIMIT)

    row = conn.execute("select %s::jsonb::text", (text,)).fetchone()

    assert row is not None
    # numbers compared as decimals: jsonb keeps 1.2e17 as 120000000000000000
    assert json.loads(row[0], parse_float=Decimal, parse_int=Decimal) == json.loads(
        text, parse_float=Decimal, parse_int=Decimal
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(any_text)
def test_postgresql_accepts_every_storable_text(conn: psycopg.Connection[Any], value: str) -> None:
    text = storable_text(value)

    row = conn.execute("select %s::text", (text,)).fetchone()

    assert row is not None and row[0] == text
