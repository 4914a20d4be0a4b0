"""Cases found in review: each once produced a missed CRS, a wrong dose or a 400/500."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cds import fhirbuild as b
from cds.engine.dosing import dose_history, dose_problems, recommended_dose
from cds.engine.exposure import find_exposure
from cds.engine.facts import Administration, Facts, Measurement
from cds.runtime import Runtime
from tests.helpers import (
    PATIENT,
    draft_bundle,
    draft_order,
    grade2_resources,
    hook_request,
    hours_ago,
    prefetch,
)

AT = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def h(hours: float) -> datetime:
    return AT - timedelta(hours=hours)


def sign(
    client: TestClient,
    orders: list[dict[str, Any]],
    extra: list[dict[str, Any]] | None = None,
    **kw: Any,
) -> dict[str, Any]:
    obs, admins = grade2_resources(**kw)
    pre = prefetch(obs, admins + (extra or []))
    r = client.post(
        "/cds-services/crs-order-sign",
        json=hook_request("order-sign", {"draftOrders": draft_bundle(*orders)}, pre),
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_lenient_overdose_order_gets_a_card_not_a_400(client: TestClient) -> None:
    order = draft_order("mr1", 2000, "mg", intent=None)
    order["category"] = {"text": "inpatient"}  # the Sandbox sends an object, not a list
    (card,) = sign(client, [order])["cards"]
    check = card["extension"]["tocilizumabCheck"]
    assert "dose-above-cap" in check["problems"] and card["indicator"] == "critical"
    assert "suggestions" not in card
    assert "No corrected order offered" in card["detail"]


def test_order_by_medication_reference_is_checked(client: TestClient) -> None:
    order = draft_order("mr1", 2000, "mg")
    del order["medicationCodeableConcept"]
    order["medicationReference"] = {"reference": "Medication/toci"}
    med = b.medication("toci", "Actemra 20 mg/mL", "612865")
    bundle_orders = [order, med]
    (card,) = sign(client, bundle_orders)["cards"]
    assert "dose-above-cap" in card["extension"]["tocilizumabCheck"]["problems"]


def test_order_with_unresolvable_medication_is_not_silently_dropped(client: TestClient) -> None:
    order = draft_order("mr1", 2000, "mg")
    del order["medicationCodeableConcept"]
    order["medicationReference"] = {"reference": "Medication/elsewhere"}
    (card,) = sign(client, [order])["cards"]
    assert "NOT checked" in card["summary"]


def test_unreadable_order_that_mentions_tocilizumab_gets_a_card(client: TestClient) -> None:
    order = draft_order("mr1", 640, "mg")
    order["status"] = 5
    order["note"] = [{"text": "give after methylprednisolone"}]
    (card,) = sign(client, [order])["cards"]
    assert "NOT checked" in card["summary"]


def test_corrected_dose_not_recommended_while_timing_forbids(client: TestClient) -> None:
    (card,) = sign(client, [draft_order("mr1", 500, "mg")], toci_hours_ago=[3])["cards"]
    check = card["extension"]["tocilizumabCheck"]
    assert set(check["problems"]) == {"dose-not-weight-based", "interval-under-8h"}
    assert card["suggestions"][0]["isRecommended"] is False


def test_far_future_period_end_is_open_not_500(client: TestClient) -> None:
    obs, admins = grade2_resources()
    blina = b.administration(
        PATIENT, hours_ago(30), text="Blincyto", period=True, status="in-progress"
    )
    blina["effectivePeriod"]["end"] = "9999-12-31T23:59:59-14:00"
    r = client.post(
        "/cds-services/crs-monitor",
        json=hook_request("patient-view", {}, prefetch(obs, [*admins, blina])),
    )
    assert r.status_code == 200
    assert r.json()["cards"][0]["extension"]["crs"]["grade"] == 2


def test_rounding_never_overdoses_small_children(runtime: Runtime) -> None:
    rules = replace(runtime.rules.dosing, rounding_mg=100.0)
    for weight in (3.0, 5.0, 29.9, 47.0):
        dose = recommended_dose(weight, rules)
        assert abs(dose.mg - dose.target_mg) <= 0.1 * dose.target_mg + 1e-6
    assert recommended_dose(5.0, rules).mg == 60  # not 100 mg (20 mg/kg)
    assert dose_problems(100, recommended_dose(5.0, rules), rules) == ["dose-not-weight-based"]
    assert dose_problems(60, recommended_dose(5.0, rules), rules) == []


def _admin(concept: str, kind: str, hours: float, end: float | None = -1.0) -> Administration:
    stop = h(hours) if end == -1.0 else (None if end is None else h(end))
    return Administration(concept, kind, concept, h(hours), stop, f"MA/{concept}{hours}")


def test_new_bispecific_dose_keeps_the_episode_masking_and_findings(runtime: Runtime) -> None:
    from cds.engine.grading import grade

    facts = Facts.build(
        [
            Measurement("temperature", 39.0, "Cel", h(45), "Observation/f"),
            Measurement("temperature", 37.0, "Cel", h(1), "Observation/n"),
            Measurement("systolic_bp", 80, "mm[Hg]", h(1), "Observation/s"),
        ],
        [],
        [
            _admin("teclistamab", "bispecific", 60),
            _admin("tocilizumab", "tocilizumab", 39),
            _admin("teclistamab", "bispecific", 10),
        ],
    )
    exposure = find_exposure(facts, runtime.rules.windows, AT, runtime.rules.continuation)
    assert exposure is not None
    assert (exposure.at, exposure.risk_period_start, exposure.doses) == (h(10), h(60), 2)
    result = grade(facts, exposure, AT, runtime.rules.grading)
    assert result.grade == 2  # masked by tocilizumab after the fever of the first dose


def test_tocilizumab_interval_counts_across_doses_of_the_engager(runtime: Runtime) -> None:
    facts = Facts.build(
        [],
        [],
        [
            _admin("teclistamab", "bispecific", 60),
            _admin("tocilizumab", "tocilizumab", 4),
            _admin("teclistamab", "bispecific", 3.5),
        ],
    )
    history = dose_history(facts, AT, h(3.5), runtime.rules.dosing)
    assert history.problems == ["interval-under-8h"]
    assert history.doses_total == 0  # the episode total starts at the given episode start


def test_window_stays_open_while_crs_fever_continues(runtime: Runtime) -> None:
    # The window is pinned at a short 16 h (tebentafusp's former value): this test is about
    # continuing CRS fever keeping a closed window open, which needs the fevers to run
    # unbroken from inside the window to now. tebentafusp's own window became 168 h in
    # rules/therapies.yaml 2026.11.2 (no label onset upper bound; weekly dose interval).
    windows = {
        **runtime.rules.windows,
        "tebentafusp": replace(runtime.rules.windows["tebentafusp"], window_hours=16),
    }
    hours = windows["tebentafusp"].window_hours
    fevers = [
        Measurement("temperature", 39.2, "Cel", h(hours + 5 - k * 6), f"Observation/{k}")
        for k in range(3)
    ]  # hours+5, hours-1, hours-7 before AT
    dose = _admin("tebentafusp", "bispecific", hours + 8)
    facts = Facts.build(
        [*fevers, Measurement("temperature", 38.6, "Cel", h(0.5), "Observation/x")], [], [dose]
    )
    closed = find_exposure(facts, windows, AT)
    assert closed is None
    exposure = find_exposure(facts, windows, AT, runtime.rules.continuation)
    assert exposure is not None and exposure.extended_until is not None
    no_fever = Facts.build([], [], [dose])
    assert find_exposure(no_fever, windows, AT, runtime.rules.continuation) is None


# --- second review ---------------------------------------------------------------------


def test_unmapped_standard_codes_still_match_by_name(runtime: Runtime) -> None:
    from cds.fhir.normalise import Normaliser
    from cds.fhir.reading import ResourceCollector

    snomed_temp = b.observation(
        PATIENT, AT, "386725007", "Body temperature", 39.0, "Cel", system="http://snomed.info/sct"
    )
    art_line = b.observation(
        PATIENT, AT, "76215-3", "Invasive Systolic blood pressure", 80, "mm[Hg]"
    )
    collector = ResourceCollector()
    collector.add_prefetch({"a": snomed_temp, "b": art_line})
    facts = Normaliser(runtime.knowledge, PATIENT, None).normalise(collector).facts
    assert [m.concept for m in facts.measurements] == ["temperature", "systolic_bp"]


@pytest.mark.parametrize("route", ["IV", ["IV"], {"coding": [{"code": 47625008}]}])
def test_malformed_route_keeps_the_administration(client: TestClient, route: Any) -> None:
    obs = [b.temperature(PATIENT, hours_ago(1), 39.0)]
    car_t = b.administration(PATIENT, hours_ago(72), text="Yescarta")
    car_t["dosage"] = {"route": route}
    pressor = b.administration(
        PATIENT,
        hours_ago(3),
        rxnorm="7512",
        text="norepinephrine",
        period=True,
        status="in-progress",
    )
    pressor["dosage"] = {"route": route}
    r = client.post(
        "/cds-services/crs-monitor",
        json=hook_request("patient-view", {}, prefetch(obs, [car_t, pressor])),
    )
    assert r.json()["cards"][0]["extension"]["crs"]["grade"] == 3


def _weekly(hours_before: Sequence[float]) -> list[Administration]:
    return [_admin("talquetamab", "bispecific", x) for x in hours_before]


def test_weekly_engager_old_tocilizumab_does_not_block_a_new_episode(runtime: Runtime) -> None:
    weeks = [168.0 * k - 2 * k for k in range(8, 0, -1)]  # windows overlap: one exposure chain
    toci = [_admin("tocilizumab", "tocilizumab", x) for x in (600, 590, 580, 570)]
    fevers = [
        Measurement("temperature", 39.0, "Cel", h(x), f"Observation/f{x}") for x in (605, 1.0)
    ]
    facts = Facts.build(
        [*fevers, Measurement("systolic_bp", 84, "mm[Hg]", h(1), "Observation/s")],
        [],
        [*_weekly(weeks), *toci],
    )
    exposure = find_exposure(facts, runtime.rules.windows, AT, runtime.rules.continuation)
    assert exposure is not None
    from cds.engine.grading import grade

    g = grade(facts, exposure, AT, runtime.rules.grading)
    assert g.grade == 2
    history = dose_history(facts, AT, g.crs_episode_start or AT, runtime.rules.dosing)
    assert history.doses_total == 0 and history.problems == []


def test_masking_weeks_ago_does_not_mask_today(runtime: Runtime) -> None:
    from cds.engine.grading import grade

    weeks = [168.0 * k - 2 * k for k in range(8, 0, -1)]
    facts = Facts.build(
        [
            Measurement("temperature", 39.0, "Cel", h(1100), "Observation/old"),
            Measurement("systolic_bp", 86, "mm[Hg]", h(1), "Observation/s"),
        ],
        [],
        [*_weekly(weeks), _admin("acetaminophen", "antipyretic", 1099)],
    )
    exposure = find_exposure(facts, runtime.rules.windows, AT, runtime.rules.continuation)
    assert exposure is not None
    assert grade(facts, exposure, AT, runtime.rules.grading).grade == 0


def test_masked_crs_on_pressors_keeps_a_closed_window_open(runtime: Runtime) -> None:
    hours = runtime.rules.windows["brexucabtagene-autoleucel"].window_hours
    facts = Facts.build(
        [
            Measurement("temperature", 39.0, "Cel", h(30), "Observation/f"),
            Measurement("systolic_bp", 82, "mm[Hg]", h(0.5), "Observation/s"),
        ],
        [],
        [
            _admin("brexucabtagene-autoleucel", "car-t", hours + 4),
            _admin("tocilizumab", "tocilizumab", 29),
            _admin("dexamethasone", "corticosteroid", 20),
            _admin("norepinephrine", "vasopressor", 6, None),
        ],
    )
    exposure = find_exposure(facts, runtime.rules.windows, AT, runtime.rules.continuation)
    assert exposure is not None and exposure.extended_until is not None
    from cds.engine.grading import grade

    assert grade(facts, exposure, AT, runtime.rules.grading).grade == 3


def test_dose_number_counts_every_dose(runtime: Runtime) -> None:
    facts = Facts.build([], [], _weekly([168 * k for k in range(6, 0, -1)] + [0.5]))
    exposure = find_exposure(facts, runtime.rules.windows, AT)
    assert exposure is not None and exposure.doses == 7


def test_order_referencing_another_drug_is_skipped_quietly(client: TestClient) -> None:
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
