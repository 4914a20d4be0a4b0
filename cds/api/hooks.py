"""POST /cds-services/{id}: one hook call through the pipeline."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.background import BackgroundTask

from cds.api.body import read_body
from cds.api.deps import AuthenticationDep, ClientDep, HooksDep
from cds.api.openapi import HOOK
from cds.api.responses import RenderedJson
from cds.pipeline import Outcome

router = APIRouter()


async def _free(outcome: Outcome) -> None:
    """Nothing to do: the task holds the outcome (see `invoke`); async, so that it runs on
    the event loop, not in a thread."""


@router.post("/cds-services/{service_id}", response_class=RenderedJson, openapi_extra=HOOK)
async def invoke(
    service_id: str,
    request: Request,
    hooks: HooksDep,
    client: ClientDep,
    authentication: AuthenticationDep,
) -> RenderedJson:
    """Call a CDS service with a CDS Hooks request; answers its cards."""
    outcome = await hooks.run(
        service_id,
        await read_body(request, hooks.runtime.settings),
        client,
        fhir_fallback=authentication.fhir_fallback(client),
    )
    # A call's objects (a 1,000-resource chart is tens of thousands) are freed when the
    # last reference to them goes: held by the response's task, that is after the answer
    # has been sent, not before (measured: ~0.5 ms of a 1,000-resource call's latency).
    return RenderedJson(outcome.body, background=BackgroundTask(_free, outcome))
