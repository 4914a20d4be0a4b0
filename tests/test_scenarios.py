"""The scenario library: every patient gives the outcome it promises, offline.

Each crs-monitor scenario is evaluated through the monitor's decision (`monitor_json`)
at its anchor (and a few minutes later, as when it is fired right after loading); each
pharmacist case through the crs-order-sign decision with its draft order. Resources are
checked against the FHIR R4B models (the FHIR server in tests/integration checks R4).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest

from cds.fhir.reading import ResourceCollector
from cds.ids import new_uuid
from cds.pipeline import decide_offline
from cds.protocol import OrderContext, render
from cds.runtime import Runtime
from cds.scenarios import Scenario, ScenarioError, get, library
from tests.factories import AT, monitor_json

ANCHOR = AT  # the scenarios' times count back from here
PROBLEM_CODES = {
    "dose-above-cap",
    "dose-not-weight-based",
    "dose-unreadable",
    "dose-invalid",
    "interval-under-8h",
    "over-3-in-24h",
    "over-4-total",
    "no-weight",
    "no-crs-evidence",
}
MONITOR = [s for s in library().values() if s.service == "crs-monitor"]
ORDER_SIGN = [s for s in library().values() if s.service == "crs-order-sign"]


def collected_for(scenario: Scenario, anchor: datetime) -> ResourceCollector:
    collected = ResourceCollector()
    collected.add_prefetch(scenario.prefetch(anchor))
    return collected


def monitor_outcome(runtime: Runtime, scenario: Scenario, at: datetime) -> dict[str, Any]:
    response = monitor_json(runtime, collected_for(scenario, ANCHOR), scenario.patient_id, at)
    assert not response.get("extension", {}).get("dataIssues")
    if not response["cards"]:
        return {"service": "crs-monitor", "card": False}
    return monitor_cards_outcome(response["cards"])


def monitor_cards_outcome(cards: list[dict[str, Any]]) -> dict[str, Any]:
    """The crs-monitor cards as an `expect` dict: one CRS card, and (issue #14) the ICANS
    card's grades and the CRS card's risk-score categories only when they are there."""
    for card in cards:
        assert not card["extension"].get("dataIssues"), card["extension"].get("dataIssues")
    (card,) = [c for c in cards if "crs" in c["extension"]]
    crs = card["extension"]["crs"]
    outcome: dict[str, Any] = {
        "service": "crs-monitor",
        "grade": crs["grade"],
        "maxGrade": crs["maxGrade"],
    }
    icans = [c["extension"]["icans"] for c in cards if "icans" in c["extension"]]
    assert len(icans) + 1 == len(cards), "only a CRS card and at most one ICANS card"
    if icans:
        (info,) = icans
        outcome["icansGrade"], outcome["icansMaxGrade"] = info["grade"], info["maxGrade"]
    if crs.get("riskScores"):
        outcome["riskScores"] = {r["score"]: r.get("category") for r in crs["riskScores"]}
    return outcome


# --- the library as a whole --------------------------------------------------------------


def test_library_covers_what_the_issue_asks_for() -> None:
    scenarios = library()
    assert len(scenarios) >= 10
    assert {s.expect.get("grade") for s in MONITOR} >= {0, 1, 2, 3, 4}
    assert any(s.expect.get("card") is False for s in MONITOR)
    problems = [p for s in ORDER_SIGN for p in s.expect["problems"]]
    assert sorted(problems) == sorted(PROBLEM_CODES), "one pharmacist case per problem code"
    for s in scenarios.values():
        assert s.description and len(s.description) <= 120
        assert len(s.id) <= 41


def test_every_car_t_product_and_a_stepped_bispecific(runtime: Runtime) -> None:
    from cds.fhir.normalise import Normaliser

    products: set[str] = set()
    stepped = False
    for s in MONITOR:
        facts = (
            Normaliser(runtime.knowledge, s.patient_id, None)
            .normalise(collected_for(s, ANCHOR))
            .facts
        )
        exposures = [a for a in facts.administrations if a.medication_class == "car-t"]
        products.update(a.concept for a in exposures)
        bispecific = [a for a in facts.administrations if a.medication_class == "bispecific"]
        stepped = stepped or (len({a.concept for a in bispecific}) == 1 and len(bispecific) >= 3)
    car_t = {p for p, t in runtime.knowledge.therapies.items() if t.kind == "car-t"}
    assert products == car_t
    assert stepped


def test_ids_are_fixed_and_anchor_moves_times() -> None:
    scenario = get("g2-brexucel-bp-panel")
    first = scenario.resources(ANCHOR)
    later = scenario.resources(ANCHOR + timedelta(days=3))
    assert [r["id"] for r in first] == [r["id"] for r in later]
    assert len({(r["resourceType"], r["id"]) for r in first}) == len(first)
    times = [r.get("effectiveDateTime") for r in first if r["resourceType"] == "Observation"]
    moved = [r.get("effectiveDateTime") for r in later if r["resourceType"] == "Observation"]
    assert times != moved
    bundle = scenario.transaction(ANCHOR)
    assert bundle["type"] == "transaction"
    assert all(e["request"]["method"] == "PUT" for e in bundle["entry"])


def test_naive_anchor_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        get("g0-tisacel-afebrile").resources(datetime(2026, 11, 20, 12, 0))


def test_unknown_scenario_names_the_known_ones() -> None:
    with pytest.raises(ScenarioError, match="g0-tisacel-afebrile"):
        get("no-such-patient")


@pytest.mark.parametrize("scenario", list(library().values()), ids=lambda s: s.id)
def test_resources_are_valid_fhir(scenario: Scenario) -> None:
    from fhir.resources.R4B import get_fhir_model_class

    resources = scenario.resources(ANCHOR)
    order = scenario.draft_order(ANCHOR)
    for resource in resources + ([order] if order else []):
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)


# --- outcomes --------------------------------------------------------------------------


@pytest.mark.parametrize("late", [timedelta(0), timedelta(minutes=5)], ids=["at-anchor", "+5min"])
@pytest.mark.parametrize("scenario", MONITOR, ids=lambda s: s.id)
def test_monitor_scenario_gives_its_expected_outcome(
    runtime: Runtime, scenario: Scenario, late: timedelta
) -> None:
    assert monitor_outcome(runtime, scenario, ANCHOR + late) == scenario.expect


@pytest.mark.parametrize("late", [timedelta(0), timedelta(minutes=5)], ids=["at-anchor", "+5min"])
@pytest.mark.parametrize("scenario", ORDER_SIGN, ids=lambda s: s.id)
def test_pharmacist_case_gives_its_problems(
    runtime: Runtime, scenario: Scenario, late: timedelta
) -> None:
    pytest.importorskip("cds.services.order_check")
    from cds.services import registry

    service = registry(runtime).get("crs-order-sign")
    if service is None:
        pytest.skip("crs-order-sign is not registered yet")
    context = OrderContext(
        userId="Practitioner/1",
        patientId=scenario.patient_id,
        draftOrders=scenario.draft_orders(ANCHOR),
    )
    at = ANCHOR + late
    decision = decide_offline(
        runtime, service, collected_for(scenario, ANCHOR), context, at, new_uuid
    )
    response = orjson.loads(render(decision.response()))
    checks = [c["extension"]["tocilizumabCheck"] for c in response["cards"]]
    assert [c["problems"] for c in checks] == [scenario.expect["problems"]]


@pytest.mark.parametrize("scenario", MONITOR, ids=lambda s: s.id)
def test_the_day_a_description_names_is_the_cards_day(runtime: Runtime, scenario: Scenario) -> None:
    # (g1 said "Yescarta day 3" for an infusion 70 h before: the card, counting whole days
    # since the infusion as day 0 does, says day 2)
    named = re.search(r"day (\d+)", scenario.description)
    response = monitor_json(runtime, collected_for(scenario, ANCHOR), scenario.patient_id, ANCHOR)
    crs = [c for c in response["cards"] if "crs" in c["extension"]]
    if named is None or not crs:
        return
    assert f"day {named[1]} after" in crs[0]["summary"].lower(), crs[0]["summary"]
