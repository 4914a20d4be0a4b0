"""The FastAPI application: routers, the pipeline with its injected parts, CORS."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from cds import tracing
from cds.api import (
    discovery,
    errors,
    feedback,
    health,
    hooks,
    observability,
    openapi,
    questionnaires,
    watch,
)
from cds.api.head import HeadAsGet
from cds.auth import ReplayGuard
from cds.auth.authentication import authentication_from_settings
from cds.clock import Clock, utc_now
from cds.fhir.client import close_http_clients, http_client
from cds.fhir.gather import FhirAccess
from cds.ids import NewId, new_uuid
from cds.logs import configure_logging
from cds.metrics import MetricsMiddleware
from cds.pipeline import Hooks
from cds.runtime import Runtime
from cds.services import registry
from cds.store.decisions import DecisionStore
from cds.web import routes as pages

log = logging.getLogger("cds.app")

SWITCH_INTERVAL_SECONDS = 0.001


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
    store: DecisionStore = app.state.store
    drain = asyncio.create_task(_drain_spool(store, runtime.settings.spool_drain_seconds))
    # Everything loaded so far (knowledge, models, the framework) lives as long as the
    # process: move it out of the collector's sight, so that the collections a large
    # request triggers only walk that request's objects (measured: 10k resources
    # 263 -> 200 ms in-process; see bench/).
    gc.collect()
    gc.freeze()
    # A large chart is worked on in one of the pipeline's threads while the event loop
    # keeps answering (/healthz, the I/O of other calls): the loop waits for the GIL up to
    # the switch interval (5 ms by default) behind that work; 1 ms keeps it responsive.
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    yield
    drain.cancel()
    await close_http_clients()  # the FHIR-server connection pool


async def _drain_spool(store: DecisionStore, every_seconds: float) -> None:
    """Move records spooled while the database was away into it, once it is back."""
    while True:
        await asyncio.sleep(every_seconds)
        try:  # token ids past their expiry need no remembering
            await asyncio.to_thread(store.forget_expired_tokens, store.clock())
        except Exception as exc:
            log.warning("expired token ids not removed", extra={"error": type(exc).__name__})
        if not store.spool.pending():
            continue
        try:
            moved = await store.drain_spool()
        except Exception as exc:  # the database is still away: next time
            log.warning("spool not drained yet", extra={"error": type(exc).__name__})
        else:
            log.info("spooled records moved into the database", extra={"cards": moved})


def create_app(
    runtime: Runtime | None = None,
    *,
    clock: Clock = utc_now,
    http: Callable[[], httpx.AsyncClient] = http_client,
    new_id: NewId = new_uuid,
    store: DecisionStore | None = None,
    replay_guard: ReplayGuard | None = None,
) -> FastAPI:
    """Build the application; loads and validates the knowledge unless given a runtime,
    and opens the decision store of the settings unless given one. The clock, the HTTP
    client (FHIR servers, client key sets), the id source, the store and the memory of
    used token ids (default: the store's, shared by every replica) are injected (tests
    replace them). A bad trusted-clients file raises TrustedClientsError."""
    runtime = runtime or Runtime.load()
    settings = runtime.settings
    store = store or DecisionStore.open(runtime, new_id, clock)
    app = FastAPI(
        title="CRS CDS Hooks service",
        version=runtime.rules.version,
        lifespan=_lifespan,
        # a trailing slash is a 404 that says so, not a 307 to a URL built from the Host
        # header (a POST redirected loses its signed `aud`, and many clients do not follow)
        redirect_slashes=False,
    )
    app.state.runtime = runtime
    app.state.store = store
    app.state.authentication = authentication_from_settings(
        settings,
        clock=clock,
        http=http,
        replay_guard=replay_guard if replay_guard is not None else store,
    )
    app.state.hooks = Hooks(
        runtime=runtime,
        services=registry(runtime),
        clock=clock,
        fhir=FhirAccess(
            http=http,
            allowed_servers=settings.fhir_allowed_servers,
            timeout_seconds=settings.fhir_timeout_seconds,
            page_size=settings.fhir_page_size,
            max_query_bytes=settings.fhir_max_query_bytes,
            max_request_bytes=settings.fhir_max_request_bytes,
        ),
        new_id=new_id,
        memory=store,
        # the CPU-bound steps of a call run here, off the event loop; idle threads cost
        # nothing and are never shut down (an app may be started again, in tests)
        workers=ThreadPoolExecutor(
            max_workers=settings.evaluation_threads, thread_name_prefix="crs-evaluate"
        ),
    )
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "Accept"],
        max_age=600,
    )
    app.add_middleware(MetricsMiddleware, services=frozenset(app.state.hooks.services))
    app.add_middleware(HeadAsGet)  # outermost: every route that answers GET answers HEAD
    errors.install(app)
    tracing.configure(app, store.engine)  # only when the OTEL_* variables ask for it
    for router in (
        discovery.router,
        hooks.router,
        feedback.router,
        health.router,
        questionnaires.router,
        observability.router,
        pages.router,
    ):
        app.include_router(router)
    watch.install(app)  # the watch's routes, patient-view enrolment, the in-serve worker
    openapi.install(app)
    return app


def worker_app() -> FastAPI:
    """The application of one `crs-cds serve --workers N` worker process: its own JSON
    logs (a worker does not inherit the parent's logging), rules and store."""
    runtime = Runtime.load()
    configure_logging(runtime.settings.log_level)
    return create_app(runtime)
