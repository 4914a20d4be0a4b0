"""A prefetch sent with its first page only (a `next` link), as the CDS Hooks Sandbox and
EHRs send it: completed from fhirServer when the service may read it; otherwise the card
says the data are incomplete and never looks like an all-clear (issue #9.8)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import httpx
import pytest

from cds.runtime import Runtime
from cds.scenarios import get
from cds.services import registry
from tests.factories import scenario_request
from tests.integration.support import card_outcome, post_hook, runtime_with


def first_pages(runtime: Runtime, server: str, patient_id: str, count: int) -> dict[str, Any]:
    """Every prefetch key as a client fills it: the first page of `count` entries only."""
    templates = registry(runtime)["crs-monitor"].prefetch.templates
    prefetch: dict[str, Any] = {}
    with httpx.Client(timeout=10) as client:
        for key, template in templates.items():
            query = template.replace("{{context.patientId}}", patient_id)
            query = re.sub(r"_count=\d+", f"_count={count}", query)
            response = client.get(f"{server}/{query}", headers={"Accept": "application/fhir+json"})
            assert response.status_code == 200, response.text
            prefetch[key] = response.json()
    return prefetch


def _has_next(bundle: dict[str, Any]) -> bool:
    return any(link.get("relation") == "next" for link in bundle.get("link", []))


def test_first_page_completed_from_an_allowed_fhir_server(
    runtime: Runtime, loaded: str, anchor: datetime
) -> None:
    scenario = get("g2-brexucel-bp-panel")
    prefetch = first_pages(runtime, loaded, scenario.patient_id, 2)
    assert _has_next(prefetch["observations"])
    rt = runtime_with(runtime, fhir_allowed_servers=[loaded])
    response = post_hook(rt, "crs-monitor", scenario_request(scenario, anchor, loaded, prefetch))
    assert card_outcome("crs-monitor", response) == scenario.expect
    (card,) = response.json()["cards"]
    assert card["extension"]["crs"]["dataComplete"] is True
    assert "incompleteData" not in card["extension"]
    assert "DATA INCOMPLETE" not in card["summary"]


@pytest.mark.parametrize("server", ["not-allowed", "no-fhir-server"])
def test_first_page_only_and_no_usable_server_says_incomplete(
    runtime: Runtime, loaded: str, anchor: datetime, server: str
) -> None:
    scenario = get("g2-brexucel-bp-panel")
    prefetch = first_pages(runtime, loaded, scenario.patient_id, 2)
    total = prefetch["observations"].get("total")
    body = scenario_request(scenario, anchor, loaded if server == "not-allowed" else None, prefetch)
    response = post_hook(runtime, "crs-monitor", body)
    assert response.status_code == 200, response.text
    cards = response.json()["cards"]
    assert len(cards) == 1
    card = cards[0]
    assert card["indicator"] != "info"
    assert card["summary"].startswith("DATA INCOMPLETE")
    assert "Data incomplete:" in card["detail"]
    incomplete = card["extension"]["incompleteData"]
    assert {"location": "prefetch.observations", "entriesRead": 2} | (
        {"total": total} if total is not None else {}
    ) in incomplete
    if card["extension"].get("crs"):
        assert card["extension"]["crs"]["dataComplete"] is False
    # a missing page is not an unreadable entry
    assert not card["extension"].get("dataIssues")


def test_exposure_on_a_missing_page_is_not_an_all_clear(
    runtime: Runtime, loaded: str, anchor: datetime
) -> None:
    # the administrations key cut after 1 entry: if the CAR-T infusion is on page 2, the
    # service must not stay silent
    scenario = get("g4-idecel-two-pressors")
    prefetch = first_pages(runtime, loaded, scenario.patient_id, 1)
    prefetch["medicationAdministrations"]["entry"] = [
        e
        for e in prefetch["medicationAdministrations"]["entry"]
        if "idecabtagene" not in str(e).lower() and "abecma" not in str(e).lower()
    ]
    prefetch["medicationAdministrations"].setdefault("link", []).append(
        {"relation": "next", "url": f"{loaded}/MedicationAdministration?page=2"}
    )
    response = post_hook(runtime, "crs-monitor", scenario_request(scenario, anchor, None, prefetch))
    cards = response.json()["cards"]
    assert len(cards) == 1
    assert cards[0]["indicator"] in {"warning", "critical"}
    assert "DATA INCOMPLETE" in cards[0]["summary"]
