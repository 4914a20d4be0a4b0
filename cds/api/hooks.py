"""POST /cds-services/{id}: one hook call through the pipeline."""

from __future__ import annotations

from fastapi import APIRouter, Request

from cds.api.deps import HooksDep
from cds.api.responses import RenderedJson

router = APIRouter()


@router.post("/cds-services/{service_id}", response_class=RenderedJson)
async def invoke(service_id: str, request: Request, hooks: HooksDep) -> RenderedJson:
    """Call a CDS service with a CDS Hooks request; answers its cards."""
    outcome = await hooks.run(service_id, await request.body())
    return RenderedJson(outcome.body)
