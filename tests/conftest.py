"""Shared fixtures: the loaded runtime (real rule files) with its decision store in a
throw-away data directory, the in-process client, the real databases, and the FHIR
server fixture."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient

from cds.app import create_app
from cds.clock import utc_now
from cds.ids import new_uuid
from cds.runtime import Runtime
from cds.store import database
from cds.store.decisions import DecisionStore
from tests.factories import settings
from tests.fhir_server import fhir_base_url  # noqa: F401  (session fixture)

# The machine's PostgreSQL (trust auth); every test run gets a database of its own.
POSTGRES_ADMIN = "host=127.0.0.1 port=5432 dbname=test user=postgres"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("crs-data")


@pytest.fixture(scope="session")
def runtime(data_dir: Path) -> Runtime:
    return Runtime.load(settings(data_dir=data_dir))


@pytest.fixture(scope="session")
def store(runtime: Runtime) -> Iterator[DecisionStore]:
    """The decision store of the session runtime (SQLite in the throw-away data dir)."""
    opened = DecisionStore.open(runtime, new_uuid, utc_now)
    yield opened
    opened.close()


@pytest.fixture(scope="session")
def client(runtime: Runtime, store: DecisionStore) -> TestClient:
    """The service in process, with the bundled rules and default settings."""
    return TestClient(create_app(runtime, store=store))


@contextmanager
def new_postgres_database(*, migrated: bool = False) -> Iterator[str]:
    """A new, empty PostgreSQL database on 127.0.0.1:5432 (migrated to the head if
    asked), dropped after: every test run, module or test that needs one has its own."""
    name = f"crs_test_{secrets.token_hex(6)}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        if migrated:
            database.upgrade(url)
        yield url
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def new_database(kind: str, directory: Path) -> Iterator[str]:
    """A new, migrated database: SQLite in `directory`, or PostgreSQL."""
    if kind == "sqlite":
        url = f"sqlite:///{directory / 'crs.sqlite3'}"
        database.upgrade(url)
        yield url
        return
    with new_postgres_database(migrated=True) as url:
        yield url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A new, empty PostgreSQL database for this test run, dropped after."""
    with new_postgres_database() as url:
        yield url
