"""Build FHIR R4 resources and Bundles for scenarios, tests and the benchmark.

Small functions that write the JSON an EHR would send; every time is an aware
datetime. Used by the shipped scenario library, the tests and bench/.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from cds.fhir.systems import LOINC, RXNORM, SNOMED, UCUM
from cds.fhir.systems import OBSERVATION_CATEGORY as OBS_CATEGORY

Resource = dict[str, Any]


def iso(moment: datetime) -> str:
    """FHIR dateTime with offset, seconds precision."""
    return moment.isoformat(timespec="seconds")


def new_id() -> str:
    return str(uuid.uuid4())


def patient(pid: str, birth_date: str = "1961-04-02", gender: str = "female") -> Resource:
    return {
        "resourceType": "Patient",
        "id": pid,
        "active": True,
        "name": [{"family": "Synthetic", "given": ["Test"]}],
        "gender": gender,
        "birthDate": birth_date,
    }


def _category(code: str) -> list[Resource]:
    return [{"coding": [{"system": OBS_CATEGORY, "code": code}]}]


def quantity(value: float, unit: str, code: str | None = None) -> Resource:
    q: Resource = {"value": value, "unit": unit, "system": UCUM, "code": code or unit}
    return q


def observation(
    pid: str,
    at: datetime,
    code: str | None,
    display: str,
    value: float | None,
    unit: str | None,
    *,
    ucum: str | None = None,
    system: str = LOINC,
    status: str = "final",
    category: str = "vital-signs",
    oid: str | None = None,
) -> Resource:
    """A numeric Observation; `code=None` writes a local code with text only."""
    coding = (
        {"coding": [{"system": system, "code": code, "display": display}], "text": display}
        if code
        else {
            "coding": [{"system": "urn:oid:1.2.3.4.local", "code": "L-" + display[:6]}],
            "text": display,
        }
    )
    obs: Resource = {
        "resourceType": "Observation",
        "id": oid or new_id(),
        "status": status,
        "category": _category(category),
        "code": coding,
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": iso(at),
    }
    if value is not None and unit is not None:
        obs["valueQuantity"] = quantity(value, unit, ucum)
    return obs


def temperature(pid: str, at: datetime, celsius: float, **kw: Any) -> Resource:
    return observation(pid, at, "8310-5", "Body temperature", celsius, "Cel", **kw)


def temperature_f(pid: str, at: datetime, fahrenheit: float, **kw: Any) -> Resource:
    return observation(pid, at, "8310-5", "Body temperature", fahrenheit, "[degF]", **kw)


def blood_pressure(pid: str, at: datetime, systolic: float, diastolic: float) -> Resource:
    """A BP panel (85354-9) with systolic and diastolic components."""
    return {
        "resourceType": "Observation",
        "id": new_id(),
        "status": "final",
        "category": _category("vital-signs"),
        "code": {
            "coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel"}]
        },
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": iso(at),
        "component": [
            {
                "code": {"coding": [{"system": LOINC, "code": "8480-6", "display": "Systolic"}]},
                "valueQuantity": quantity(systolic, "mmHg", "mm[Hg]"),
            },
            {
                "code": {"coding": [{"system": LOINC, "code": "8462-4", "display": "Diastolic"}]},
                "valueQuantity": quantity(diastolic, "mmHg", "mm[Hg]"),
            },
        ],
    }


def systolic(pid: str, at: datetime, mmhg: float) -> Resource:
    return observation(pid, at, "8480-6", "Systolic blood pressure", mmhg, "mmHg", ucum="mm[Hg]")


def heart_rate(pid: str, at: datetime, bpm: float) -> Resource:
    return observation(pid, at, "8867-4", "Heart rate", bpm, "/min")


def respiratory_rate(pid: str, at: datetime, rate: float) -> Resource:
    return observation(pid, at, "9279-1", "Respiratory rate", rate, "/min")


def spo2(pid: str, at: datetime, percent: float) -> Resource:
    return observation(pid, at, "59408-5", "Oxygen saturation by pulse oximetry", percent, "%")


def oxygen_flow(pid: str, at: datetime, l_per_min: float) -> Resource:
    return observation(pid, at, "3151-8", "Inhaled oxygen flow rate", l_per_min, "L/min")


def weight(pid: str, at: datetime, value: float, unit: str = "kg") -> Resource:
    ucum = "[lb_av]" if unit in ("lb", "[lb_av]") else unit
    return observation(pid, at, "29463-7", "Body weight", value, unit, ucum=ucum)


def lab(pid: str, at: datetime, code: str, display: str, value: float, unit: str) -> Resource:
    return observation(pid, at, code, display, value, unit, category="laboratory")


def oxygen_device(pid: str, at: datetime, snomed: str, display: str) -> Resource:
    """A device observation: the oxygen delivery device as a SNOMED CT coded value."""
    return {
        "resourceType": "Observation",
        "id": new_id(),
        "status": "final",
        "category": _category("vital-signs"),
        "code": {"text": "Oxygen delivery device"},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": iso(at),
        "valueCodeableConcept": {
            "coding": [{"system": SNOMED, "code": snomed, "display": display}],
            "text": display,
        },
    }


def administration(
    pid: str,
    start: datetime,
    *,
    rxnorm: str | None = None,
    text: str,
    end: datetime | None = None,
    period: bool = False,
    status: str = "completed",
    dose: tuple[float, str] | None = None,
    medication_reference: str | None = None,
    contained: list[Resource] | None = None,
    aid: str | None = None,
) -> Resource:
    """A MedicationAdministration: instant (effectiveDateTime) or a period (open if no end)."""
    ma: Resource = {
        "resourceType": "MedicationAdministration",
        "id": aid or new_id(),
        "status": status,
        "subject": {"reference": f"Patient/{pid}"},
    }
    if contained:
        ma["contained"] = contained
    if medication_reference:
        ma["medicationReference"] = {"reference": medication_reference}
    elif rxnorm:
        ma["medicationCodeableConcept"] = {
            "coding": [{"system": RXNORM, "code": rxnorm, "display": text}],
            "text": text,
        }
    else:
        ma["medicationCodeableConcept"] = {"text": text}
    if period or end is not None:
        ma["effectivePeriod"] = {"start": iso(start), **({"end": iso(end)} if end else {})}
    else:
        ma["effectiveDateTime"] = iso(start)
    if dose is not None:
        value, unit = dose
        ma["dosage"] = {"route": {"text": "intravenous"}, "dose": quantity(value, unit)}
    return ma


def medication(mid: str, text: str, rxnorm: str | None = None) -> Resource:
    code: Resource = {"text": text}
    if rxnorm:
        code["coding"] = [{"system": RXNORM, "code": rxnorm, "display": text}]
    return {"resourceType": "Medication", "id": mid, "code": code}


def collection(resources: list[Resource]) -> Resource:
    """A collection Bundle (what `crs-cds evaluate` reads)."""
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": r} for r in resources],
    }


def searchset(resources: list[Resource]) -> Resource:
    """A searchset Bundle, as a FHIR server answers a search (prefetch)."""
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [
            {
                "fullUrl": f"{r['resourceType']}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in resources
        ],
    }


def transaction(resources: list[Resource]) -> Resource:
    """A transaction Bundle that PUTs every resource at its id (loads into a FHIR server)."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"{r['resourceType']}/{r['id']}",
                "resource": r,
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
            }
            for r in resources
        ],
    }


ICANS = "urn:crs-cds:icans"
ICE_ITEMS = ("ice-orientation", "ice-naming", "ice-commands", "ice-writing", "ice-attention")


def ice_score(pid: str, at: datetime, total: int, items: tuple[int, ...] | None = None) -> Resource:
    """An ICE score Observation (valueInteger), with its five items as components if given."""
    obs: Resource = {
        "resourceType": "Observation",
        "id": new_id(),
        "status": "final",
        "category": _category("exam"),
        "code": {
            "coding": [{"system": ICANS, "code": "ice-total", "display": "ICE score"}],
            "text": "Immune Effector Cell-associated Encephalopathy (ICE) score",
        },
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": iso(at),
        "valueInteger": total,
    }
    if items is not None:
        obs["component"] = [
            {"code": {"coding": [{"system": ICANS, "code": code}]}, "valueInteger": value}
            for code, value in zip(ICE_ITEMS, items, strict=True)
        ]
    return obs


def capd_score(pid: str, at: datetime, total: int) -> Resource:
    """A CAPD score Observation (valueInteger)."""
    return {
        "resourceType": "Observation",
        "id": new_id(),
        "status": "final",
        "category": _category("exam"),
        "code": {
            "coding": [{"system": ICANS, "code": "capd-total", "display": "CAPD score"}],
            "text": "Cornell Assessment of Pediatric Delirium (CAPD) score",
        },
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": iso(at),
        "valueInteger": total,
    }


def neuro_finding(pid: str, at: datetime, domain: str, level: str) -> Resource:
    """A coded neurological finding: Observation code `domain` (consciousness, seizure,
    motor, icp) with the level as its coded value."""
    return {
        "resourceType": "Observation",
        "id": new_id(),
        "status": "final",
        "category": _category("exam"),
        "code": {"coding": [{"system": ICANS, "code": domain}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": iso(at),
        "valueCodeableConcept": {"coding": [{"system": ICANS, "code": level}], "text": level},
    }
