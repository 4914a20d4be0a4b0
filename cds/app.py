"""The FastAPI application: routers, the pipeline with its injected parts, CORS."""

from __future__ import annotations

import gc
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import httpx
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from cds.api import discovery, errors, health, hooks, questionnaires
from cds.fhir.client import close_http_clients, http_client
from cds.fhir.gather import FhirAccess
from cds.pipeline import Clock, Hooks
from cds.runtime import Runtime
from cds.services import registry
from cds.services.base import NewId

log = logging.getLogger("cds.app")


def utc_now() -> datetime:
    """The service's clock."""
    return datetime.now(UTC)


def new_uuid() -> str:
    """Card, suggestion and order ids."""
    return str(uuid.uuid4())


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    runtime: Runtime = app.state.runtime
    unconfirmed = runtime.knowledge.unconfirmed
    if unconfirmed:
        # once per process: what the rules rest on that was not checked against its source
        log.warning(
            f"{len(unconfirmed)} cited values are not confirmed against their source "
            "(`crs-cds rules --unconfirmed` lists them with why)",
            extra={"unconfirmed": [f"{u.file}:{u.path}" for u in unconfirmed]},
        )
    # Everything loaded so far (knowledge, models, the framework) lives as long as the
    # process: move it out of the collector's sight, so that the collections a large
    # request triggers only walk that request's objects (measured: 10k resources
    # 263 -> 200 ms in-process; see bench/).
    gc.collect()
    gc.freeze()
    yield
    await close_http_clients()  # the FHIR-server connection pool


def create_app(
    runtime: Runtime | None = None,
    *,
    clock: Clock = utc_now,
    http: Callable[[], httpx.AsyncClient] = http_client,
    new_id: NewId = new_uuid,
) -> FastAPI:
    """Build the application; loads and validates the knowledge unless given a runtime.
    The clock, the FHIR HTTP client and the id source are injected (tests replace them)."""
    runtime = runtime or Runtime.load()
    settings = runtime.settings
    app = FastAPI(
        title="CRS CDS Hooks service",
        version=runtime.rules.version,
        lifespan=_lifespan,
    )
    app.state.runtime = runtime
    app.state.hooks = Hooks(
        runtime=runtime,
        services=registry(runtime),
        clock=clock,
        fhir=FhirAccess(
            http=http,
            allowed_servers=settings.fhir_allowed_servers,
            timeout_seconds=settings.fhir_timeout_seconds,
            page_size=settings.fhir_page_size,
        ),
        new_id=new_id,
    )
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "Accept"],
        max_age=600,
    )
    errors.install(app)
    for router in (discovery.router, hooks.router, health.router, questionnaires.router):
        app.include_router(router)
    return app
