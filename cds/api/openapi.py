"""The OpenAPI document describes what the routes really read and answer.

The hook and feedback routes read their bodies raw (to bound their size and decode them
in one pass), so FastAPI cannot infer them: each route says, in `openapi_extra`, which
body it takes and every answer it gives, by reference to the schemas here — generated
from the pydantic request models and the msgspec response structs, never written by
hand. `install` adds those schemas to the document's components."""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from cds.fhir.client import FHIR_ID
from cds.protocol import CdsResponse, HookRequest, OrderContext, PatientContext
from cds.questionnaires import IDS as questionnaire_ids
from cds.store.feedback import FeedbackRequest

REF = "#/components/schemas/{model}"
HOOKS = ("patient-view", "order-select", "order-sign")  # the hooks the services answer


class ErrorBody(BaseModel):
    """A 4xx or 5xx answer: what is wrong, and where."""

    error: str
    location: str | None = Field(default=None, description="the part of the request at fault")


class AuthErrorBody(BaseModel):
    """A 401: the check the client token failed (the token itself is never echoed)."""

    error: str
    reason: str


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _error(description: str) -> dict[str, Any]:
    return _json("ErrorBody", description)


UNAUTHENTICATED = {
    **_json("AuthErrorBody", "client token missing or refused (authentication on)"),
    "headers": {
        "WWW-Authenticate": {
            "description": 'Bearer error="invalid_token", error_description="<reason>"',
            "schema": {"type": "string"},
        }
    },
}

EXAMPLE_HOOK_REQUEST = {
    "hook": "patient-view",
    "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    "context": {"userId": "Practitioner/example", "patientId": "example"},
    "prefetch": {
        "patient": None,
        "observations": None,
        "oxygenDevices": None,
        "medicationAdministrations": None,
        "conditions": None,
        "assessments": None,
    },
}

HOOK = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": _ref("HookRequest"),
                "examples": {"patient-view, no data": {"value": EXAMPLE_HOOK_REQUEST}},
            }
        },
    },
    "responses": {
        "200": _json("CdsResponse", "the cards (possibly none)"),
        "400": _error("malformed request: what is wrong, and where"),
        "401": UNAUTHENTICATED,
        "404": _error("no such service"),
        "408": _error("the body did not arrive in time (CRS_BODY_TIMEOUT_SECONDS)"),
        "412": _error("data neither in prefetch nor obtainable from fhirServer"),
        "413": _error("body larger than CRS_MAX_REQUEST_BYTES, or too many draft orders"),
        "415": _error("a Content-Encoding (gzip…): the body must be sent uncompressed"),
        "503": _error("the decision could not be recorded (database and spool unavailable)"),
    },
}

FEEDBACK = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": _ref("FeedbackRequest")}},
    },
    "responses": {
        "200": {"description": "stored (an empty body)"},
        "400": _error(
            "malformed feedback, a suggestion the card did not offer, or an outcome dated "
            "a day or more after the feedback arrived"
        ),
        "401": UNAUTHENTICATED,
        "404": _error("no such service, or a card it did not issue"),
        "408": _error("the body did not arrive in time"),
        "413": _error("body larger than 1 MiB"),
        "415": _error("a Content-Encoding (gzip…): the body must be sent uncompressed"),
        "503": _error("the feedback could not be stored (database unavailable)"),
    },
}

FHIR_BODY = {"content": {"application/fhir+json": {"schema": {"type": "object"}}}}
QUESTIONNAIRE = {
    "responses": {
        "200": {"description": "the Questionnaire (FHIR R4)", **FHIR_BODY},
        "404": {"description": "an OperationOutcome: no such Questionnaire", **FHIR_BODY},
    }
}

DISCOVERY = {
    "responses": {
        "200": _json("Discovery", "the services, their hooks and prefetch templates"),
        "401": UNAUTHENTICATED,
    }
}


# --- the watch (issue #12): in the document only when the watch is on ---------------

NOTIFICATION = {
    "requestBody": {
        "required": True,
        "content": {
            media: {"schema": {"type": "object", "description": "a notification Bundle"}}
            for media in ("application/fhir+json", "application/json")
        },
    },
    "responses": {
        "200": {
            "description": "stored (processed after the answer; never lost once stored)",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["accepted", "events", "catchUp"],
                        "properties": {
                            "accepted": {"type": "string"},
                            "events": {"type": "integer"},
                            "catchUp": {"type": "boolean"},
                        },
                    }
                }
            },
        },
        "400": _error("not a notification Bundle of the Subscriptions Backport IG: what, where"),
        "401": _error("no channel header, or one no subscription of the watch was given"),
        "403": _error("the channel header of another subscription"),
        "404": _error("the watch is off on this service"),
        "408": _error("the body did not arrive in time"),
        "413": _error("body larger than CRS_MAX_REQUEST_BYTES"),
    },
}

ENROLMENT = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["patientId"],
                    "additionalProperties": False,
                    "properties": {
                        "patientId": {"type": "string", "pattern": f"^{FHIR_ID.pattern}$"}
                    },
                }
            }
        },
    },
    "responses": {
        "202": {
            "description": "enrolled: the patient's pseudonym",
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["patient", "active"],
                        "properties": {
                            "patient": {"type": "string"},
                            "active": {"type": "boolean"},
                        },
                    }
                }
            },
        },
        "400": _error("malformed enrolment: what is wrong, and where"),
        "401": UNAUTHENTICATED,
        "404": _error("the watch is off on this service"),
        "408": _error("the body did not arrive in time"),
        "413": _error("body larger than CRS_MAX_REQUEST_BYTES"),
    },
}

WATCHED_PATIENT = {
    "responses": {
        "200": {
            "description": "the census patient's state, history and notifications",
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        "401": UNAUTHENTICATED,
        "404": _error("no census patient of that pseudonym, or the watch is off"),
    }
}


def component_schemas() -> dict[str, Any]:
    """Every schema the operations refer to, by name."""
    from cds.api.discovery import Discovery

    models: list[type[BaseModel]] = [
        HookRequest,
        PatientContext,
        OrderContext,
        FeedbackRequest,
        ErrorBody,
        AuthErrorBody,
    ]
    _, pydantic_defs = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    schemas: dict[str, Any] = dict(pydantic_defs.get("$defs", {}))
    # the context a hook carries: patient-view's, or the order hooks' (with draftOrders)
    context = {"anyOf": [_ref("OrderContext"), _ref("PatientContext")]}
    schemas["HookRequest"]["properties"]["context"] = context
    schemas["HookRequest"]["properties"]["hook"]["enum"] = list(HOOKS)
    _, struct_defs = msgspec.json.schema_components(
        [CdsResponse, Discovery], ref_template=REF.replace("{model}", "{name}")
    )
    # a card's `extension` is the service's own object (see README: extension.crs …)
    struct_defs["Struct"] = {"title": "Extension", "type": "object"}
    for name, schema in struct_defs.items():
        schemas.setdefault(name, schema)
    return schemas


def _as_declared(operation: dict[str, Any]) -> None:
    """An operation as its `openapi_extra` declares it: FastAPI's guesses (a 422 that
    never comes; a body typed "string" beside the schema declared) removed."""
    responses = operation.get("responses", {})
    responses.pop("422", None)
    for response in responses.values():
        for media in response.get("content", {}).values():
            schema = media.get("schema", {})
            if "$ref" in schema:
                media["schema"] = {"$ref": schema["$ref"]}
        if not response.get("content"):
            response.pop("content", None)
    for media in responses.get("200", {}).get("content", {}).copy():
        declared = responses["200"]["content"]
        if media == "application/json" and "application/fhir+json" in declared:
            declared.pop(media)


def install(app: FastAPI) -> None:
    """Serve the document with the schemas the routes' `openapi_extra` refer to."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=(
                    "CDS Hooks 2.0 service: CRS grading and tocilizumab order checks. "
                    "Authentication (when on): `Authorization: Bearer <client JWT>`."
                ),
                routes=app.routes,
            )
            components = document.setdefault("components", {}).setdefault("schemas", {})
            for name, schema in component_schemas().items():
                components.setdefault(name, schema)
            known = {
                "service_id": sorted(app.state.hooks.services),
                "qid": sorted(questionnaire_ids),
            }
            for operations in document["paths"].values():
                for operation in operations.values():
                    _as_declared(operation)
                    for parameter in operation.get("parameters", []):
                        if parameter.get("in") == "path" and parameter["name"] in known:
                            parameter["schema"]["enum"] = known[parameter["name"]]
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
