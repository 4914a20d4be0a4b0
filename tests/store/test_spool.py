"""When the database is away: the record goes to the durable local spool and moves into
the database when it is back; when neither can take it, 503 — never an answer without a
record (SQLite and PostgreSQL)."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, OperationalError

from cds.store import database
from cds.store.decisions import _insert
from cds.store.records import AuditRecord, CardRecord
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


def _record(**changes: Any) -> AuditRecord:
    """A minimal record (no cards unless given)."""
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "recorded_at": now,
        "service": "crs-monitor",
        "hook": "patient-view",
        "hook_instance": str(uuid.uuid4()),
        "client_iss": None,
        "client_sub": None,
        "tenant": None,
        "patient": "p",
        "evaluated_at": now,
        "rule_set_version": "v",
        "rule_set_digest": "d",
        "input_digest": "i",
        "data_issues": 0,
        "data_complete": True,
        "cards": (),
        "facts": b"",
        "latency_ms": 1.0,
    }
    values.update(changes)
    return AuditRecord(**values)


def _stored_ids(service: Service, *ids: str) -> set[str]:
    with service.engine.connect() as connection:
        return set(
            connection.scalars(select(audit_records.c.id).where(audit_records.c.id.in_(ids)))
        )


def test_a_record_the_database_will_never_take_is_kept_aside_and_the_rest_move_in(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """One spooled record the database refuses for its values (here a card whose uuid is
    already stored: a duplicate key, on both databases) must not hold back the records
    spooled with it, for ever: they move in, it is kept aside in a `.rejected` file."""
    store = service.store
    shown = service.client.post("/cds-services/crs-monitor", json=grade2_monitor_request())
    taken = shown.json()["cards"][0]["uuid"]
    card = CardRecord(uuid=taken, kind="crs", indicator="info", summary="s", extension={})
    first, refused, last = _record(), _record(cards=(card,)), _record()
    for record in (first, refused, last):
        store.spool.append(record)
    (path,) = store.spool.pending()
    with caplog.at_level(logging.ERROR, logger="cds.store.spool"):
        assert store.move_spooled() == 2
    assert _stored_ids(service, first.id, refused.id, last.id) == {first.id, last.id}
    assert store.spool.pending() == []
    (line,) = path.with_suffix(".rejected").read_bytes().splitlines()
    assert orjson.loads(line)["id"] == refused.id
    assert any("refused by the database were kept aside" in r.getMessage() for r in caplog.records)
    assert taken not in caplog.text and refused.id not in caplog.text
    assert store.move_spooled() == 0  # nothing left to try again


def test_a_value_too_long_for_postgresql_does_not_hold_back_the_spool(service: Service) -> None:
    if not service.store.url.startswith("postgresql"):
        pytest.skip("SQLite does not enforce a column's length")
    store = service.store
    good, too_long = _record(), _record(hook_instance="h" * 300)
    store.spool.append(too_long)
    store.spool.append(good)
    assert store.move_spooled() == 1
    assert _stored_ids(service, good.id, too_long.id) == {good.id}


def test_an_outage_during_the_drain_leaves_every_record_for_the_next(service: Service) -> None:
    store = service.store
    records = [_record(), _record()]
    for record in records:
        store.spool.append(record)
    working = store.engine
    store.engine = database.create(UNREACHABLE)
    try:
        with pytest.raises(OperationalError):
            store.move_spooled()
    finally:
        store.engine.dispose()
        store.engine = working
    assert len(store.spool.pending()) == 1
    assert store.move_spooled() == 2
    assert _stored_ids(service, *(r.id for r in records)) == {r.id for r in records}


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


def test_a_record_the_database_refuses_mid_transaction_is_spooled(service: Service) -> None:
    # the connection works, the insert fails in the driver (here: its table is away):
    # still an answer, with the record in the spool, and in the database once it is back
    store = service.store
    with store.engine.begin() as connection:
        connection.execute(text("ALTER TABLE cards RENAME TO cards_away"))
    try:
        hook_instance, status = _call(service)
    finally:
        with store.engine.begin() as connection:
            connection.execute(text("ALTER TABLE cards_away RENAME TO cards"))
    assert status == 200
    assert not _stored(service, hook_instance)  # the transaction was rolled back whole
    assert store.spool.drain(lambda batch: store.write(batch, skip_existing=True)) == 1
    assert _stored(service, hook_instance)


def test_a_connection_lost_during_the_insert_is_not_handed_out_again(service: Service) -> None:
    if not service.store.url.startswith("postgresql"):
        pytest.skip("a SQLite connection cannot be lost")
    store = service.store
    record = _record()
    with store.engine.connect() as connection:
        backend = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with store.engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
        with pytest.raises(DBAPIError) as raised:
            _insert(connection, [record])
        assert raised.value.connection_invalidated
    store.write([record])  # through a new connection of the pool
    with store.engine.connect() as connection:
        stored = connection.scalar(
            select(audit_records.c.id).where(audit_records.c.id == record.id)
        )
    assert stored == record.id
