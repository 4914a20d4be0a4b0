"""The watch's store on both real databases: SQLite in a throw-away directory and the
machine's PostgreSQL (a new database per module, dropped after)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import new_database


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A new, empty, migrated database of each kind."""
    with new_database(request.param, tmp_path_factory.mktemp("db")) as url:
        yield url
