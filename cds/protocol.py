"""CDS Hooks 2.0 request models and response helpers.

Requests are validated leniently where real EHRs are lenient (extra fields allowed), but
the fields the spec requires are required. Responses are built as plain dicts with
`compact()`, because the spec forbids null, "", [] and {} in them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


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


def compact(value: Any) -> Any:
    """Drop None, "", [] and {} recursively (CDS Hooks forbids them in responses).

    `extension` objects are the service's own machine-readable data and are kept as
    built (an empty `problems` list there means "no problem").
    """
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key != "extension":
                item = compact(item)
            if item is None or item == "" or item == [] or item == {}:
                continue
            out[key] = item
        return out
    if isinstance(value, list):
        return [compact(item) for item in value]
    return value
