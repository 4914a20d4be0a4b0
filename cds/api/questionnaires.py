"""GET /fhir/Questionnaire/{id}: the Questionnaires for charting ICANS assessments (ICE;
CAPD for children under 12), so that an EHR can render them and store their responses."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from cds.api.openapi import QUESTIONNAIRE
from cds.questionnaires import IDS, questionnaire

router = APIRouter()
FHIR_JSON = "application/fhir+json"


@router.get("/fhir/Questionnaire/{qid}", openapi_extra=QUESTIONNAIRE)
async def get_questionnaire(qid: str) -> JSONResponse:
    """The Questionnaire `qid` (ice | capd), or a 404 OperationOutcome."""
    found: dict[str, Any] | None = questionnaire(qid)
    if found is None:
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "error",
                    "code": "not-found",
                    "diagnostics": f"no Questionnaire {qid!r}; known: {', '.join(IDS)}",
                }
            ],
        }
        return JSONResponse(outcome, status_code=404, media_type=FHIR_JSON)
    return JSONResponse(found, media_type=FHIR_JSON)
