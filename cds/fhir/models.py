"""Lean, typed views of the FHIR R4 resources the rules read.

Only the fields the service uses are declared; everything else is ignored. Each model
validates what it declares (status codes, value types), so a bad entry is reported with
the path of the offending field. Times stay text here and are parsed by `timing`,
because their meaning depends on a setting (CRS_ASSUME_TIMEZONE).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field


class Lean(BaseModel):
    """Base of the lean models: undeclared fields are ignored, values are immutable."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class Coding(Lean):
    system: str | None = None
    code: str | None = None
    display: str | None = None


class CodeableConcept(Lean):
    coding: list[Coding] = Field(default_factory=list)
    text: str | None = None

    def texts(self) -> list[str]:
        """The human-readable names in this concept: text, then the codings' displays."""
        names = [self.text] if self.text else []
        names.extend(c.display for c in self.coding if c.display)
        return names


class Quantity(Lean):
    value: float | None = None
    unit: str | None = None
    system: str | None = None
    code: str | None = None

    def unit_text(self) -> str | None:
        """The UCUM code when given, else the human unit."""
        return self.code or self.unit


class Reference(Lean):
    reference: str | None = None
    display: str | None = None


class Period(Lean):
    start: str | None = None
    end: str | None = None


ObservationStatus = Literal[
    "registered",
    "preliminary",
    "final",
    "amended",
    "corrected",
    "cancelled",
    "entered-in-error",
    "unknown",
]


class ObservationComponent(Lean):
    code: CodeableConcept
    valueQuantity: Quantity | None = None
    valueCodeableConcept: CodeableConcept | None = None


class Observation(Lean):
    resourceType: Literal["Observation"]
    id: str | None = None
    status: ObservationStatus
    code: CodeableConcept
    subject: Reference | None = None
    effectiveDateTime: str | None = None
    effectiveInstant: str | None = None
    effectivePeriod: Period | None = None
    valueQuantity: Quantity | None = None
    valueCodeableConcept: CodeableConcept | None = None
    component: list[ObservationComponent] = Field(default_factory=list)


MedicationAdministrationStatus = Literal[
    "in-progress",
    "not-done",
    "on-hold",
    "completed",
    "entered-in-error",
    "stopped",
    "unknown",
]


class Dosage(Lean):
    dose: Quantity | None = None
    text: str | None = None
    # read leniently: a malformed route must not cost the administration (it is counted)
    route: Any = None


class MedicationAdministration(Lean):
    resourceType: Literal["MedicationAdministration"]
    id: str | None = None
    status: MedicationAdministrationStatus
    medicationCodeableConcept: CodeableConcept | None = None
    medicationReference: Reference | None = None
    subject: Reference | None = None
    effectiveDateTime: str | None = None
    effectivePeriod: Period | None = None
    dosage: Dosage | None = None
    contained: list[dict[str, Any]] = Field(default_factory=list)


class Medication(Lean):
    resourceType: Literal["Medication"]
    id: str | None = None
    code: CodeableConcept | None = None


class DoseAndRate(Lean):
    doseQuantity: Quantity | None = None


class DosageInstruction(Lean):
    text: str | None = None
    doseAndRate: list[DoseAndRate] = Field(default_factory=list)


class MedicationRequest(Lean):
    """A (draft) order. Lenient: the CDS Hooks Sandbox omits `intent`, so it is optional."""

    resourceType: Literal["MedicationRequest"]
    id: str | None = None
    status: str | None = None
    intent: str | None = None
    medicationCodeableConcept: CodeableConcept | None = None
    medicationReference: Reference | None = None
    subject: Reference | None = None
    dosageInstruction: list[DosageInstruction] = Field(default_factory=list)
    contained: list[dict[str, Any]] = Field(default_factory=list)


class Patient(Lean):
    resourceType: Literal["Patient"]
    id: str | None = None


# --- the fast path -------------------------------------------------------------------
#
# Validating a model per resource is most of a request's cost (a 1,000-resource chart
# is ~1,000 validations). The checks below let a resource skip validation when they can
# vouch that the model above would accept it and read exactly the same values: every
# declared field is absent, null or of the exact JSON type the model reads without
# conversion. They only ever say "plain" or "not sure": anything unexpected (another
# type, an unknown status, a missing required field, a huge integer) is "not sure", and
# the caller validates with the model, which stays the definition of validity and the
# explainer of what is wrong. tests/test_fast_reading.py checks both paths agree.

_ABSENT: Any = object()
# Integers up to 2**53 are floats exactly, so reading one with float() is what the
# model does; larger ones are left to the model.
_EXACT_INT = 2**53

OBSERVATION_STATUSES: frozenset[str] = frozenset(get_args(ObservationStatus))
MEDICATION_ADMINISTRATION_STATUSES: frozenset[str] = frozenset(
    get_args(MedicationAdministrationStatus)
)


# `type(value) in TEXT` is a `str | None` field the model reads unchanged (exact types:
# a str subclass, bytes or a bool is left to the model).
TEXT = frozenset({str, type(None)})


def _number(value: Any) -> bool:
    """A `float | None` field: a float, or an integer the model turns into the same float."""
    kind = type(value)
    return value is None or kind is float or (kind is int and -_EXACT_INT <= value <= _EXACT_INT)


def _list_of(data: dict[str, Any], key: str, item: Callable[[Any], bool]) -> bool:
    """A list field with a default: absent, or a list whose every item passes `item`."""
    value = data.get(key, _ABSENT)
    if value is _ABSENT:
        return True
    return type(value) is list and all(map(item, value))


def plain_coding(data: Any) -> bool:
    """`Coding`."""
    return (
        type(data) is dict
        and type(data.get("system")) in TEXT
        and type(data.get("code")) in TEXT
        and type(data.get("display")) in TEXT
    )


def plain_concept(data: Any) -> bool:
    """`CodeableConcept` (required where used)."""
    return (
        type(data) is dict
        and type(data.get("text")) in TEXT
        and _list_of(data, "coding", plain_coding)
    )


def _optional_concept(data: Any) -> bool:
    return data is None or plain_concept(data)


def _optional_quantity(data: Any) -> bool:
    """`Quantity | None`."""
    return data is None or (
        type(data) is dict
        and _number(data.get("value"))
        and type(data.get("unit")) in TEXT
        and type(data.get("system")) in TEXT
        and type(data.get("code")) in TEXT
    )


def _optional_reference(data: Any) -> bool:
    """`Reference | None`."""
    return data is None or (
        type(data) is dict
        and type(data.get("reference")) in TEXT
        and type(data.get("display")) in TEXT
    )


def _optional_period(data: Any) -> bool:
    """`Period | None`."""
    return data is None or (
        type(data) is dict and type(data.get("start")) in TEXT and type(data.get("end")) in TEXT
    )


def _component(data: Any) -> bool:
    """`ObservationComponent`."""
    return (
        type(data) is dict
        and plain_concept(data.get("code"))
        and _optional_quantity(data.get("valueQuantity"))
        and _optional_concept(data.get("valueCodeableConcept"))
    )


def _json_object(data: Any) -> bool:
    """`dict[str, Any]`."""
    return type(data) is dict and all(type(key) is str for key in data)


def plain_observation(data: dict[str, Any]) -> bool:
    """True when `Observation` would accept `data` and read the same values from it."""
    status = data.get("status")
    return (
        data.get("resourceType") == "Observation"
        and type(status) is str
        and status in OBSERVATION_STATUSES
        and type(data.get("id")) in TEXT
        and plain_concept(data.get("code"))
        and _optional_reference(data.get("subject"))
        and type(data.get("effectiveDateTime")) in TEXT
        and type(data.get("effectiveInstant")) in TEXT
        and _optional_period(data.get("effectivePeriod"))
        and _optional_quantity(data.get("valueQuantity"))
        and _optional_concept(data.get("valueCodeableConcept"))
        and _list_of(data, "component", _component)
    )


def plain_medication_administration(data: dict[str, Any]) -> bool:
    """True when `MedicationAdministration` would accept `data` and read the same values."""
    status, dosage = data.get("status"), data.get("dosage")
    return (
        data.get("resourceType") == "MedicationAdministration"
        and type(status) is str
        and status in MEDICATION_ADMINISTRATION_STATUSES
        and type(data.get("id")) in TEXT
        and _optional_concept(data.get("medicationCodeableConcept"))
        and _optional_reference(data.get("medicationReference"))
        and _optional_reference(data.get("subject"))
        and type(data.get("effectiveDateTime")) in TEXT
        and _optional_period(data.get("effectivePeriod"))
        and (
            dosage is None
            or (
                type(dosage) is dict
                and _optional_quantity(dosage.get("dose"))
                and type(dosage.get("text")) in TEXT
            )
        )
        and _list_of(data, "contained", _json_object)
    )


def plain_medication(data: dict[str, Any]) -> bool:
    """True when `Medication` would accept `data` and read the same values from it."""
    return (
        data.get("resourceType") == "Medication"
        and type(data.get("id")) in TEXT
        and _optional_concept(data.get("code"))
    )
