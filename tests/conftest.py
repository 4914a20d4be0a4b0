"""Shared fixtures: the loaded runtime (real rule files), and the FHIR server fixture."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from cds.app import create_app
from cds.runtime import Runtime
from cds.settings import Settings
from tests.fhir_server import fhir_base_url  # noqa: F401  (session fixture)


@pytest.fixture(scope="session")
def runtime() -> Runtime:
    return Runtime.load(Settings(_env_file=None))  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def client(runtime: Runtime) -> TestClient:
    """The service in process, with the bundled rules and default settings."""
    return TestClient(create_app(runtime))
