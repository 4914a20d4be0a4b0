"""Alert suppression: after a clinician acted on a CRS card at grade G, later chart opens
at grade <= G show it quietly ("Acknowledged", info) for the acknowledgement period; a
higher grade, a new exposure or the end of the period alert in full again; order checks
are never quieted (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cds import fhirbuild as b
from cds.runtime import Runtime
from cds.store import decisions
from cds.store.feedback import OUTCOME_FUTURE_LIMIT
from tests.factories import (
    draft_bundle,
    draft_order,
    grade2_resources,
    hook_request,
    hours_ago,
    now,
    prefetch,
)
from tests.store.conftest import Service, open_service

# Every chart counts back from this one instant. An exposure is known by its product and
# time, so a chart rebuilt from the wall clock a second later would be a new exposure.
CHARTED = now()


def _patient(pid: str, grade: int, product: str = "Yescarta", dose_hours: float = 72) -> Any:
    obs, _ = grade2_resources(pid=pid, anchor=CHARTED)
    admins = [b.administration(pid, hours_ago(dose_hours, CHARTED), text=product)]
    if grade >= 3:
        admins.append(
            b.administration(
                pid,
                hours_ago(1, CHARTED),
                rxnorm="7512",
                text="norepinephrine",
                period=True,
                status="in-progress",
            )
        )
    return obs, admins


def _feedback(
    service: Service, card: dict[str, Any], outcome: str, at: datetime | None = None
) -> Any:
    item: dict[str, Any] = {
        "card": card["uuid"],
        "outcome": outcome,
        "outcomeTimestamp": (at or datetime.now(UTC)).isoformat(),
    }
    if outcome == "accepted":
        item["acceptedSuggestions"] = []
    return service.client.post("/cds-services/crs-monitor/feedback", json={"feedback": [item]})


def _act(service: Service, card: dict[str, Any], outcome: str, at: datetime | None = None) -> None:
    response = _feedback(service, card, outcome, at)
    assert response.status_code == 200, response.text


def _open(service: Service, pid: str, grade: int, **kw: Any) -> dict[str, Any]:
    obs, admins = _patient(pid, grade, **kw)
    body = hook_request("patient-view", {}, prefetch(obs, admins, pid=pid), patient_id=pid)
    response = service.client.post("/cds-services/crs-monitor", json=body)
    (card,) = response.json()["cards"]
    return dict(card)


def test_an_accepted_grade_2_card_is_shown_quietly_at_the_next_chart_open(service: Service) -> None:
    pid = "supp-accepted"
    first = _open(service, pid, 2)
    assert first["indicator"] == "warning"
    _act(service, first, "accepted")
    again = _open(service, pid, 2)
    assert again["indicator"] == "info"
    assert again["summary"].startswith("Acknowledged: CRS grade 2")
    assert len(again["summary"]) < 140
    ack = again["extension"]["crs"]["acknowledged"]
    assert (ack["outcome"], ack["grade"]) == ("accepted", 2)
    assert ack["until"] > ack["at"]
    assert again["extension"]["crs"]["grade"] == 2  # the finding itself is unchanged
    assert again["suggestions"]  # the order is still at hand


def test_a_higher_grade_alerts_in_full(service: Service) -> None:
    pid = "supp-higher"
    _act(service, _open(service, pid, 2), "overridden")
    worse = _open(service, pid, 3)
    assert worse["indicator"] == "critical"
    assert "acknowledged" not in worse["extension"]["crs"]


def test_a_new_exposure_alerts_in_full(service: Service) -> None:
    pid = "supp-exposure"
    _act(service, _open(service, pid, 2), "overridden")
    other = _open(service, pid, 2, product="TECVAYLI (teclistamab)", dose_hours=10)
    assert other["indicator"] == "warning"
    assert "acknowledged" not in other["extension"]["crs"]


def test_the_end_of_the_period_alerts_in_full(service: Service) -> None:
    pid = "supp-expired"
    period = service.runtime.rules.acknowledgement
    card = _open(service, pid, 2)
    _act(service, card, "overridden", datetime.now(UTC) - period - timedelta(minutes=1))
    assert _open(service, pid, 2)["indicator"] == "warning"


def test_feedback_dated_far_ahead_is_refused_and_the_acknowledgement_stays(
    service: Service,
) -> None:
    pid = "supp-far-ahead"
    card = _open(service, pid, 2)
    _act(service, card, "overridden")
    response = _feedback(service, card, "overridden", datetime(2099, 1, 1, tzinfo=UTC))
    assert response.status_code == 400
    assert response.json()["location"] == "feedback[0].outcomeTimestamp"
    assert _open(service, pid, 2)["indicator"] == "info"


def test_feedback_dated_ahead_within_the_limit_quiets_the_next_chart_open(
    service: Service,
) -> None:
    pid = "supp-skew"
    card = _open(service, pid, 2)
    service.now = datetime.now(UTC)  # feedback and the next chart open at this instant
    _act(service, card, "overridden", service.now + OUTCOME_FUTURE_LIMIT - timedelta(seconds=1))
    again = _open(service, pid, 2)
    assert again["indicator"] == "info"
    # acted on when the feedback arrived, at the latest
    assert again["extension"]["crs"]["acknowledged"]["at"] == service.now.isoformat()


def test_another_patients_acknowledgement_changes_nothing(service: Service) -> None:
    _act(service, _open(service, "supp-a", 2), "overridden")
    assert _open(service, "supp-b", 2)["indicator"] == "warning"


def test_order_checks_are_never_quieted(service: Service) -> None:
    obs, admins = grade2_resources()
    body = hook_request(
        "order-sign",
        {"draftOrders": draft_bundle(draft_order("t1", 2000, "mg"))},
        prefetch(obs, admins),
    )
    (card,) = service.client.post("/cds-services/crs-order-sign", json=body).json()["cards"]
    response = service.client.post(
        "/cds-services/crs-order-sign/feedback",
        json={
            "feedback": [
                {
                    "card": card["uuid"],
                    "outcome": "overridden",
                    "outcomeTimestamp": datetime.now(UTC).isoformat(),
                }
            ]
        },
    )
    assert response.status_code == 200
    body["hookInstance"] = "again"
    (again,) = service.client.post("/cds-services/crs-order-sign", json=body).json()["cards"]
    assert again["indicator"] == "critical"
    assert not again["summary"].startswith("Acknowledged")


def test_feedback_stored_by_another_replica_quiets_cards_here_after_the_refresh(
    service: Service,
    runtime: Runtime,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pid = "supp-other-replica"
    card = _open(service, pid, 2)
    _, other_store, other = open_service(runtime, database_url, tmp_path / "other")
    try:
        item = {
            "card": card["uuid"],
            "outcome": "overridden",
            "outcomeTimestamp": datetime.now(UTC).isoformat(),
        }
        assert (
            other.post("/cds-services/crs-monitor/feedback", json={"feedback": [item]}).status_code
            == 200
        )
    finally:
        other_store.close()
    # until this replica reads the acknowledged patients again (at most every
    # ACKNOWLEDGED_REFRESH_SECONDS) its cards are shown in full: the safe side
    monkeypatch.setattr(decisions, "ACKNOWLEDGED_REFRESH_SECONDS", 0.0)
    assert _open(service, pid, 2)["indicator"] == "info"


def test_a_card_saying_data_are_missing_is_never_quieted(service: Service) -> None:
    # acknowledged at grade 0, then no temperature charted for 10 h: the card says so in
    # full, not "Acknowledged" (the review found the gap hidden for the whole period)
    pid = "supp-missing"
    infusion = [b.administration(pid, hours_ago(30, CHARTED), text="Yescarta")]

    def opened(observations: list[dict[str, Any]]) -> dict[str, Any]:
        body = hook_request(
            "patient-view", {}, prefetch(observations, infusion, pid=pid), patient_id=pid
        )
        (card,) = service.client.post("/cds-services/crs-monitor", json=body).json()["cards"]
        return dict(card)

    charted = opened([b.temperature(pid, hours_ago(1, CHARTED), 37.0)])
    assert charted["indicator"] == "info"
    _act(service, charted, "overridden")
    assert opened([b.temperature(pid, hours_ago(1, CHARTED), 37.0)])["summary"].startswith(
        "Acknowledged"
    )
    overdue = opened([b.temperature(pid, hours_ago(10, CHARTED), 37.0)])
    assert overdue["indicator"] == "warning"
    assert overdue["summary"].startswith("NO TEMPERATURE for 10 h")
    assert "acknowledged" not in overdue["extension"]["crs"]
