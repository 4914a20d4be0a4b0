"""GET /metrics: Prometheus metrics (see cds/metrics.py; no patient data in labels)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from cds.metrics import exposition

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics() -> Response:
    body, content_type = exposition()
    return Response(body, media_type=content_type)
