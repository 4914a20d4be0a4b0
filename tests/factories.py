"""Builders shared by the tests: the fixed evaluation time, facts, and CDS Hooks requests.

Engine and reading tests evaluate at `AT` and place facts `h(hours)` before it. Tests over
HTTP send FHIR timed by the wall clock (`hours_ago`), because the service evaluates at the
time it is called.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from cds import fhirbuild as b
from cds.engine.facts import Administration, Measurement, OxygenSupport
from cds.evaluation import evaluate
from cds.fhir.reading import ResourceCollector
from cds.fhir.systems import RXNORM, UCUM
from cds.ids import new_uuid
from cds.protocol import render
from cds.runtime import Runtime
from cds.scenarios import Scenario
from cds.services import crs_monitor
from cds.settings import Settings

# --- time ------------------------------------------------------------------------------

AT = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def h(hours_before: float) -> datetime:
    """The time `hours_before` hours before AT (negative: after it)."""
    return AT - timedelta(hours=hours_before)


def now() -> datetime:
    """The wall clock, to the second (what the service evaluates at over HTTP)."""
    return datetime.now(UTC).replace(microsecond=0)


def hours_ago(hours: float, anchor: datetime | None = None) -> datetime:
    """The time `hours` hours before `anchor` (default: now)."""
    return (anchor or now()) - timedelta(hours=hours)


# --- settings --------------------------------------------------------------------------


def settings(**values: Any) -> Settings:
    """Settings for a test: the defaults, no `.env` file, and `values`.

    (Never import it under a name starting with `test`: pytest would collect it.)"""
    return Settings(_env_file=None, **values)


# --- facts (what the engine sees) ------------------------------------------------------

UNITS = {
    "temperature": "Cel",
    "systolic_bp": "mm[Hg]",
    "mean_arterial_pressure": "mm[Hg]",
    "oxygen_flow": "L/min",
    "spo2": "%",
    "inhaled_oxygen_concentration": "%",
    "body_weight": "kg",
    "crp": "mg/L",
    "ferritin": "ng/mL",
    "il6": "pg/mL",
}


def measurement(concept: str, hours_before: float, value: float) -> Measurement:
    """A measurement of `concept` in its canonical unit."""
    return Measurement(
        concept, value, UNITS[concept], h(hours_before), f"Observation/{concept}-{hours_before}"
    )


def temperature(hours_before: float, celsius: float) -> Measurement:
    return measurement("temperature", hours_before, celsius)


def systolic(hours_before: float, mmhg: float) -> Measurement:
    return measurement("systolic_bp", hours_before, mmhg)


def device(hours_before: float, support: str) -> OxygenSupport:
    return OxygenSupport(support, support, h(hours_before), f"Observation/device-{hours_before}")


def given(
    concept: str,
    medication_class: str,
    hours_before: float,
    until_hours_before: float | str | None = "instant",
) -> Administration:
    """An administration: an instant by default, `None` to leave it running, or a period
    ending `until_hours_before`."""
    start = h(hours_before)
    end = (
        start
        if until_hours_before == "instant"
        else None
        if until_hours_before is None
        else h(float(until_hours_before))
    )
    return Administration(
        concept,
        medication_class,
        concept,
        start,
        end,
        f"MedicationAdministration/{concept}-{hours_before}",
    )


# --- FHIR as an EHR sends it -----------------------------------------------------------

PATIENT = "pat-http"


def grade2_resources(
    pid: str = PATIENT,
    weight_kg: float | None = 80.0,
    toci_hours_ago: list[float] | None = None,
    anchor: datetime | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(observations, administrations) for a grade 2 CRS patient 3 days after Yescarta:
    38.6 °C 2 h ago, SBP 85 1 h ago, 80 kg (unless `weight_kg` says otherwise), and a
    640 mg tocilizumab dose at each of `toci_hours_ago` — hours before `anchor` (default:
    now; give one to chart the same instants again)."""
    base = anchor or now()
    observations = [
        b.temperature(pid, hours_ago(2, base), 38.6),
        b.blood_pressure(pid, hours_ago(1, base), 85, 50),
    ]
    if weight_kg is not None:
        observations.append(b.weight(pid, hours_ago(30, base), weight_kg))
    admins = [
        b.administration(pid, hours_ago(72, base), text="YESCARTA suspension for IV infusion")
    ]
    for hours in toci_hours_ago or []:
        admins.append(
            b.administration(
                pid, hours_ago(hours, base), rxnorm="612865", text="tocilizumab", dose=(640, "mg")
            )
        )
    return observations, admins


def prefetch(
    observations: list[dict[str, Any]], admins: list[dict[str, Any]], pid: str = PATIENT
) -> dict[str, Any]:
    """The crs-monitor prefetch: the patient, and the observations and administrations as
    searchsets (no oxygen devices, Conditions or assessments)."""
    return {
        "patient": b.patient(pid),
        "observations": b.searchset(observations),
        "oxygenDevices": b.searchset([]),
        "medicationAdministrations": b.searchset(admins),
        "conditions": b.searchset([]),
        "assessments": b.searchset([]),
    }


def draft_order(
    oid: str, value: float, unit: str, pid: str = PATIENT, intent: str | None = "order"
) -> dict[str, Any]:
    """A draft tocilizumab MedicationRequest for `value` `unit` (UCUM)."""
    order: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": oid,
        "status": "draft",
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": "612865", "display": "tocilizumab"}]
        },
        "subject": {"reference": f"Patient/{pid}"},
        "dosageInstruction": [
            {
                "doseAndRate": [
                    {"doseQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}}
                ]
            }
        ],
    }
    if intent:
        order["intent"] = intent
    return order


def draft_bundle(*orders: dict[str, Any]) -> dict[str, Any]:
    """`context.draftOrders`: a collection Bundle of the draft resources."""
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": o} for o in orders],
    }


# --- CDS Hooks requests ----------------------------------------------------------------


def hook_request(
    hook: str,
    context: dict[str, Any] | None = None,
    prefetch: dict[str, Any] | None = None,
    *,
    patient_id: str = PATIENT,
    fhir_server: str | None = None,
    fhir_token: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A CDS Hooks request body as an EHR sends it: a fresh hookInstance, `context` beside
    the user and `patient_id`; `prefetch`, `fhirServer` and a bearer `fhirAuthorization`
    only when given; `extra` as further top-level members."""
    body: dict[str, Any] = {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/doc", "patientId": patient_id, **(context or {})},
        **extra,
    }
    if fhir_server is not None:
        body["fhirServer"] = fhir_server
    if prefetch is not None:
        body["prefetch"] = prefetch
    if fhir_token is not None:
        body["fhirAuthorization"] = {
            "access_token": fhir_token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "test",
        }
    return body


def grade2_monitor_request(**extra: Any) -> dict[str, Any]:
    """A crs-monitor call with its whole prefetch, for the grade 2 patient of
    `grade2_resources`."""
    return hook_request("patient-view", {}, prefetch(*grade2_resources()), **extra)


def scenario_request(
    scenario: Scenario,
    anchor: datetime,
    fhir_server: str | None,
    prefetch: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The request an EHR sends for a library scenario's patient, loaded at `anchor`: an
    order-sign with the scenario's draft order for crs-order-sign, else a patient-view."""
    context: dict[str, Any] = {}
    hook = "patient-view"
    if scenario.service == "crs-order-sign":
        hook = "order-sign"
        orders = scenario.draft_orders(anchor)
        if orders is not None:
            context["draftOrders"] = orders
    return hook_request(
        hook,
        context,
        prefetch,
        patient_id=scenario.patient_id,
        fhir_server=fhir_server,
        **extra,
    )


# --- answers ---------------------------------------------------------------------------


def monitor_json(
    runtime: Runtime, collected: ResourceCollector, patient_id: str | None, at: datetime
) -> Any:
    """The crs-monitor response for collected data at `at`, as JSON (no HTTP)."""
    decision = crs_monitor.decide(runtime, evaluate(runtime, collected, patient_id, at), new_uuid)
    return orjson.loads(render(decision.response()))


def assert_no_empty_fields(value: Any, path: str = "$") -> None:
    """CDS Hooks forbids null, "", [] and {} (the service's own extension: null only)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "extension":
                assert_no_nulls(item, f"{path}.{key}")
                continue
            assert item not in (None, "", [], {}), f"{path}.{key} is empty"
            assert_no_empty_fields(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            assert_no_empty_fields(item, f"{path}[{i}]")


def assert_no_nulls(value: Any, path: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert item is not None, f"{path}.{key} is null"
            assert_no_nulls(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            assert_no_nulls(item, f"{path}[{i}]")
