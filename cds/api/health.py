"""GET /healthz: liveness, with the rule-set version and how many cited values are not
confirmed against their source. GET /readyz: ready to take calls (the database answers)."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from cds.api.deps import AuthenticationDep, RuntimeDep, StoreDep
from cds.api.responses import JsonResponse

router = APIRouter()


@router.get("/healthz", include_in_schema=False)
async def health(runtime: RuntimeDep, authentication: AuthenticationDep) -> dict[str, Any]:
    return {
        "status": "ok",
        "ruleSetVersion": runtime.rules.version,
        "unconfirmedValues": len(runtime.knowledge.unconfirmed),
        "authentication": authentication.state,
    }


@router.get("/readyz", include_in_schema=False)
async def ready(store: StoreDep) -> JsonResponse:
    def ping() -> None:
        with store.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    try:
        await anyio.to_thread.run_sync(ping)
    except SQLAlchemyError as exc:
        return JsonResponse(
            {"status": "unavailable", "database": type(exc).__name__}, status_code=503
        )
    return JsonResponse({"status": "ready", "spooled": len(store.spool.pending())})
