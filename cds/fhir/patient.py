"""What the rules need from the Patient resource: the age at the evaluation time."""

from __future__ import annotations

import re
from datetime import date, datetime

from cds.fhir.reading import ResourceCollector

_BIRTH_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})")


def age_in_years(collected: ResourceCollector, patient_id: str | None, at: datetime) -> int | None:
    """Whole years of age at `at` from Patient.birthDate (full dates only), if known."""
    patients = list(collected.of_type("Patient"))
    if patient_id is not None:
        patients = [p for p in patients if p.get("id") in (patient_id, None)] or patients
    if len(patients) != 1:
        return None
    birth = patients[0].get("birthDate")
    match = _BIRTH_DATE.match(birth) if isinstance(birth, str) else None
    if match is None:
        return None
    try:
        born = date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None
    today = at.date()
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))
