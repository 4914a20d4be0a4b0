"""GET /metrics: Prometheus metrics (see cds/metrics.py; no patient data in labels)."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Request, Response

from cds.metrics import exposition
from cds.watch.metrics import WatchMetrics

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    watch: WatchMetrics | None = getattr(request.app.state, "watch_metrics", None)
    extra = () if watch is None else (await anyio.to_thread.run_sync(watch.exposition),)
    body, content_type = exposition(*extra)
    return Response(body, media_type=content_type)
