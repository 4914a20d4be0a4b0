"""The watch's HTTP edge (issue #12): the FHIR Subscription notification endpoint, and the
authenticated enrolment and patient-state API. `install(app)` adds the routes and, when
the watch is configured, makes patient-view calls enrol their patients and (with
CRS_WATCH_IN_SERVE) runs one watch worker inside the service process.

- `POST /watch/notifications`: a notification Bundle of a Subscription the watch created
  (`crs-cds watch subscribe`), authenticated by its channel header before its body is
  read. 200 once stored; 400 malformed (what and where), 401 no or unknown channel
  header, 403 another subscription's header, 413 larger than CRS_MAX_REQUEST_BYTES —
  and then nothing is stored. With the watch off every route
  answers 404 saying so.
- `POST /watch/patients` `{"patientId": "…"}`: enrol a patient (202, its pseudonym).
- `GET /watch/patients/{pseudonym}`: the patient's state, history and notifications.
Both patient routes need a verified CDS client token when authentication is on (as a
hook call does).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Any

import anyio
import orjson
from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cds.api.body import read_body
from cds.api.deps import ClientDep
from cds.api.openapi import ENROLMENT, NOTIFICATION, WATCHED_PATIENT
from cds.api.responses import JsonResponse
from cds.errors import CdsError, InvalidRequest, not_json, shown
from cds.fhir.client import is_fhir_id
from cds.fhir.reading import validation_message
from cds.pipeline import Hooks
from cds.watch.enrolment import EnrollingMemory
from cds.watch.metrics import WatchMetrics
from cds.watch.service import Watch, close_webhook_client, product_names
from cds.watch.status import patient_status
from cds.watch.subscriptions import ENDPOINT_PATH, bearer_secret, read_notification
from cds.watch.worker import Worker
from cds.web.census import WatchCensus

router = APIRouter()
log = logging.getLogger("cds.api.watch")


class WatchOff(CdsError):
    """The watch is not configured on this service: its routes answer 404 saying so."""

    status = 404


class UnknownPatient(CdsError):
    status = 404


# An enrolment is one patient id: its body is small.
ENROLMENT_MAX_BYTES = 64 * 1024


class Enrolment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    patientId: str = Field(min_length=1, max_length=64)


def _watch(request: Request) -> Watch:
    watch: Watch | None = getattr(request.app.state, "watch", None)
    if watch is None:
        raise WatchOff("the watch is off on this service: CRS_WATCH_FHIR_SERVER is not set")
    return watch


@router.post(ENDPOINT_PATH, openapi_extra=NOTIFICATION)
async def notification(request: Request) -> JsonResponse:
    """A FHIR Subscription notification (R5 Backport IG, R4): stored, then processed."""
    watch = _watch(request)
    secret = bearer_secret(request.headers.get("Authorization"))
    await anyio.to_thread.run_sync(
        lambda: watch.subscriptions.authenticate(secret, watch.config.server)
    )
    note = read_notification(await read_body(request, watch.runtime.settings))
    accepted = await anyio.to_thread.run_sync(
        lambda: watch.subscriptions.accept(secret, note, watch.config.server, watch.clock())
    )
    watch.wake()
    log.info(
        "subscription notification stored",
        extra={"event": note.kind, "count": len(note.events)},
    )
    return JsonResponse(
        {"accepted": note.kind, "events": len(note.events), "catchUp": accepted.gap}
    )


@router.post("/watch/patients", status_code=202, openapi_extra=ENROLMENT)
async def enrol(request: Request, _client: ClientDep) -> JsonResponse:
    """Enrol a patient (by FHIR id on CRS_WATCH_FHIR_SERVER); answers its pseudonym."""
    watch = _watch(request)
    body = await read_body(request, watch.runtime.settings, ENROLMENT_MAX_BYTES)
    try:
        parsed = Enrolment.model_validate(orjson.loads(body) if body else None)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(not_json("body", body, exc)) from exc
    except ValidationError as exc:
        raise InvalidRequest(validation_message("enrolment", exc), "enrolment") from exc
    if not is_fhir_id(parsed.patientId):
        raise InvalidRequest(
            "patientId is not a FHIR id ([A-Za-z0-9-.], at most 64 characters, not . or ..: "
            "the watch reads Patient/<id>)",
            "enrolment.patientId",
        )
    pseudonym = await anyio.to_thread.run_sync(
        lambda: watch.census.enrol(parsed.patientId, "api", watch.clock())
    )
    watch.wake()
    return JsonResponse({"patient": pseudonym, "active": True}, status_code=202)


@router.get("/watch/patients/{pseudonym}", openapi_extra=WATCHED_PATIENT)
async def patient(pseudonym: str, request: Request, _client: ClientDep) -> JsonResponse:
    """A census patient's state, history and notifications (by pseudonym)."""
    watch = _watch(request)
    found = await anyio.to_thread.run_sync(lambda: patient_status(watch.census.engine, pseudonym))
    if found is None:
        raise UnknownPatient(
            f"no census patient {shown(pseudonym)} (patients are named by pseudonym)"
        )
    return JsonResponse(found)


def install(app: FastAPI) -> None:
    """Add the watch's routes; with the watch configured, patient-view enrolment and
    (CRS_WATCH_IN_SERVE) a worker in this process. WatchConfigError names a bad setting."""
    hooks: Hooks = app.state.hooks
    watch = Watch.open(app.state.runtime, app.state.store, hooks.clock, fhir_http=hooks.fhir.http)
    # Off, the routes answer 404 saying why, and the OpenAPI document leaves them out.
    app.include_router(router, include_in_schema=watch is not None)
    app.state.watch = watch
    if watch is None:
        return
    if hooks.memory is not None:
        app.state.hooks = replace(hooks, memory=EnrollingMemory(hooks.memory, watch))
    app.state.watch_metrics = WatchMetrics(watch.census.engine, watch.clock)
    # the watch list shows the watch's census (patients whose chart nobody opened too)
    app.state.census = WatchCensus(
        watch.census.engine,
        data_gap=timedelta(hours=watch.runtime.settings.web_data_gap_hours),
        display=product_names(watch.runtime),
    )
    if watch.config.in_serve:
        app.router.lifespan_context = _with_worker(app.router.lifespan_context, watch)


def _with_worker(
    inner: Callable[[Any], AbstractAsyncContextManager[Any]], watch: Watch
) -> Callable[[Any], AbstractAsyncContextManager[Any]]:
    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        async with inner(app) as state:
            stop = asyncio.Event()
            task = asyncio.create_task(Worker(watch).run(stop))
            try:
                yield state
            finally:
                stop.set()
                await task
                await close_webhook_client()

    return lifespan
