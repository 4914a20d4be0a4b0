"""CDS Hooks 2.0 request models and response helpers.

Requests are validated leniently where real EHRs are lenient (extra fields allowed), but
the fields the spec requires are required. Responses are built as plain dicts with
`compact()`, because the spec forbids null, "", [] and {} in them.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


class HookRequest(BaseModel):
    """The body of POST /cds-services/{id}."""

    model_config = ConfigDict(extra="allow")

    hook: str = Field(min_length=1)
    hookInstance: str = Field(min_length=1)
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


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


_Context = TypeVar("_Context", bound=PatientContext)


def parse_context(model: type[_Context], context: dict[str, Any]) -> _Context:
    """The hook context as `model`, or InvalidRequest naming each bad field."""
    try:
        return model.model_validate(context)
    except ValidationError as exc:
        raise InvalidRequest(validation_message("context", exc), "context") from exc


def compact(value: Any) -> Any:
    """Drop None, "", [] and {} recursively (CDS Hooks forbids them in responses).

    Inside `extension` objects (the service's own machine-readable data) only nulls are
    dropped: an empty `problems` list there means "no problem".
    """
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            item = _drop_nulls(item) if key == "extension" else compact(item)
            if item is None or item == "" or item == [] or item == {}:
                continue
            out[key] = item
        return out
    if isinstance(value, list):
        return [compact(item) for item in value]
    return value
