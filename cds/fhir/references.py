"""Which patient a FHIR resource is about, read from its references."""

from __future__ import annotations

from typing import Any

from cds.fhir.client import FHIR_ID


def patient_of(resource: dict[str, Any]) -> str | None:
    """The id of the patient a resource is about (subject / patient), if it names one."""
    for field in ("subject", "patient"):
        value = resource.get(field)
        reference = value.get("reference") if isinstance(value, dict) else None
        pid = patient_id_of(reference)
        if pid is not None:
            return pid
    return None


def patient_id_of(reference: object) -> str | None:
    """`Patient/x` or `https://…/Patient/x[/_history/n]` -> x (a FHIR id), else None."""
    if not isinstance(reference, str):
        return None
    parts = reference.split("/_history/", 1)[0].rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == "Patient" and FHIR_ID.fullmatch(parts[-1]):
        return parts[-1]
    return None
