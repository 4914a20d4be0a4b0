"""POST /cds-services/{id}: one hook call through the pipeline."""

from __future__ import annotations

from fastapi import APIRouter, Request

from cds.api.body import read_body
from cds.api.deps import AuthenticationDep, ClientDep, HooksDep
from cds.api.openapi import HOOK
from cds.api.responses import RenderedJson

router = APIRouter()


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
    return RenderedJson(outcome.body)
