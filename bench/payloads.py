"""Realistic prefetch payloads for the benchmark: a CAR-T patient's chart of N resources.

The chart is built backwards from `at` on an ICU schedule: every 15 minutes a blood
pressure panel (systolic and diastolic components), heart rate and SpO2; every hour
temperature (one in eight in °F); every 2 hours on oxygen the flow; every 4 hours the
respiratory rate and, on oxygen, a device observation; labs (CRP, ferritin, IL-6) every 12 hours
and weight daily. The patient has a CAR-T infusion at the start of the chart, fever
from half-way, oxygen, hypotension, a running norepinephrine infusion and a tocilizumab
dose (a MedicationAdministration referencing an included Medication), so the service
takes its full path: exposure, grading and a card.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from cds import fhirbuild as fb
from cds.fhir.systems import RXNORM

SLOT = timedelta(minutes=15)
PATIENT_ID = "bench-patient"
# Patient, CAR-T infusion, norepinephrine, tocilizumab and its Medication.
FIXED_RESOURCES = 5
# Observations per 15-minute slot on average with the schedule below.
RESOURCES_PER_SLOT = 3.44


@dataclass(frozen=True)
class Payload:
    """Request bodies with `resources` FHIR resources in the prefetch, spanning `hours`.

    `monitor` is a patient-view request for crs-monitor; `order_sign` the same data as an
    order-sign request whose draftOrders hold a tocilizumab MedicationRequest.
    """

    resources: int
    hours: float
    monitor: bytes
    order_sign: bytes
    request: dict[str, Any]


def _chart(n_observations: int, at: datetime, rng: random.Random) -> list[fb.Resource]:
    """`n_observations` Observations, newest first, on the ICU schedule described above."""
    slots_needed = n_observations  # an upper bound: at least one resource a slot
    expected_slots = n_observations / RESOURCES_PER_SLOT
    out: list[fb.Resource] = []
    pid = PATIENT_ID
    first = at - timedelta(minutes=5)
    for slot in range(slots_needed):
        t = first - slot * SLOT
        # Course of the illness as a fraction of the chart, 0 = now, 1 = oldest: the
        # span depends on N, the shape does not (fever in the latest half, and so on).
        age = slot / expected_slots
        febrile = age < 0.5
        on_oxygen = age < 0.3
        hypotensive = age < 0.2
        hourly = slot % 4 == 0
        sbp = rng.uniform(82, 94) if hypotensive else rng.uniform(105, 130)
        batch = [
            fb.blood_pressure(pid, t, round(sbp), round(sbp * 0.6)),
            fb.heart_rate(pid, t, round(rng.uniform(95, 125) if febrile else rng.uniform(70, 90))),
            fb.spo2(pid, t, round(rng.uniform(91, 96) if on_oxygen else rng.uniform(95, 99))),
        ]
        if hourly:
            celsius = rng.uniform(38.3, 39.6) if febrile else rng.uniform(36.4, 37.4)
            if slot % 32 == 0:
                batch.append(fb.temperature_f(pid, t, round(celsius * 9 / 5 + 32, 1)))
            else:
                batch.append(fb.temperature(pid, t, round(celsius, 1)))
        if slot % 8 == 0 and on_oxygen:
            batch.append(fb.oxygen_flow(pid, t, round(rng.uniform(2, 5), 1)))
        if slot % 16 == 0:
            batch.append(fb.respiratory_rate(pid, t, round(rng.uniform(16, 26))))
        if on_oxygen and slot % 16 == 0:
            batch.append(fb.oxygen_device(pid, t, "336623009", "Oxygen nasal cannula"))
        if slot % 48 == 0:
            batch.append(
                fb.lab(pid, t, "1988-5", "C reactive protein", round(rng.uniform(20, 180)), "mg/L")
            )
            batch.append(
                fb.lab(pid, t, "2276-4", "Ferritin", round(rng.uniform(400, 3000)), "ng/mL")
            )
            batch.append(
                fb.lab(pid, t, "26881-3", "Interleukin 6", round(rng.uniform(5, 300)), "pg/mL")
            )
        if slot % 96 == 0:
            batch.append(fb.weight(pid, t, round(rng.uniform(70, 72), 1)))
        for resource in batch:
            out.append(resource)
            if len(out) == n_observations:
                return out
    return out


def build_payload(resources: int, at: datetime, seed: int = 5) -> Payload:
    """A patient-view request for crs-monitor with `resources` resources in its prefetch."""
    if resources < FIXED_RESOURCES + 1:
        raise ValueError(f"a payload needs at least {FIXED_RESOURCES + 1} resources")
    rng = random.Random(seed)
    observations = _chart(resources - FIXED_RESOURCES, at, rng)
    oldest = min(datetime.fromisoformat(o["effectiveDateTime"]) for o in observations)
    newest = max(datetime.fromisoformat(o["effectiveDateTime"]) for o in observations)
    span = newest - oldest
    pid = PATIENT_ID
    infusion = oldest - timedelta(hours=1)
    tocilizumab = fb.medication("tocilizumab-vial", "tocilizumab 400 mg/20 mL", "612865")
    administrations = [
        fb.administration(
            pid,
            infusion,
            end=infusion + timedelta(minutes=20),
            text="Breyanzi (lisocabtagene maraleucel) suspension for IV infusion",
        ),
        fb.administration(
            pid,
            newest - span * 0.15,
            period=True,
            rxnorm="7512",
            text="norepinephrine 0.05 mcg/kg/min",
        ),
        fb.administration(
            pid,
            newest - span * 0.1,
            medication_reference="Medication/tocilizumab-vial",
            text="tocilizumab",
            dose=(570, "mg"),
        ),
    ]
    meds_bundle = fb.searchset([*administrations, tocilizumab])
    meds_bundle["entry"][-1]["search"] = {"mode": "include"}
    prefetch = {
        "patient": fb.patient(pid),
        # As the service's prefetch templates search: by code, and devices by coded value.
        "observations": fb.searchset(
            [o for o in observations if "valueQuantity" in o or "component" in o]
        ),
        "oxygenDevices": fb.searchset([o for o in observations if "valueCodeableConcept" in o]),
        "medicationAdministrations": meds_bundle,
        "conditions": fb.searchset([]),
        "assessments": fb.searchset([]),
    }
    request: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/bench", "patientId": pid},
        "prefetch": prefetch,
    }
    order_sign = {
        "hook": "order-sign",
        "hookInstance": str(uuid.uuid4()),
        "context": {
            "userId": "Practitioner/bench",
            "patientId": pid,
            "draftOrders": fb.collection([_tocilizumab_order(pid)]),
        },
        "prefetch": prefetch,
    }
    return Payload(
        resources=resources,
        hours=round((newest - infusion) / timedelta(hours=1), 1),
        monitor=orjson.dumps(request),
        order_sign=orjson.dumps(order_sign),
        request=request,
    )


def _tocilizumab_order(pid: str) -> fb.Resource:
    """A draft order for tocilizumab 8 mg/kg (weight about 71 kg) IV."""
    return {
        "resourceType": "MedicationRequest",
        "id": "bench-tocilizumab-order",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": "612865", "display": "tocilizumab"}],
            "text": "tocilizumab",
        },
        "subject": {"reference": f"Patient/{pid}"},
        "dosageInstruction": [
            {
                "text": "8 mg/kg IV over 1 hour",
                "doseAndRate": [{"doseQuantity": fb.quantity(570, "mg")}],
            }
        ],
    }
