"""The comparison servers, run by uvicorn like the service (`--factory bench.apps:…`).

- floor: the least any CDS service must do: read the body, parse the JSON, answer
  `{"cards": []}`. Same server, event loop and HTTP parser as the service.
- unrecorded: the service without its decision records (what recording costs; run
  `python -m bench --service-factory bench.apps:unrecorded_app`).
- naive: what a straightforward implementation does: validate the whole prefetch with
  the fhir.resources R4B models, then evaluate. It evaluates with the service's own
  (lean) evaluation, so it measures the cost of full validation on top of the service,
  a lower bound for a naive implementation that would also read the validated models.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from fhir.resources.R4B import get_fhir_model_class

from cds.fhir.reading import ResourceCollector
from cds.ids import new_uuid
from cds.pipeline import decide_offline
from cds.protocol import HookRequest, PatientContext, render
from cds.runtime import Runtime
from cds.services import registry


class ORJSONResponse(Response):
    """JSON rendered by orjson, as the service renders it (FastAPI's own is deprecated)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _health(app: FastAPI) -> None:
    @app.get("/healthz")
    async def health() -> dict[str, str]:
        return {"status": "ok"}


def floor_app() -> FastAPI:
    """A minimal endpoint: parse the JSON body, answer no cards."""
    app = FastAPI(default_response_class=ORJSONResponse)
    _health(app)

    @app.post("/cds-services/{service_id}")
    async def invoke(service_id: str, request: Request) -> ORJSONResponse:
        orjson.loads(await request.body())
        return ORJSONResponse({"cards": []})

    return app


def unrecorded_app() -> FastAPI:
    """The service as served, but keeping no record of its calls."""
    from dataclasses import replace

    from cds.app import create_app

    app = create_app()
    app.state.hooks = replace(app.state.hooks, memory=None)
    return app


def validate_prefetch(prefetch: dict[str, Any]) -> None:
    """Validate every prefetch value (resource or Bundle) with its fhir.resources model."""
    for value in prefetch.values():
        if value is not None:
            get_fhir_model_class(value["resourceType"]).model_validate(value)


def naive_app() -> FastAPI:
    """crs-monitor with full fhir.resources validation of the prefetch first."""
    runtime = Runtime.load()
    monitor = registry(runtime)["crs-monitor"]
    app = FastAPI(default_response_class=ORJSONResponse)
    _health(app)

    @app.post("/cds-services/crs-monitor")
    async def invoke(request: Request) -> Response:
        hook_request = HookRequest.model_validate(orjson.loads(await request.body()))
        prefetch = hook_request.prefetch or {}
        validate_prefetch(prefetch)
        collected = ResourceCollector()
        collected.add_prefetch(prefetch)
        context = PatientContext.model_validate(hook_request.context)
        at = datetime.now(UTC)
        decision = decide_offline(runtime, monitor, collected, context, at, new_uuid)
        return Response(render(decision.response()), media_type="application/json")

    return app
