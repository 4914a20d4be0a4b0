"""Lean, typed views of the FHIR R4 resources the rules read.

Only the fields the service uses are declared; everything else is ignored. Each model
validates what it declares (status codes, value types), so a bad entry is reported with
the path of the offending field. Times stay text here and are parsed by `timing`,
because their meaning depends on a setting (CRS_ASSUME_TIMEZONE).

The service reads resources as the msgspec structs of `structs`, which mirror these
models; a resource the structs refuse is validated here, which says what is wrong.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt


def _not_a_boolean(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return value


# A decimal: a JSON number, or a string holding one ("38.7": read as the number it
# writes); never a boolean (lax validation read `true` as 1, a draft dose of 1 mg).
Decimal = Annotated[float, BeforeValidator(_not_a_boolean)]


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


class Quantity(Lean):
    value: Decimal | None = None
    comparator: str | None = None  # <, <=, >=, >, ad: the value is a bound, not a measurement
    unit: str | None = None
    code: str | None = None  # (the UCUM code; `system` is not read)


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
    valueInteger: StrictInt | None = None  # scores (ICE items) are integers


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
    valueInteger: StrictInt | None = None  # scores (ICE, CAPD) are integers
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
    dose: Any = None  # not read: a malformed dose must not cost the administration
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


class Condition(Lean):
    """A diagnosis or finding (a seizure, cerebral oedema): its code, when, and whether it
    was refuted."""

    resourceType: Literal["Condition"]
    id: str | None = None
    code: CodeableConcept | None = None
    subject: Reference | None = None
    clinicalStatus: CodeableConcept | None = None
    verificationStatus: CodeableConcept | None = None
    onsetDateTime: str | None = None
    recordedDate: str | None = None


class Answer(Lean):
    valueInteger: StrictInt | None = None
    valueDecimal: Decimal | None = None
    valueCoding: Coding | None = None


class ResponseItem(Lean):
    linkId: str
    answer: list[Answer] = Field(default_factory=list)
    item: list[ResponseItem] = Field(default_factory=list)


QuestionnaireResponseStatus = Literal[
    "in-progress", "completed", "amended", "entered-in-error", "stopped"
]


class QuestionnaireResponse(Lean):
    """A completed assessment form (the ICE or CAPD Questionnaire the service publishes)."""

    resourceType: Literal["QuestionnaireResponse"]
    id: str | None = None
    status: QuestionnaireResponseStatus
    questionnaire: str | None = None
    subject: Reference | None = None
    authored: str | None = None
    item: list[ResponseItem] = Field(default_factory=list)
