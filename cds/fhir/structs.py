"""FHIR resources as the normaliser reads them: typed, immutable msgspec structs.

A request body is decoded straight into these types in one pass (`decode_body`), which
parses, type-checks and builds the values together, several times faster than parsing
JSON into dicts and checking them afterwards, and in time linear in the size of the
chart (the structs are invisible to the garbage collector: decoded JSON has no cycles).

The types mirror the lean models of `models`, field for field: a value decodes into a
struct exactly when the model would read it without conversion. What the models check
beyond types (status codes, required fields) is `checked()` here. Anything a struct
refuses goes to the model, which stays the definition of validity and the explainer of
what is wrong (see `normalise`). One `Resource` type holds the fields of every resource
type the rules read, so a Bundle of mixed resources decodes without a tagged union; the
fields of a resource type the rules do not read are simply ignored.

Arrays are tuples, so that a CodeableConcept is hashable and the meaning of a code can
be remembered by the concept itself.
"""

from __future__ import annotations

from typing import Any, Self, get_args

import msgspec
from msgspec import UNSET, Struct, UnsetType

from cds.fhir import models


class _Frozen(Struct, frozen=True, gc=False, omit_defaults=True):
    """Immutable, untracked by the garbage collector; defaults left out when dumped (a
    null optional field reads as an absent one, in the models too)."""

    @classmethod
    def of(cls, data: Any) -> Self:
        """From values a lean model has validated (their types are the struct's)."""
        return msgspec.convert(data, cls)


class Coding(_Frozen, frozen=True, gc=False, omit_defaults=True):
    system: str | None = None
    code: str | None = None
    display: str | None = None


class CodeableConcept(_Frozen, frozen=True, gc=False, omit_defaults=True):
    coding: tuple[Coding, ...] = ()
    text: str | None = None

    def texts(self) -> list[str]:
        """The human-readable names: text, then the codings' displays."""
        names = [self.text] if self.text else []
        names.extend(c.display for c in self.coding if c.display)
        return names


class Quantity(_Frozen, frozen=True, gc=False, omit_defaults=True):
    value: float | None = None
    comparator: str | None = None
    unit: str | None = None
    code: str | None = None


class Reference(_Frozen, frozen=True, gc=False, omit_defaults=True):
    reference: str | None = None
    display: str | None = None


class Period(_Frozen, frozen=True, gc=False, omit_defaults=True):
    start: str | None = None
    end: str | None = None


class Component(_Frozen, frozen=True, gc=False, omit_defaults=True):
    code: CodeableConcept
    valueQuantity: Quantity | None = None
    valueCodeableConcept: CodeableConcept | None = None
    valueInteger: int | None = None


class Answer(_Frozen, frozen=True, gc=False, omit_defaults=True):
    valueInteger: int | None = None
    valueDecimal: float | None = None
    valueCoding: Coding | None = None


class ResponseItem(_Frozen, frozen=True, gc=False, omit_defaults=True):
    linkId: str
    answer: tuple[Answer, ...] = ()
    item: tuple[ResponseItem, ...] = ()


class Dosage(_Frozen, frozen=True, gc=False, omit_defaults=True):
    dose: Any = None  # not read, as the model
    text: str | None = None
    route: Any = None  # read leniently, as the model does


class Search(_Frozen, frozen=True, gc=False, omit_defaults=True):
    mode: Any = None


class Link(_Frozen, frozen=True, gc=False, omit_defaults=True):
    relation: Any = None
    url: Any = None


class Resource(_Frozen, frozen=True, gc=False, omit_defaults=True):
    """Any resource: the fields the rules read of Observation, MedicationAdministration,
    Medication, Patient, Condition, QuestionnaireResponse and Bundle (a Bundle's `entry`
    and `link` are UNSET when absent, as the collector tells an absent `entry` from a null
    one)."""

    resourceType: str
    id: str | None = None
    # required by some models: UNSET when absent, so that the model, explaining the
    # problem, sees what was sent (absent, or null)
    status: str | UnsetType | None = UNSET
    code: CodeableConcept | UnsetType | None = UNSET
    subject: Reference | None = None
    effectiveDateTime: str | None = None
    effectiveInstant: str | None = None
    effectivePeriod: Period | None = None
    valueQuantity: Quantity | None = None
    valueCodeableConcept: CodeableConcept | None = None
    valueInteger: int | None = None
    component: tuple[Component, ...] = ()
    clinicalStatus: CodeableConcept | None = None
    verificationStatus: CodeableConcept | None = None
    onsetDateTime: str | None = None
    recordedDate: str | None = None
    questionnaire: str | None = None
    authored: str | None = None
    item: tuple[ResponseItem, ...] = ()
    medicationCodeableConcept: CodeableConcept | None = None
    medicationReference: Reference | None = None
    dosage: Dosage | None = None
    contained: tuple[Any, ...] = ()  # JSON objects, read only when referenced
    birthDate: Any = None  # patient.py reads full dates only, whatever else is there
    entry: tuple[Entry, ...] | UnsetType = UNSET
    link: tuple[Link, ...] | UnsetType = UNSET
    total: Any = None  # Bundle.total, read leniently (only an integer is used)
    issue: Any = None  # OperationOutcome.issue, read leniently (severity only)


class Entry(_Frozen, frozen=True, gc=False, omit_defaults=True):
    fullUrl: str | None = None
    resource: Resource | None = None
    search: Search | None = None
    request: Any = UNSET
    response: Any = UNSET


class Body(Struct, gc=False):
    """A CDS Hooks request with its prefetch decoded into resources; the other members
    as plain JSON values (UNSET when absent), validated by `protocol.HookRequest`."""

    hook: Any = UNSET
    hookInstance: Any = UNSET
    fhirServer: Any = UNSET
    fhirAuthorization: Any = UNSET
    context: Any = UNSET
    prefetch: dict[str, Resource | None] | UnsetType | None = UNSET

    def members(self) -> dict[str, Any]:
        """The members present in the body, as a JSON object."""
        return {
            name: value
            for name in self.__struct_fields__
            if (value := getattr(self, name)) is not UNSET
        }


_BODY = msgspec.json.Decoder(Body)

OBSERVATION_STATUSES = frozenset(get_args(models.ObservationStatus))
MEDICATION_ADMINISTRATION_STATUSES = frozenset(get_args(models.MedicationAdministrationStatus))
QUESTIONNAIRE_RESPONSE_STATUSES = frozenset(get_args(models.QuestionnaireResponseStatus))


def decode_body(body: bytes) -> Body | None:
    """The request decoded with its prefetch as structs, or None when any part of it is
    not what the structs read (invalid JSON too): the caller then reads it as plain JSON,
    which locates every problem."""
    try:
        return _BODY.decode(body)
    except (msgspec.DecodeError, ValueError, RecursionError):
        # (ValidationError is a DecodeError; invalid UTF-8 a ValueError; nesting deeper
        # than the decoder goes a RecursionError)
        return None


def from_json(data: Any) -> Resource | None:
    """A JSON object (as parsed) as a Resource, or None if a field is not as read."""
    try:
        return msgspec.convert(data, Resource)
    except (msgspec.ValidationError, RecursionError):
        return None


def to_json(resource: Resource) -> dict[str, Any]:
    """The resource as a JSON object (absent fields left out), for the models."""
    data: dict[str, Any] = msgspec.to_builtins(resource)
    return data


def checked(resource: Resource, resource_type: str) -> bool:
    """What the lean model of `resource_type` requires beyond the types of its fields."""
    if resource.resourceType != resource_type:
        return False
    if resource_type == "Observation":
        return resource.status in OBSERVATION_STATUSES and type(resource.code) is CodeableConcept
    if resource_type == "MedicationAdministration":
        return resource.status in MEDICATION_ADMINISTRATION_STATUSES and all(
            type(item) is dict and all(type(key) is str for key in item)
            for item in resource.contained
        )
    if resource_type == "QuestionnaireResponse":
        return resource.status in QUESTIONNAIRE_RESPONSE_STATUSES
    return True
