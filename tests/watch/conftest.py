"""The watch's store on both real databases (SQLite in a throw-away directory and the
machine's PostgreSQL, a new database per module, dropped after) and a FHIR server per
module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import new_database
from tests.fhir_server import start_fhir_server


@pytest.fixture(scope="module")
def fhir_base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A FHIR server for each module of the watch's tests, not the one the whole suite
    shares: a watch enrols every patient in a risk window that its server holds (the
    census search) and polls each, four searches apiece (SEKMET answers a search of
    QuestionnaireResponses with every patient's); on the shared server, with hundreds of
    other tests' patients by then, a watch test waited on them (timeouts in a full run)."""
    with start_fhir_server(tmp_path_factory.mktemp("watch-fhir")) as base_url:
        yield base_url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A new, empty, migrated database of each kind."""
    with new_database(request.param, tmp_path_factory.mktemp("db")) as url:
        yield url
