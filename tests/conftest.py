"""Shared fixtures: the loaded runtime (real rule files), and the FHIR server fixture."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cds.runtime import Runtime
from cds.settings import Settings
from tests.fhir_server import fhir_base_url  # noqa: F401  (session fixture)


@pytest.fixture(scope="session")
def runtime() -> Runtime:
    return Runtime.load(Settings(_env_file=None))  # type: ignore[call-arg]


@pytest.fixture()
def env_clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(__import__("os").environ):
        if name.startswith("CRS_") and name != "CRS_TEST_FHIR_BASE_URL":
            monkeypatch.delenv(name)
    yield
