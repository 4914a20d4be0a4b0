"""GET /healthz: liveness, with the rule-set version and how many cited values are not
confirmed against their source."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from cds.api.deps import AuthenticationDep, RuntimeDep

router = APIRouter()


@router.get("/healthz", include_in_schema=False)
async def health(runtime: RuntimeDep, authentication: AuthenticationDep) -> dict[str, Any]:
    return {
        "status": "ok",
        "ruleSetVersion": runtime.rules.version,
        "unconfirmedValues": len(runtime.knowledge.unconfirmed),
        "authentication": authentication.state,
    }
