"""Pharmacist checks (order-select / order-sign) and the physician's tocilizumab order."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.medicationrequest import MedicationRequest

from cds import fhirbuild as b
from cds.fhir.systems import UCUM
from tests.factories import (
    PATIENT,
    assert_no_empty_fields,
    draft_bundle,
    draft_order,
    grade2_resources,
    hook_request,
    hours_ago,
    prefetch,
)


def sign(
    client: TestClient,
    orders: list[dict[str, Any]],
    weight_kg: float | None = 80.0,
    toci_hours_ago: list[float] | None = None,
    crs: bool = True,
) -> dict[str, Any]:
    """The crs-order-sign answer for draft `orders` of the grade 2 patient of
    `grade2_resources` (`crs=False`: only the weight on file, no CRS findings)."""
    obs, admins = grade2_resources(weight_kg=weight_kg, toci_hours_ago=toci_hours_ago)
    if not crs:
        obs = [o for o in obs if o["code"]["coding"][0]["code"] == "29463-7"]
    body = hook_request("order-sign", {"draftOrders": draft_bundle(*orders)}, prefetch(obs, admins))
    r = client.post("/cds-services/crs-order-sign", json=body)
    assert r.status_code == 200, r.text
    assert_no_empty_fields(r.json())
    return dict(r.json())


def only_check(response: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    (card,) = response["cards"]
    return card, card["extension"]["tocilizumabCheck"]


def test_correct_order_in_mg_is_info_with_empty_problems(client: TestClient) -> None:
    card, check = only_check(sign(client, [draft_order("mr1", 640, "mg")]))
    assert card["indicator"] == "info"
    assert check["problems"] == []
    assert (check["recommendedDoseMg"], check["weightKg"]) == (640, 80)
    assert check["dosesLast24h"] == 0 and check["dosesTotal"] == 0
    assert "hoursSinceLastDose" not in check and "nextDoseAllowedAt" not in check
    assert check["weightObservedAt"]
    assert "suggestions" not in card


def test_correct_order_in_mg_per_kg(client: TestClient) -> None:
    _card, check = only_check(sign(client, [draft_order("mr1", 8, "mg/kg")]))
    assert check["problems"] == [] and check["orderedDoseMg"] == 640


def test_above_cap_is_critical_with_a_corrected_order(client: TestClient) -> None:
    card, check = only_check(sign(client, [draft_order("mr1", 960, "mg")], weight_kg=120))
    assert card["indicator"] == "critical"
    assert check["problems"] == ["dose-above-cap"]
    (suggestion,) = card["suggestions"]
    (action,) = suggestion["actions"]
    assert action["type"] == "update"
    fixed = action["resource"]
    assert fixed["id"] == "mr1"
    assert fixed["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 800
    MedicationRequest.model_validate(fixed)
    reasons = {r["code"] for r in card["overrideReasons"]}
    assert {"institution-protocol", "prescriber-confirmed", "weight-outdated"} <= reasons
    assert all(r["display"] for r in card["overrideReasons"])


def test_not_weight_based_is_warning(client: TestClient) -> None:
    card, check = only_check(sign(client, [draft_order("mr1", 12, "mg/kg")]))  # 960 for 80 kg
    assert check["problems"] == ["dose-above-cap", "dose-not-weight-based"]
    card, check = only_check(sign(client, [draft_order("mr1", 500, "mg")]))
    assert card["indicator"] == "warning"
    assert check["problems"] == ["dose-not-weight-based"]
    assert card["suggestions"][0]["actions"][0]["resource"]["dosageInstruction"][0]["doseAndRate"][
        0
    ]["doseQuantity"] == {"value": 640, "unit": "mg", "system": UCUM, "code": "mg"}


def test_corrected_dose_is_offered_but_not_recommended_within_8h_of_the_last_dose(
    client: TestClient,
) -> None:
    """500 mg for 80 kg (not 8 mg/kg), 3 h after a tocilizumab dose: a corrected order is
    offered, but not recommended while the 8 h interval forbids any dose."""
    (card,) = sign(client, [draft_order("mr1", 500, "mg")], toci_hours_ago=[3])["cards"]
    check = card["extension"]["tocilizumabCheck"]
    assert set(check["problems"]) == {"dose-not-weight-based", "interval-under-8h"}
    assert card["suggestions"][0]["isRecommended"] is False


def test_interval_under_8h_is_critical(client: TestClient) -> None:
    card, check = only_check(sign(client, [draft_order("mr1", 640, "mg")], toci_hours_ago=[7.5]))
    assert card["indicator"] == "critical"
    assert check["problems"] == ["interval-under-8h"]
    assert check["hoursSinceLastDose"] == pytest.approx(7.5, abs=0.02)
    assert check["nextDoseAllowedAt"]
    assert "suggestions" not in card


def test_fourth_in_24h_and_fifth_in_all(client: TestClient) -> None:
    _, check = only_check(sign(client, [draft_order("mr1", 640, "mg")], toci_hours_ago=[20, 12, 9]))
    assert check["problems"] == ["over-3-in-24h"] and check["dosesLast24h"] == 3
    _, check = only_check(
        sign(client, [draft_order("mr1", 640, "mg")], toci_hours_ago=[60, 40, 30, 20])
    )
    assert check["problems"] == ["over-4-total"] and check["dosesTotal"] == 4
    assert "nextDoseAllowedAt" not in check


def test_no_weight(client: TestClient) -> None:
    _card, check = only_check(sign(client, [draft_order("mr1", 640, "mg")], weight_kg=None))
    assert check["problems"] == ["no-weight"]
    assert "recommendedDoseMg" not in check
    _, check = only_check(sign(client, [draft_order("mr1", 8, "mg/kg")], weight_kg=None))
    assert check["problems"] == ["no-weight"]
    _, check = only_check(sign(client, [draft_order("mr1", 900, "mg")], weight_kg=None))
    assert check["problems"] == ["no-weight", "dose-above-cap"]


def test_no_crs_evidence_is_a_warning_not_a_block(client: TestClient) -> None:
    card, check = only_check(sign(client, [draft_order("mr1", 640, "mg")], crs=False))
    assert (card["indicator"], check["problems"]) == ("warning", ["no-crs-evidence"])


def test_weight_in_pounds(client: TestClient) -> None:
    obs, admins = grade2_resources(weight_kg=None)
    obs.append(b.weight(PATIENT, hours_ago(5), 176.37, "lb"))
    body = hook_request(
        "order-sign",
        {"draftOrders": draft_bundle(draft_order("m", 640, "mg"))},
        prefetch(obs, admins),
    )
    _, check = only_check(client.post("/cds-services/crs-order-sign", json=body).json())
    assert check["problems"] == [] and check["weightKg"] == pytest.approx(80, abs=0.01)


def test_order_select_checks_only_selected(client: TestClient) -> None:
    obs, admins = grade2_resources()
    other = {
        "resourceType": "MedicationRequest",
        "id": "mr-other",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {"text": "ondansetron"},
        "subject": {"reference": f"Patient/{PATIENT}"},
    }
    orders = draft_bundle(draft_order("a", 640, "mg"), draft_order("b", 900, "mg"), other)
    body = hook_request(
        "order-select",
        {"draftOrders": orders, "selections": ["MedicationRequest/b"]},
        prefetch(obs, admins),
    )
    r = client.post("/cds-services/crs-order-select", json=body).json()
    (card,) = r["cards"]
    assert card["extension"]["tocilizumabCheck"]["order"] == "MedicationRequest/b"


def test_sandbox_style_order_without_intent(client: TestClient) -> None:
    order = draft_order("mr1", 640, "mg", intent=None)
    order["category"] = {"text": "inpatient"}  # an object, as the Sandbox sends it
    _card, check = only_check(sign(client, [order]))
    assert check["problems"] == []


def test_overdose_in_a_sandbox_style_order_is_critical_without_a_corrected_order(
    client: TestClient,
) -> None:
    """2000 mg drafted as the CDS Hooks Sandbox sends it (no intent, category an object,
    not a list) is checked, not refused with a 400: above the 800 mg cap it is critical,
    and as the draft is not valid FHIR R4 no corrected order is offered, saying so."""
    order = draft_order("mr1", 2000, "mg", intent=None)
    order["category"] = {"text": "inpatient"}
    (card,) = sign(client, [order])["cards"]
    check = card["extension"]["tocilizumabCheck"]
    assert "dose-above-cap" in check["problems"] and card["indicator"] == "critical"
    assert "suggestions" not in card
    assert "No corrected order offered" in card["detail"]


def test_tocilizumab_named_by_a_medication_reference_in_the_draft_bundle_is_checked(
    client: TestClient,
) -> None:
    """An order naming its drug by medicationReference to a Medication drafted beside it
    (Actemra, RxNorm 612865) is checked like one coded inline: 2000 mg is above the cap."""
    order = draft_order("mr1", 2000, "mg")
    del order["medicationCodeableConcept"]
    order["medicationReference"] = {"reference": "Medication/toci"}
    med = b.medication("toci", "Actemra 20 mg/mL", "612865")
    bundle_orders = [order, med]
    (card,) = sign(client, bundle_orders)["cards"]
    assert "dose-above-cap" in card["extension"]["tocilizumabCheck"]["problems"]


def test_order_whose_medication_reference_cannot_be_resolved_says_not_checked(
    client: TestClient,
) -> None:
    """An order referencing a Medication that is not in the draft bundle is not dropped
    silently: its card says it was NOT checked."""
    order = draft_order("mr1", 2000, "mg")
    del order["medicationCodeableConcept"]
    order["medicationReference"] = {"reference": "Medication/elsewhere"}
    (card,) = sign(client, [order])["cards"]
    assert "NOT checked" in card["summary"]


def test_unreadable_order_naming_tocilizumab_says_not_checked(client: TestClient) -> None:
    """A tocilizumab draft that cannot be read (a number for its status) still gets a
    card, saying it was NOT checked."""
    order = draft_order("mr1", 640, "mg")
    order["status"] = 5
    order["note"] = [{"text": "give after methylprednisolone"}]
    (card,) = sign(client, [order])["cards"]
    assert "NOT checked" in card["summary"]


def test_order_for_another_drug_by_medication_reference_is_skipped_quietly(
    client: TestClient,
) -> None:
    """Beside a correct tocilizumab order, an ondansetron order naming its drug by
    medicationReference gets no card: one card, for tocilizumab, with no problems."""
    ond = {
        "resourceType": "MedicationRequest",
        "id": "mr-ond",
        "status": "draft",
        "intent": "order",
        "medicationReference": {"reference": "Medication/ond"},
        "subject": {"reference": f"Patient/{PATIENT}"},
    }
    med = b.medication("ond", "Ondansetron 4 mg")
    r = sign(client, [draft_order("mr1", 640, "mg"), ond, med])
    assert [c["extension"]["tocilizumabCheck"]["problems"] for c in r["cards"]] == [[]]


def test_unparseable_order_is_reported_not_500(client: TestClient) -> None:
    bad = draft_order("mr1", 640, "mg")
    bad["dosageInstruction"] = "640 mg"
    r = sign(client, [bad])
    (card,) = r["cards"]
    assert "could not be read" in card["summary"]
    locations = [i["location"] for i in r["extension"]["dataIssues"]]
    assert "context.draftOrders.entry[0].resource.dosageInstruction" in locations


def test_missing_draft_orders_is_400(client: TestClient) -> None:
    obs, admins = grade2_resources()
    body = hook_request("order-sign", {}, prefetch(obs, admins))
    r = client.post("/cds-services/crs-order-sign", json=body)
    assert r.status_code == 400 and "context.draftOrders" in r.json()["error"]


# --- the physician's card ----------------------------------------------------------


def monitor_card(client: TestClient, **kw: Any) -> dict[str, Any]:
    obs, admins = grade2_resources(**kw)
    r = client.post(
        "/cds-services/crs-monitor",
        json=hook_request("patient-view", {"encounterId": "enc1"}, prefetch(obs, admins)),
    )
    (card,) = r.json()["cards"]
    return dict(card)


def test_grade_2_card_offers_a_dosed_order(client: TestClient) -> None:
    card = monitor_card(client)
    (suggestion,) = card["suggestions"]
    assert card["selectionBehavior"] == "at-most-one"
    (action,) = suggestion["actions"]
    assert action["type"] == "create"
    order = action["resource"]
    MedicationRequest.model_validate(order)
    assert (order["status"], order["intent"]) == ("draft", "order")
    assert order["medicationCodeableConcept"]["coding"][0]["code"] == "612865"
    dosage = order["dosageInstruction"][0]
    assert dosage["doseAndRate"][0]["doseQuantity"]["value"] == 640
    assert "over 60 minutes" in dosage["text"] and "80 kg" in dosage["text"]
    assert "80 kg" in order["note"][0]["text"]
    assert order["subject"]["reference"] == f"Patient/{PATIENT}"
    assert order["encounter"]["reference"] == "Encounter/enc1"
    assert "Corticosteroids (grade 2" in card["detail"]


def test_physicians_order_passes_the_pharmacists_check(client: TestClient) -> None:
    order = monitor_card(client, weight_kg=23.5)["suggestions"][0]["actions"][0]["resource"]
    assert order["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 282
    _, check = only_check(sign(client, [order], weight_kg=23.5))
    assert check["problems"] == []


def test_no_weight_no_dose(client: TestClient) -> None:
    card = monitor_card(client, weight_kg=None)
    assert "suggestions" not in card
    assert "a weight is needed" in card["detail"]


def test_interval_blocks_the_order_and_says_when(client: TestClient) -> None:
    card = monitor_card(client, toci_hours_ago=[3])
    assert "suggestions" not in card
    assert "Next dose allowed from" in card["detail"]
    assert card["extension"]["crs"]["tocilizumab"]["problems"] == ["interval-under-8h"]
