"""Values a client chooses that the decision store keeps in bounded columns (the
hookInstance of a call, the jti of a token): accepted up to the column's length and
refused past it with a 4xx naming the field — never a record the database refuses
(PostgreSQL enforces the lengths, SQLite does not). And a token id that cannot be
checked because the database is away: 503, never accepted unchecked (SQLite and
PostgreSQL)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from cds.app import create_app
from cds.auth import JTI_MAX_LENGTH
from cds.protocol import HOOK_INSTANCE_MAX_LENGTH
from cds.store import database
from cds.store.decisions import ReplayCheckUnavailable
from cds.store.tables import audit_records
from tests.auth_support import (
    Clock,
    bearer,
    default_trusted_clients,
    runtime_with_auth,
    token,
)
from tests.factories import grade2_monitor_request
from tests.store.conftest import Service

UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:9/none?connect_timeout=1"


def _recorded(service: Service, hook_instance: str) -> int:
    with service.engine.connect() as connection:
        return int(
            connection.scalar(
                select(func.count()).where(audit_records.c.hook_instance == hook_instance)
            )
            or 0
        )


def test_a_hook_instance_as_long_as_the_audit_keeps_is_recorded(service: Service) -> None:
    body = grade2_monitor_request()
    body["hookInstance"] = "h" * HOOK_INSTANCE_MAX_LENGTH
    response = service.client.post("/cds-services/crs-monitor", json=body)
    assert response.status_code == 200
    assert _recorded(service, body["hookInstance"]) == 1
    assert service.store.spool.pending() == []


@pytest.mark.parametrize(
    ("hook_instance", "words"),
    [
        ("h" * (HOOK_INSTANCE_MAX_LENGTH + 1), f"at most {HOOK_INSTANCE_MAX_LENGTH} characters"),
        # a NUL: answered 200 on PostgreSQL, its record refused (fuzzed)
        ("ab\u0000cd", "control characters"),
        ("ab\ncd", "control characters"),
    ],
)
def test_a_hook_instance_the_audit_cannot_keep_is_refused_naming_it_and_nothing_is_spooled(
    service: Service, hook_instance: str, words: str
) -> None:
    body = grade2_monitor_request()
    body["hookInstance"] = hook_instance
    before = service.count("audit_records")
    response = service.client.post("/cds-services/crs-monitor", json=body)
    assert response.status_code == 400
    assert response.json()["error"].startswith("request.hookInstance: ")
    assert words in response.json()["error"]
    assert service.count("audit_records") == before
    assert service.store.spool.pending() == []


@pytest.fixture
def authenticated(service: Service, tmp_path: Path) -> tuple[Service, TestClient, Clock]:
    """The service on its database with authentication on (token ids kept in the store)."""
    clock = Clock()
    runtime = runtime_with_auth(service.runtime, default_trusted_clients(tmp_path))
    app = create_app(runtime, clock=clock, store=service.store)
    return service, TestClient(app), clock


def test_a_jti_as_long_as_the_store_keeps_is_accepted_once(
    authenticated: tuple[Service, TestClient, Clock],
) -> None:
    _, client, clock = authenticated
    headers = bearer(token(clock(), jti="j" * JTI_MAX_LENGTH))
    first = client.post("/cds-services/crs-monitor", json=grade2_monitor_request(), headers=headers)
    again = client.post("/cds-services/crs-monitor", json=grade2_monitor_request(), headers=headers)
    assert first.status_code == 200
    assert again.status_code == 401 and "replay" in again.text


def test_a_token_is_not_accepted_when_its_jti_cannot_be_checked(
    authenticated: tuple[Service, TestClient, Clock],
) -> None:
    service, client, clock = authenticated
    store = service.store
    working = store.engine
    store.engine = database.create(UNREACHABLE)
    try:
        response = client.post(
            "/cds-services/crs-monitor",
            json=grade2_monitor_request(),
            headers=bearer(token(clock())),
        )
        with pytest.raises(ReplayCheckUnavailable):
            expires = clock() + timedelta(seconds=60)
            asyncio.run(store.first_use("https://ehr.example.org", "jti", expires))
    finally:
        store.engine.dispose()
        store.engine = working
    assert response.status_code == 503
    assert "could not be checked against replay" in response.json()["error"]
