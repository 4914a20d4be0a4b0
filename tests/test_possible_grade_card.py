"""The CRS card when fever may be masked by premedication (issue #9.3), over HTTP: the
ASTCT grade stays 0, the card says a possible grade, the drug, and that the labels say
to manage it as CRS; its indicator follows the possible grade."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from cds import fhirbuild as b
from tests.factories import (
    PATIENT,
    assert_no_empty_fields,
    draft_bundle,
    draft_order,
    hook_request,
    hours_ago,
    prefetch,
)


def _card(client: TestClient, obs: list[dict[str, Any]], admins: list[dict[str, Any]]) -> Any:
    body = hook_request("patient-view", {}, prefetch(obs, admins))
    response = client.post("/cds-services/crs-monitor", json=body)
    assert response.status_code == 200, response.text
    assert_no_empty_fields(response.json())
    (card,) = response.json()["cards"]
    return card


def _teclistamab_with_dexamethasone(dex_hours_before_dose: float) -> list[dict[str, Any]]:
    dose_at = 10
    return [
        b.administration(PATIENT, hours_ago(dose_at), text="TECVAYLI (teclistamab-cqyv)"),
        b.administration(
            PATIENT, hours_ago(dose_at + dex_hours_before_dose), text="dexamethasone 16 mg IV"
        ),
    ]


def test_hypotension_after_premedication_is_a_possible_grade_2_warning(
    client: TestClient,
) -> None:
    obs = [
        b.temperature(PATIENT, hours_ago(2), 37.3),
        b.blood_pressure(PATIENT, hours_ago(1), 84, 50),
        b.weight(PATIENT, hours_ago(30), 70),
    ]
    card = _card(client, obs, _teclistamab_with_dexamethasone(1))
    crs = card["extension"]["crs"]
    assert crs["grade"] == 0
    assert crs["possibleGrade"] == 2
    assert crs["feverPossiblyMaskedBy"]["drug"] == "dexamethasone"
    assert crs["feverPossiblyMaskedBy"]["at"]
    assert card["indicator"] == "warning"
    assert card["summary"].startswith("Possible CRS grade 2 (fever may be masked by premedication)")
    assert len(card["summary"]) < 140
    assert "manage a presentation consistent with CRS as CRS" in card["detail"]
    # tocilizumab for the possible grade is offered, not recommended
    (suggestion,) = card["suggestions"]
    assert suggestion["isRecommended"] is False
    assert "possible ASTCT grade 2" in str(suggestion["actions"][0]["resource"]["reasonCode"])


def test_a_pressor_after_premedication_is_a_possible_grade_3_critical(
    client: TestClient,
) -> None:
    admins = [
        *_teclistamab_with_dexamethasone(2),
        b.administration(
            PATIENT,
            hours_ago(3),
            rxnorm="7512",
            text="norepinephrine",
            period=True,
            status="in-progress",
        ),
    ]
    card = _card(client, [b.temperature(PATIENT, hours_ago(2), 37.0)], admins)
    assert (card["extension"]["crs"]["grade"], card["extension"]["crs"]["possibleGrade"]) == (0, 3)
    assert card["indicator"] == "critical"


def test_premedication_outside_its_interval_gives_no_possible_grade(client: TestClient) -> None:
    # (afebrile, charted: no temperature data gap either)
    obs = [
        b.blood_pressure(PATIENT, hours_ago(1), 84, 50),
        b.temperature(PATIENT, hours_ago(1), 37),
    ]
    card = _card(client, obs, _teclistamab_with_dexamethasone(24))
    crs = card["extension"]["crs"]
    assert crs["grade"] == 0
    assert "possibleGrade" not in crs and "feverPossiblyMaskedBy" not in crs
    assert card["indicator"] == "info"


def test_a_tocilizumab_order_for_a_possible_grade_is_not_flagged_no_crs_evidence(
    client: TestClient,
) -> None:
    obs = [b.blood_pressure(PATIENT, hours_ago(1), 84, 50), b.weight(PATIENT, hours_ago(30), 70)]
    body = hook_request(
        "order-sign",
        {"draftOrders": draft_bundle(draft_order("toci-1", 560, "mg"))},
        prefetch(obs, _teclistamab_with_dexamethasone(1)),
    )
    response = client.post("/cds-services/crs-order-sign", json=body)
    (card,) = response.json()["cards"]
    assert card["extension"]["tocilizumabCheck"]["problems"] == []


@pytest.mark.parametrize(("temperature", "flagged"), [(None, False), (37.0, True)])
def test_a_tocilizumab_order_with_findings_and_no_temperature_is_not_no_crs_evidence(
    client: TestClient, temperature: float | None, flagged: bool
) -> None:
    # on norepinephrine with SBP 82: with no temperature charted this is CRS if febrile,
    # not "CRS criteria are not met now"; charted afebrile, it is no CRS evidence
    obs = [b.systolic(PATIENT, hours_ago(1), 82), b.weight(PATIENT, hours_ago(30), 70)]
    if temperature is not None:
        obs.append(b.temperature(PATIENT, hours_ago(1), temperature))
    admins = [
        b.administration(PATIENT, hours_ago(30), text="Yescarta (axicabtagene ciloleucel)"),
        b.administration(PATIENT, hours_ago(2), period=True, rxnorm="7512", text="norepinephrine"),
    ]
    body = hook_request(
        "order-sign",
        {"draftOrders": draft_bundle(draft_order("toci-1", 560, "mg"))},
        prefetch(obs, admins),
    )
    (card,) = client.post("/cds-services/crs-order-sign", json=body).json()["cards"]
    problems = card["extension"]["tocilizumabCheck"]["problems"]
    assert ("no-crs-evidence" in problems) is flagged
