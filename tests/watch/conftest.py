"""The watch's store on both real databases: SQLite in a throw-away directory and the
machine's PostgreSQL (a new database per module, dropped after)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest

from cds.store import database
from tests.conftest import POSTGRES_ADMIN


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A new, empty, migrated database of each kind."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'crs.sqlite3'}"
        database.upgrade(url)
        yield url
        return
    name = f"crs_test_{secrets.token_hex(6)}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    database.upgrade(url)
    try:
        yield url
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
