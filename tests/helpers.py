"""Request builders shared by the HTTP tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from cds import fhirbuild as b
from cds.fhir.systems import RXNORM, UCUM

PATIENT = "pat-http"


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def hours_ago(h: float) -> datetime:
    return now() - timedelta(hours=h)


def grade2_resources(
    pid: str = PATIENT, weight_kg: float | None = 80.0, toci_hours_ago: list[float] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(observations, administrations) for a grade 2 CRS patient 3 days after Yescarta."""
    observations = [
        b.temperature(pid, hours_ago(2), 38.6),
        b.blood_pressure(pid, hours_ago(1), 85, 50),
    ]
    if weight_kg is not None:
        observations.append(b.weight(pid, hours_ago(30), weight_kg))
    admins = [b.administration(pid, hours_ago(72), text="YESCARTA suspension for IV infusion")]
    for h in toci_hours_ago or []:
        admins.append(
            b.administration(
                pid, hours_ago(h), rxnorm="612865", text="tocilizumab", dose=(640, "mg")
            )
        )
    return observations, admins


def prefetch(
    observations: list[dict[str, Any]], admins: list[dict[str, Any]], pid: str = PATIENT
) -> dict[str, Any]:
    return {
        "patient": b.patient(pid),
        "observations": b.searchset(observations),
        "oxygenDevices": b.searchset([]),
        "medicationAdministrations": b.searchset(admins),
    }


def hook_request(
    hook: str, context: dict[str, Any], prefetch_: dict[str, Any] | None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/doc", "patientId": PATIENT, **context},
        **extra,
    }
    if prefetch_ is not None:
        body["prefetch"] = prefetch_
    return body


def draft_order(
    oid: str, value: float, unit: str, pid: str = PATIENT, intent: str | None = "order"
) -> dict[str, Any]:
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
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": o} for o in orders],
    }


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
