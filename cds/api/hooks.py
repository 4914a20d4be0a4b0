"""POST /cds-services/{id}: one hook call through the pipeline."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.background import BackgroundTask

from cds.api.body import read_body
from cds.api.deps import AuthenticationDep, ClientDep, HooksDep
from cds.api.openapi import HOOK
from cds.api.responses import RenderedJson
from cds.pipeline import Outcome

router = APIRouter()


# How many of a call's objects (its resources and measurements) are freed at a time once
# it is answered. A 1,000-resource chart (~2,000 pieces, tens of thousands of objects) is
# freed in one go, ~0.3 ms of the event loop; a 10,000-resource chart in slices of that
# size, the loop running between them. (Slices of 100 cost a back-to-back caller ~3 ms
# a call, 1,000 resources: the free interleaved with the next call's body, measured
# with the benchmark's client 7.0-8.5 -> 4.1-4.8 ms p50.)
FREE_SLICE = 2_500


async def free(held: list[Outcome], slice_size: int = FREE_SLICE) -> None:
    """Free a call's objects after its answer: its resources and measurements
    `slice_size` at a time, letting the event loop run between slices, and the rest at
    once. `held` holds the only reference to the outcome (see `invoke`)."""
    outcome = held.pop()
    pieces: list[object] = [*outcome.collected.resources, *outcome.evaluation.facts.measurements]
    del outcome
    while pieces:
        del pieces[-slice_size:]
        if pieces:
            await asyncio.sleep(0)


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
    # has been sent, not before (measured: ~0.5 ms of a 1,000-resource call's latency);
    # a large chart a slice at a time (see FREE_SLICE).
    return RenderedJson(outcome.body, background=BackgroundTask(free, [outcome]))
