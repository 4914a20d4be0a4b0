"""Pharmacist checks (order-select / order-sign) and the physician's tocilizumab order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.medicationrequest import MedicationRequest
from hypothesis import given, settings
from hypothesis import strategies as st

from cds import fhirbuild as b
from cds.app import create_app
from cds.fhir import models
from cds.fhir.orders import ordered_dose
from cds.fhir.systems import UCUM
from cds.runtime import Runtime
from cds.store.decisions import DecisionStore
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
    return sign_with(client, orders, obs, admins)


def sign_with(
    client: TestClient,
    orders: list[dict[str, Any]],
    obs: list[dict[str, Any]],
    admins: list[dict[str, Any]],
) -> dict[str, Any]:
    """The crs-order-sign answer for draft `orders` of a patient with these resources."""
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


# --- the dose as written: mass units, unreadable doses, no dose at all ----------------


@pytest.mark.parametrize(
    ("value", "unit", "weight_kg", "mg", "problems", "indicator"),
    [
        # 960 mg for 120 kg is the weight-based dose, above the 800 mg cap, in any mass unit
        (960000, "ug", 120, 960, ["dose-above-cap"], "critical"),
        (960000, "mcg", 120, 960, ["dose-above-cap"], "critical"),
        (960000, "\u00b5g", 120, 960, ["dose-above-cap"], "critical"),  # micro sign
        (0.96, "g", 120, 960, ["dose-above-cap"], "critical"),
        (0.00096, "kg", 120, 960, ["dose-above-cap"], "critical"),
        (800000, "ug", 100, 800, [], "info"),  # at the cap: not above it
        (0.8, "g", 100, 800, [], "info"),
        (640000, "ug", 80, 640, [], "info"),
    ],
)
def test_mass_units_are_converted_exactly_and_checked_as_mg(
    client: TestClient,
    value: float,
    unit: str,
    weight_kg: float,
    mg: float,
    problems: list[str],
    indicator: str,
) -> None:
    """960000 µg is 960 mg: above the cap and critical, as 960 mg is; 800000 µg is 800 mg,
    at the cap, not above it."""
    card, check = only_check(sign(client, [draft_order("mr1", value, unit)], weight_kg))
    assert check["orderedDoseMg"] == mg
    assert (check["problems"], card["indicator"]) == (problems, indicator)
    if problems:
        action = card["suggestions"][0]["actions"][0]
        assert action["resource"]["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"][
            "value"
        ] == min(mg, 800)


def _without(order: dict[str, Any], *keys: str) -> dict[str, Any]:
    quantity = order["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]
    for key in keys:
        del quantity[key]
    return order


def _bounded(order: dict[str, Any], comparator: str) -> dict[str, Any]:
    """The order's dose as a bound (checked as exactly its value: found by fuzzing)."""
    order["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["comparator"] = comparator
    return order


@pytest.mark.parametrize(
    ("order", "found"),
    [
        (draft_order("mr1", 5, "mL"), "'mL' is a volume, not a mass"),
        (draft_order("mr1", 50, "mL"), "'mL' is a volume, not a mass"),  # 1000 mg at 20 mg/mL
        (_without(draft_order("mr1", 640, "mg"), "unit", "code"), "the dose has no unit"),
        (draft_order("mr1", 640, "mg/m2"), "'mg/m2' is not a mass unit"),
        (draft_order("mr1", 2, "{vial}"), "'{vial}' is not a mass unit"),
        (_without(draft_order("mr1", 640, "mg"), "value"), "has no value"),
        (_bounded(draft_order("mr1", 560, "mg"), "<"), "is a bound, not a dose"),
        (_bounded(draft_order("mr1", 560, "mg"), ">="), "is a bound, not a dose"),
    ],
    ids=["5 mL", "50 mL", "no unit", "mg/m2", "vials", "no value", "<560 mg", ">=560 mg"],
)
def test_dose_not_readable_as_a_mass_is_its_own_problem(
    client: TestClient, order: dict[str, Any], found: str
) -> None:
    """A dose the service cannot read as a mass is `dose-unreadable`, a warning: never
    compared with the cap or the weight-based dose, never "corrected"; the card says
    what was found and that the pharmacist must verify the dose by hand."""
    card, check = only_check(sign(client, [order]))
    assert (check["problems"], card["indicator"]) == (["dose-unreadable"], "warning")
    assert "orderedDoseMg" not in check
    assert "suggestions" not in card
    assert found in card["detail"] and "verify it by hand" in card["detail"]
    assert "Correct the dose" not in card["detail"]


def test_order_without_any_dose_is_unreadable(client: TestClient) -> None:
    order = draft_order("mr1", 640, "mg")
    del order["dosageInstruction"][0]["doseAndRate"]
    card, check = only_check(sign(client, [order]))
    assert (check["problems"], card["indicator"]) == (["dose-unreadable"], "warning")
    assert "the order has no dose" in card["detail"]


@pytest.mark.parametrize(
    ("value", "unit", "weight_kg", "problems"),
    [
        (0, "mg", 80.0, ["dose-invalid"]),
        (-100, "mg", 80.0, ["dose-invalid"]),
        (-8, "mg/kg", 80.0, ["dose-invalid"]),
        (0, "mL", 80.0, ["dose-invalid"]),  # no dose in any unit
        (-100, "mg", None, ["no-weight", "dose-invalid"]),
        (0, "mg/kg", None, ["no-weight", "dose-invalid"]),
    ],
)
def test_zero_or_negative_dose_is_invalid_and_critical(
    client: TestClient, value: float, unit: str, weight_kg: float | None, problems: list[str]
) -> None:
    """A dose ≤ 0 is `dose-invalid`, critical, and no "correct to …" advice is computed
    from it."""
    card, check = only_check(sign(client, [draft_order("mr1", value, unit)], weight_kg))
    assert (check["problems"], card["indicator"]) == (problems, "critical")
    assert "suggestions" not in card
    assert "Dose invalid" in card["detail"] and "Correct the dose" not in card["detail"]


def test_which_dose_problems_are_critical_is_the_alerting_policy(
    runtime: Runtime, store: DecisionStore
) -> None:
    """`dose-invalid` is critical by rules/alerting.yaml; an institution may make an
    unreadable dose critical too (its policy names the new codes)."""
    assert "dose-invalid" in runtime.knowledge.alerting.order_check.critical_problems
    alerting = runtime.knowledge.alerting
    policy = alerting.order_check.model_copy(update={"critical_problems": ["dose-unreadable"]})
    knowledge = replace(
        runtime.knowledge, alerting=alerting.model_copy(update={"order_check": policy})
    )
    client = TestClient(create_app(replace(runtime, knowledge=knowledge), store=store))
    unreadable, _ = only_check(sign(client, [draft_order("mr1", 5, "mL")]))
    over, _ = only_check(sign(client, [draft_order("mr1", 960, "mg")], weight_kg=120))
    assert (unreadable["indicator"], over["indicator"]) == ("critical", "warning")


@pytest.mark.parametrize(
    ("code", "unit", "problems"),
    [
        ("258684004", "mg", ["dose-above-cap"]),  # a SNOMED CT unit code: its unit is read
        ("258684004", "mL", ["dose-unreadable"]),
        ("mL", "mg", ["dose-unreadable"]),  # a code the service reads wins over the text
        ("258684004", "tablets", ["dose-unreadable"]),
    ],
)
def test_a_dose_unit_code_the_service_does_not_read_falls_back_to_its_unit(
    client: TestClient, code: str, unit: str, problems: list[str]
) -> None:
    order = draft_order("mr1", 960, unit)
    quantity = order["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]
    quantity.update(system="http://snomed.info/sct", code=code)
    _card, check = only_check(sign(client, [order], weight_kg=120))
    assert check["problems"] == problems


@settings(deadline=None)
@given(mg=st.integers(min_value=1, max_value=10_000_000))
def test_whole_mg_read_in_g_and_ug_is_exact(mg: int) -> None:
    """n mg written in g or µg reads back as exactly n mg (no 960.0000000000001)."""
    for value, unit in ((mg, "mg"), (mg * 1000, "ug"), (mg / 1000, "g"), (mg * 1000, "mcg")):
        order = models.MedicationRequest.model_validate(draft_order("m", value, unit))
        assert ordered_dose(order, None).mg == mg, (value, unit)


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


def test_entries_not_read_are_said_on_the_order_card(client: TestClient) -> None:
    # the CRS evidence the check finds missing may be an entry it could not read (an O2
    # flow of 200 L/min, a unit error): the pharmacist's card says entries were left out
    obs, admins = grade2_resources()
    obs = [o for o in obs if o["code"]["coding"][0]["code"] == "29463-7"]
    obs.append(b.oxygen_flow(PATIENT, hours_ago(1), 200))
    body = hook_request(
        "order-sign",
        {"draftOrders": draft_bundle(draft_order("mr1", 640, "mg"))},
        prefetch(obs, admins),
    )
    card, check = only_check(client.post("/cds-services/crs-order-sign", json=body).json())
    assert check["problems"] == ["no-crs-evidence"]
    assert "**Data not read:** 1 of the patient's entries" in card["detail"]
    _card, _ = only_check(sign(client, [draft_order("mr1", 640, "mg")], crs=False))
    assert "Data not read" not in _card["detail"]


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


def _select(client: TestClient, selections: list[str], full_urls: bool = False) -> Any:
    obs, admins = grade2_resources()
    cbc = {"resourceType": "ServiceRequest", "id": "cbc", "status": "draft", "intent": "order"}
    orders = draft_bundle(draft_order("a", 640, "mg"), draft_order("b", 900, "mg"), cbc)
    if full_urls:
        for entry in orders["entry"]:
            entry["fullUrl"] = f"urn:uuid:order-{entry['resource']['id']}"
    body = hook_request(
        "order-select",
        {"draftOrders": orders, "selections": selections},
        prefetch(obs, admins),
    )
    return client.post("/cds-services/crs-order-select", json=body).json()


def _checked(answer: Any) -> list[str]:
    return sorted(c["extension"]["tocilizumabCheck"]["order"] for c in answer["cards"])


def _issue_locations(answer: Any) -> set[str]:
    holders = [answer, *answer["cards"]]
    return {i["location"] for h in holders for i in h.get("extension", {}).get("dataIssues", [])}


def test_a_selection_naming_no_draft_order_is_reported_and_every_order_checked(
    client: TestClient,
) -> None:
    # (it gave no card and no message: the pharmacist's selected order was not checked)
    answer = _select(client, ["MedicationRequest/nope"])
    assert _checked(answer) == ["MedicationRequest/a", "MedicationRequest/b"]
    assert "context.selections[0]" in _issue_locations(answer)
    answer = _select(client, ["MedicationRequest/b", "MedicationRequest/nope"])
    assert _checked(answer) == ["MedicationRequest/b"]
    assert "context.selections[1]" in _issue_locations(answer)


def test_a_selection_of_another_order_type_checks_no_tocilizumab_order(
    client: TestClient,
) -> None:
    # (a lab order selected: no tocilizumab card, and nothing to report)
    answer = _select(client, ["ServiceRequest/cbc"])
    assert answer["cards"] == []
    assert "context.selections[0]" not in _issue_locations(answer)


def test_a_selection_may_name_the_entry_by_its_full_url(client: TestClient) -> None:
    answer = _select(client, ["urn:uuid:order-b"], full_urls=True)
    assert _checked(answer) == ["MedicationRequest/b"]
    assert "context.selections[0]" not in _issue_locations(answer)


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


@pytest.mark.parametrize("value", [True, False], ids=["true", "false"])
def test_a_boolean_dose_is_never_read_as_a_number(client: TestClient, value: object) -> None:
    """`true` is not 1 mg: the order is not read, and the card says where it is wrong
    (lax validation read it as 1)."""
    order = draft_order("mr1", 640, "mg")
    order["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] = value
    (card,) = sign(client, [order])["cards"]
    assert card["indicator"] == "warning"
    assert "could not be read and was NOT checked" in card["summary"]
    assert "tocilizumabCheck" not in card["extension"]
    (issue,) = card["extension"]["dataIssues"]
    assert issue["location"].endswith("doseAndRate[0].doseQuantity.value")


def one_toci_dose(
    hours_ago_: float, chart: Callable[[dict[str, Any]], None]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The grade 2 patient of `grade2_resources` (80 kg) with one tocilizumab dose
    `hours_ago_` hours ago, as `chart` changes it."""
    obs, admins = grade2_resources(weight_kg=80.0, toci_hours_ago=[hours_ago_])
    (toci,) = [a for a in admins if a["medicationCodeableConcept"]["text"] == "tocilizumab"]
    chart(toci)
    return obs, admins


def without_offset(administration: dict[str, Any]) -> None:
    administration["effectiveDateTime"] = administration["effectiveDateTime"][:19]


def test_a_previous_dose_whose_time_cannot_be_read_is_not_passed_over(client: TestClient) -> None:
    """A dose 4 h ago charted without a time zone: the order 'checked out' with 'No
    tocilizumab on record'. It is a dose all the same: the interval and the counts cannot
    be checked, and the card says so."""
    correct = draft_order("mr1", 640, "mg")
    card, check = only_check(sign_with(client, [correct], *one_toci_dose(4, without_offset)))
    assert check["problems"] == ["dose-time-unknown"]
    assert card["indicator"] == "warning"
    assert check["dosesTotal"] == 1
    assert "time that cannot be read" in card["detail"]
    assert "No tocilizumab on record" not in card["detail"]


def test_patient_view_offers_no_order_after_a_dose_whose_time_cannot_be_read(
    client: TestClient,
) -> None:
    obs, admins = one_toci_dose(4, without_offset)
    r = client.post(
        "/cds-services/crs-monitor", json=hook_request("patient-view", {}, prefetch(obs, admins))
    )
    (card,) = [c for c in r.json()["cards"] if "crs" in c["extension"]]
    assert card["extension"]["crs"]["tocilizumab"]["problems"] == ["dose-time-unknown"]
    assert "suggestions" not in card or not any(
        "ocilizumab" in s["label"] for s in card["suggestions"]
    )


def test_the_summary_says_the_problems_in_words_not_codes(client: TestClient) -> None:
    """It read "Tocilizumab 560 mg: over-4-total" (the code stays in the extension)."""
    from cds.cards import PROBLEM_LABEL, PROBLEM_TEXT

    assert PROBLEM_LABEL.keys() == PROBLEM_TEXT.keys()
    card, check = only_check(sign(client, [draft_order("mr1", 1000, "mg")]))
    assert "dose-above-cap" in check["problems"]
    assert "above the 800 mg cap" in card["summary"]
    assert not any(code in card["summary"] for code in PROBLEM_TEXT)


def test_a_draft_order_for_another_patient_is_not_checked_against_this_one(
    client: TestClient,
) -> None:
    """Its dose was checked against this patient's weight and doses."""
    order = draft_order("mr1", 640, "mg")
    order["subject"] = {"reference": "Patient/someone-else"}
    (card,) = sign(client, [order])["cards"]
    assert card["indicator"] == "warning"
    assert "NOT checked" in card["summary"]
    assert "tocilizumabCheck" not in card["extension"]
    (issue,) = card["extension"]["dataIssues"]
    assert issue["location"].endswith(".subject.reference")
    assert "another patient" in issue["problem"]


@pytest.mark.parametrize("dose", ["640", True], ids=["string", "boolean"])
def test_a_previous_dose_with_a_malformed_amount_still_counts(
    client: TestClient, dose: object
) -> None:
    """A dose 2 h ago charted with `dosage.dose.value: "640"` vanished, and a new order
    'checked out' (info) instead of interval-under-8h (critical)."""

    def malformed(administration: dict[str, Any]) -> None:
        administration["dosage"]["dose"]["value"] = dose

    correct = draft_order("mr1", 640, "mg")
    card, check = only_check(sign_with(client, [correct], *one_toci_dose(2, malformed)))
    assert "interval-under-8h" in check["problems"]
    assert card["indicator"] == "critical"
