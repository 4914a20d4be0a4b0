"""Integration fixtures: the scenario library loaded into the FHIR server under test.

The FHIR server is addressed only through `fhir_base_url` (CRS_TEST_FHIR_BASE_URL or a
throw-away SEKMET), so these tests run unchanged against any FHIR R4 server.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import orjson
import pytest

from cds.scenarios import library
from tests.integration.support import StubServer, stub_server


@pytest.fixture(scope="session")
def anchor() -> datetime:
    """When the scenarios were loaded: their times count back from here."""
    return datetime.now(UTC)


@pytest.fixture(scope="session")
def loaded(fhir_base_url: str, anchor: datetime) -> str:
    """Every scenario PUT into the FHIR server (one transaction each); its base URL."""
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    with httpx.Client(timeout=30.0) as client:
        for scenario in library().values():
            response = client.post(
                fhir_base_url, content=orjson.dumps(scenario.transaction(anchor)), headers=headers
            )
            assert response.status_code == 200, f"{scenario.id}: {response.text[:2000]}"
    return fhir_base_url


@pytest.fixture(scope="session")
def stub() -> Iterator[StubServer]:
    """Misbehaving FHIR servers on 127.0.0.1 (500, slow, 401, not JSON, …)."""
    with stub_server() as server:
        yield server
