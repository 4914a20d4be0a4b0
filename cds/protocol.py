"""CDS Hooks 2.0 request models and response helpers.

Requests are validated leniently where real EHRs are lenient (extra fields allowed), but
the fields the spec requires are required. Responses are typed structs, turned into JSON
once, by `render`, at the edge.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Struct
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from cds.errors import InvalidRequest
from cds.fhir.reading import validation_message


class FhirAuthorization(BaseModel):
    model_config = ConfigDict(extra="allow")

    access_token: str
    token_type: str = "Bearer"
    expires_in: int | None = None
    scope: str | None = None
    subject: str | None = None
    patient: str | None = None


# A hookInstance is a UUID (36 characters) in CDS Hooks 2.0; longer ones are accepted up
# to this many characters, the length the audit trail keeps (`audit_records.hook_instance`),
# and without control characters (PostgreSQL cannot keep a NUL).
HOOK_INSTANCE_MAX_LENGTH = 256


def _no_control_characters(value: str) -> str:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("must not contain control characters (a NUL, a line break…)")
    return value


class HookRequest(BaseModel):
    """The body of POST /cds-services/{id}."""

    model_config = ConfigDict(extra="allow")

    hook: str = Field(min_length=1)
    hookInstance: Annotated[
        str,
        Field(min_length=1, max_length=HOOK_INSTANCE_MAX_LENGTH),
        AfterValidator(_no_control_characters),
    ]
    fhirServer: str | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None


class PatientContext(BaseModel):
    """Context fields shared by patient-view, order-select and order-sign."""

    model_config = ConfigDict(extra="allow")

    userId: str | None = None
    patientId: str = Field(min_length=1)
    encounterId: str | None = None


class OrderContext(PatientContext):
    """order-select / order-sign: the draft orders (a Bundle) and, for select, selections."""

    draftOrders: dict[str, Any]
    selections: list[str] | None = None


_Context = TypeVar("_Context", bound=PatientContext)


def parse_context(model: type[_Context], context: dict[str, Any]) -> _Context:
    """The hook context as `model`, or InvalidRequest naming each bad field."""
    try:
        return model.model_validate(context)
    except ValidationError as exc:
        raise InvalidRequest(validation_message("context", exc), "context") from exc


# --- the response, typed ---------------------------------------------------------------
# CDS Hooks forbids null, "", [] and {} in a response (`{"cards": []}` excepted): every
# optional field defaults to None or an empty tuple and is left out when so
# (`omit_defaults`). A machine-readable extension keeps its empty lists (an empty
# `problems` means "no problem"): its lists have no default.

FhirResource = dict[str, Any]  # a complete FHIR resource the service wrote and validated


class _Out(Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """A part of the response; fields equal to their default are not written."""


class Coding(_Out, frozen=True):
    system: str
    code: str
    display: str


class Source(_Out, frozen=True):
    label: str
    url: str | None = None
    topic: Coding | None = None


class Action(_Out, frozen=True):
    type: Literal["create", "update", "delete"]
    description: str
    resource: FhirResource | None = None
    resourceId: str | None = None


class Suggestion(_Out, frozen=True):
    label: str
    uuid: str
    actions: tuple[Action, ...]
    isRecommended: bool | None = None


class Link(_Out, frozen=True):
    label: str
    url: str
    type: Literal["absolute", "smart"]
    appContext: str | None = None


Indicator = Literal["info", "warning", "critical"]


class Card(_Out, frozen=True):
    """One CDS Hooks card. `extension` is the service's machine-readable detail (a typed
    struct of its own, e.g. `cds.cards.CardExtension`)."""

    uuid: str
    summary: str
    indicator: Indicator
    source: Source
    detail: str | None = None
    suggestions: tuple[Suggestion, ...] = ()
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: tuple[Coding, ...] = ()
    links: tuple[Link, ...] = ()
    extension: Struct | None = None


class CdsResponse(Struct, frozen=True, omit_defaults=True):
    """The body of a hook's answer: `cards` always present (possibly empty)."""

    cards: tuple[Card, ...]
    extension: Struct | None = None


_ENCODER = msgspec.json.Encoder()


def render(response: CdsResponse) -> bytes:
    """The response as JSON bytes (the one place it becomes JSON)."""
    return _ENCODER.encode(response)


def render_struct(value: Struct) -> bytes:
    """Any typed answer (discovery, feedback…) as JSON bytes."""
    return _ENCODER.encode(value)


def to_json(value: Struct) -> Any:
    """A response part as plain JSON values (for the audit record and the CLI)."""
    return msgspec.to_builtins(value)
