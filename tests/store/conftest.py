"""The decision store against both real databases: SQLite in a throw-away directory and
the machine's PostgreSQL (a new database per test module, dropped after)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from cds.app import create_app
from cds.clock import Clock, utc_now
from cds.ids import new_uuid
from cds.runtime import Runtime
from cds.store.decisions import DecisionStore
from tests import factories
from tests.conftest import new_database

PSEUDONYM_KEY = "test-pseudonym-key-0123456789abcdef"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A new, empty, migrated database of each kind."""
    with new_database(request.param, tmp_path_factory.mktemp("db")) as url:
        yield url


@dataclass
class Service:
    """The service on a database, in process, with a settable clock."""

    runtime: Runtime
    store: DecisionStore
    client: TestClient
    now: datetime | None = None

    @property
    def engine(self) -> Engine:
        return self.store.engine

    def count(self, table: str) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def open_service(
    runtime: Runtime, url: str, data_dir: Path, clock: Clock = utc_now, **settings: Any
) -> tuple[Runtime, DecisionStore, TestClient]:
    rt = Runtime.load(
        factories.settings(
            data_dir=data_dir, database_url=url, pseudonym_key=PSEUDONYM_KEY, **settings
        )
    )
    store = DecisionStore.open(rt, new_uuid, clock)
    return rt, store, TestClient(create_app(rt, store=store, clock=clock))


@pytest.fixture()
def service(runtime: Runtime, database_url: str, tmp_path: Path) -> Iterator[Service]:
    holder: list[Service] = []

    def clock() -> datetime:
        return holder[0].now or utc_now()

    rt, store, client = open_service(runtime, database_url, tmp_path, clock)
    holder.append(Service(rt, store, client))
    yield holder[0]
    store.close()
