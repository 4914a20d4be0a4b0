"""When the database is away: the record goes to the durable local spool and moves into
the database when it is back; when neither can take it, 503 — never an answer without a
record (SQLite and PostgreSQL)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import select

from cds.store import database
from cds.store.spool import Spool
from cds.store.tables import audit_records
from tests.factories import grade2_monitor_request
from tests.store.conftest import Service

UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:9/none?connect_timeout=1"


def _call(service: Service) -> tuple[str, int]:
    body = grade2_monitor_request()
    response = service.client.post("/cds-services/crs-monitor", json=body)
    return body["hookInstance"], response.status_code


def _stored(service: Service, hook_instance: str) -> bool:
    with service.engine.connect() as connection:
        found = connection.scalar(
            select(audit_records.c.id).where(audit_records.c.hook_instance == hook_instance)
        )
    return found is not None


def test_a_record_the_database_cannot_take_is_spooled_then_moved_in(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    store = service.store
    working = store.engine
    store.engine = database.create(UNREACHABLE)
    try:
        with caplog.at_level(logging.WARNING, logger="cds.store"):
            hook_instance, status = _call(service)
        assert status == 200  # decision support does not go dark
        assert any("record spooled" in r.getMessage() for r in caplog.records)
        assert store.spool.pending()
    finally:
        store.engine.dispose()
        store.engine = working
    assert not _stored(service, hook_instance)
    moved = store.spool.drain(lambda batch: store.write(batch, skip_existing=True))
    assert moved == 1
    assert _stored(service, hook_instance)
    assert store.spool.pending() == []
    # a drain repeated (e.g. after a crash half-way) adds nothing twice
    assert store.spool.drain(lambda batch: store.write(batch, skip_existing=True)) == 0


def test_a_spool_left_by_a_dead_process_is_drained_by_another(service: Service) -> None:
    store = service.store
    working = store.engine
    store.engine = database.create(UNREACHABLE)
    try:
        hook_instance, _ = _call(service)
    finally:
        store.engine.dispose()
        store.engine = working
    (path,) = store.spool.pending()
    claimed = path.with_name(f"{path.name}.draining-999999")  # claimed, then the process died
    path.rename(claimed)
    other = Spool(store.spool.directory)
    assert other.drain(lambda batch: store.write(batch, skip_existing=True)) == 1
    assert _stored(service, hook_instance)


def test_neither_database_nor_spool_is_503_with_no_answer(service: Service, tmp_path: Path) -> None:
    store = service.store
    working, spool = store.engine, store.spool
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    store.engine = database.create(UNREACHABLE)
    store.spool = Spool(blocker / "spool")
    try:
        _, status = _call(service)
        response_body = service.client.post(
            "/cds-services/crs-monitor",
            json=grade2_monitor_request(),
        ).json()
    finally:
        store.engine.dispose()
        store.engine, store.spool = working, spool
    assert status == 503
    assert "no answer is given without a record" in response_body["error"]
    assert "cards" not in response_body


def test_a_torn_line_is_kept_aside_not_dropped(service: Service) -> None:
    store = service.store
    store.spool.directory.mkdir(parents=True, exist_ok=True)
    torn = store.spool.directory / "spool-1-torn.jsonl"
    torn.write_bytes(b'{"id": "cut sho')
    assert store.spool.drain(lambda batch: store.write(batch, skip_existing=True)) == 0
    assert (store.spool.directory / "spool-1-torn.corrupt").read_bytes() == b'{"id": "cut sho'
