"""The audit trail: one record per hook call, written before the answer, with what the
issue names and never the patient's id (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import select

from cds.scenarios import get
from cds.store.audit import export, replay
from cds.store.records import decode_facts, facts_json
from cds.store.tables import audit_records, cards
from tests.factories import (
    PATIENT,
    draft_bundle,
    draft_order,
    grade2_monitor_request,
    grade2_resources,
    hook_request,
    prefetch,
)
from tests.store.conftest import Service


def _row(service: Service, hook_instance: str) -> Any:
    with service.engine.connect() as connection:
        return connection.execute(
            select(audit_records).where(audit_records.c.hook_instance == hook_instance)
        ).one()


def test_every_call_is_recorded_with_what_it_decided(service: Service) -> None:
    body = grade2_monitor_request()
    raw = orjson.dumps(body)
    response = service.client.post(
        "/cds-services/crs-monitor", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200
    (card,) = response.json()["cards"]
    row = _row(service, body["hookInstance"])
    assert (row.service, row.hook) == ("crs-monitor", "patient-view")
    assert row.rule_set_version == service.runtime.rules.version
    assert row.rule_set_digest == service.runtime.knowledge.digest
    assert row.input_digest == hashlib.sha256(raw).hexdigest()
    assert row.data_issues == 0 and row.data_complete is True
    assert row.latency_ms > 0
    assert row.evaluated_at.tzinfo is not None and row.recorded_at >= row.evaluated_at
    (recorded,) = row.cards
    assert recorded["uuid"] == card["uuid"]
    assert (recorded["indicator"], recorded["summary"]) == (card["indicator"], card["summary"])
    assert recorded["extension"]["crs"] == card["extension"]["crs"]
    assert recorded["grade"] == 2 and recorded["kind"] == "crs"
    assert recorded["suggestions"] == [s["uuid"] for s in card["suggestions"]]
    facts = decode_facts(row.facts)
    assert {m.concept for m in facts.measurements} >= {"temperature", "systolic_bp"}
    assert any(a.concept == "axicabtagene-ciloleucel" for a in facts.administrations)


def test_the_patient_is_a_pseudonym_never_the_id(service: Service) -> None:
    body = grade2_monitor_request()
    service.client.post("/cds-services/crs-monitor", json=body)
    row = _row(service, body["hookInstance"])
    assert row.patient == service.store.pseudonyms.of(PATIENT) != PATIENT
    stored = json.dumps({k: v for k, v in row._asdict().items() if k != "facts"}, default=str)
    assert PATIENT not in stored
    assert PATIENT.encode() not in facts_json(row.facts)
    with service.engine.connect() as connection:
        patients: set[str] = set(connection.scalars(select(cards.c.patient)))
    assert PATIENT not in patients


def test_a_call_with_no_card_and_an_order_check_are_recorded_too(service: Service) -> None:
    quiet = hook_request("patient-view", {}, prefetch([], []))
    assert service.client.post("/cds-services/crs-monitor", json=quiet).json() == {"cards": []}
    assert _row(service, quiet["hookInstance"]).cards == []
    o, a = grade2_resources()
    sign = hook_request(
        "order-sign", {"draftOrders": draft_bundle(draft_order("t1", 640, "mg"))}, prefetch(o, a)
    )
    (card,) = service.client.post("/cds-services/crs-order-sign", json=sign).json()["cards"]
    (recorded,) = _row(service, sign["hookInstance"]).cards
    assert recorded["kind"] == "order-check"
    assert recorded["extension"]["tocilizumabCheck"] == card["extension"]["tocilizumabCheck"]
    snapshot = decode_facts(_row(service, sign["hookInstance"]).facts)
    assert snapshot.orders is not None and snapshot.orders[0].dose_value == 640


def test_a_refused_call_is_not_a_decision_and_is_not_recorded(service: Service) -> None:
    before = service.count("audit_records")
    response = service.client.post("/cds-services/crs-monitor", json={"hook": "patient-view"})
    assert response.status_code == 400
    assert service.count("audit_records") == before


def test_replay_gives_the_same_cards_with_the_same_rules(service: Service) -> None:
    body = grade2_monitor_request()
    service.client.post("/cds-services/crs-monitor", json=body)
    (result,) = replay(service.engine, service.runtime, body["hookInstance"])
    assert result.same, (result.recorded, result.replayed)
    assert result.recorded[0]["crs"]["grade"] == 2


def test_replay_shows_a_changed_rule(service: Service, runtime: Any) -> None:
    body = grade2_monitor_request()
    service.client.post("/cds-services/crs-monitor", json=body)
    stricter = type(service.runtime).load(
        service.runtime.settings.model_copy(update={"hypotension_systolic_below_mmhg": 80.0})
    )
    (result,) = replay(service.engine, stricter, body["hookInstance"])
    assert not result.same
    assert result.replayed[0]["crs"]["grade"] == 1


def test_export_filters_by_service_and_time(service: Service) -> None:
    body = grade2_monitor_request()
    service.client.post("/cds-services/crs-monitor", json=body)
    rows = list(export(service.engine, service="crs-monitor"))
    assert body["hookInstance"] in {r["hook_instance"] for r in rows}
    assert all(r["service"] == "crs-monitor" and "facts" not in r for r in rows)
    assert list(export(service.engine, service="crs-order-select")) == []


def test_replay_of_a_call_with_an_icans_card(service: Service) -> None:
    scenario = get("icans-g3-tisacel-seizure")
    body = hook_request("patient-view", {}, scenario.prefetch(datetime.now(UTC)))
    body["context"]["patientId"] = scenario.patient_id
    cards_shown = service.client.post("/cds-services/crs-monitor", json=body).json()["cards"]
    assert any("icans" in c["extension"] for c in cards_shown)
    (result,) = replay(service.engine, service.runtime, body["hookInstance"])
    assert result.same, (result.recorded, result.replayed)
    assert any("icans" in card for card in result.replayed)


def test_replay_of_a_call_whose_infusion_time_could_not_be_read(service: Service) -> None:
    # the card that says so is replayed from the record (the unread administration is
    # kept with the facts)
    obs, admins = grade2_resources()
    admins[0]["effectiveDateTime"] = "yesterday"
    body = hook_request("patient-view", {}, prefetch(obs, admins))
    (card,) = service.client.post("/cds-services/crs-monitor", json=body).json()["cards"]
    assert "CRS risk not checked" in card["summary"]
    (result,) = replay(service.engine, service.runtime, body["hookInstance"])
    assert result.same, (result.recorded, result.replayed)
    assert len(result.replayed) == 1
