"""POST /cds-services/{id}/feedback: what the clinician did with a card (CDS Hooks 2.0).

200 with an empty body once stored; 400 for a malformed body, a suggestion the card did
not offer or an outcome dated a day or more after the feedback arrived (one dated ahead
by less is acted on at its arrival); 404 for an unknown service or card; 503 when it
cannot be stored (it is never acknowledged unless it was)."""

from __future__ import annotations

import logging

import anyio
import orjson
from fastapi import APIRouter, Request, Response
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from cds.api.body import FEEDBACK_MAX_BYTES, read_body
from cds.api.deps import ClientDep, HooksDep, StoreDep
from cds.api.openapi import FEEDBACK
from cds.errors import CdsError, InvalidRequest, UnknownService, not_json, shown
from cds.fhir.reading import validation_issues, validation_message
from cds.store.feedback import FeedbackRequest, apply

router = APIRouter()
log = logging.getLogger("cds.api.feedback")


class FeedbackUnavailable(CdsError):
    status = 503


@router.post(
    "/cds-services/{service_id}/feedback",
    status_code=200,
    response_class=Response,
    openapi_extra=FEEDBACK,
)
async def feedback(
    service_id: str, request: Request, hooks: HooksDep, store: StoreDep, client: ClientDep
) -> Response:
    """Store the outcomes of cards this service issued (the caller verified like a hook
    call's, when authentication is on)."""
    if service_id not in hooks.services:
        raise UnknownService(
            f"no CDS service {shown(service_id)}; GET /cds-services lists "
            + ", ".join(sorted(hooks.services))
        )
    body = await read_body(request, store.runtime.settings, FEEDBACK_MAX_BYTES)
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(not_json("feedback body", body, exc)) from exc
    if not isinstance(data, dict):
        raise InvalidRequest('feedback body must be a JSON object {"feedback": [...]}')
    try:
        parsed = FeedbackRequest.model_validate(data)
    except ValidationError as exc:
        # located from the body's root, as the 404 and the other 400s are: feedback[0].outcome
        first = validation_issues("", exc)[0].location
        raise InvalidRequest(validation_message("", exc), first) from exc
    override_system = store.runtime.knowledge.alerting.order_check.override_system
    received_at = store.clock()
    try:
        stored = await anyio.to_thread.run_sync(
            lambda: apply(
                store.engine,
                service_id,
                parsed,
                received_at,
                store.new_id,
                client,
                override_system,
            )
        )
    except SQLAlchemyError as exc:
        log.error("feedback not stored", extra={"error": type(exc).__name__})
        raise FeedbackUnavailable(
            "the feedback could not be stored (database unavailable); send it again"
        ) from exc
    store.acknowledged.expire()  # cards of these patients quieted from the next call
    log.info(
        "feedback",
        extra={
            "service": service_id,
            "cards": stored.stored,
            "query": f"repeated={stored.repeated}",
        },
    )
    return Response(status_code=200)
