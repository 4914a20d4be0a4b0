"""Errors mapped to HTTP once: a client's mistake to its 4xx with what is wrong and
where; a defect of ours to 500, logged as the places it passed (file:line:function)
and never with its message or values, which may hold patient data."""

from __future__ import annotations

import logging
import traceback
from pathlib import PurePath

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException

from cds.api.responses import JsonResponse, error
from cds.errors import (
    SHOWN_MAX_CHARS,
    CdsError,
    RequestTimeout,
    RequestTooLarge,
    Unauthenticated,
    UnsupportedEncoding,
)
from cds.metrics import AUTH_FAILURES

log = logging.getLogger("cds.api")


def frames(exc: BaseException) -> list[str]:
    """Where an exception passed, as `file:line:function`, innermost last (no values)."""
    return [
        f"{'/'.join(PurePath(frame.filename).parts[-2:])}:{frame.lineno}:{frame.name}"
        for frame in traceback.extract_tb(exc.__traceback__)
    ]


def install(app: FastAPI) -> None:
    """Map CdsError to its status (a refused client token to 401 with WWW-Authenticate),
    and anything else to a 500 that logs frames only."""

    @app.exception_handler(CdsError)
    async def _cds_error(_: Request, exc: CdsError) -> JsonResponse:
        response = error(exc.status, exc.message, exc.location)
        if isinstance(exc, RequestTooLarge | RequestTimeout | UnsupportedEncoding):
            # the rest of the body is not wanted: the server closes instead of reading it
            response.headers["Connection"] = "close"
        return response

    @app.exception_handler(Unauthenticated)
    async def _unauthenticated(_: Request, exc: Unauthenticated) -> JsonResponse:
        # counted by reason in the logs; never the token
        log.warning("client token refused", extra={"reason": exc.reason})
        AUTH_FAILURES.labels(exc.reason).inc()
        response = JsonResponse({"error": exc.message, "reason": exc.reason}, status_code=401)
        response.headers["WWW-Authenticate"] = (
            f'Bearer error="invalid_token", error_description="{exc.reason}"'
        )
        return response

    @app.exception_handler(StarletteHTTPException)
    async def _routing(request: Request, exc: StarletteHTTPException) -> JsonResponse:
        # the router's own answers (no such path, a method the path does not take) in the
        # service's error shape, saying what was asked
        path = request.url.path
        cut = SHOWN_MAX_CHARS
        asked = f"{request.method} {path[:cut]}{'…' if len(path) > cut else ''}"
        if exc.status_code == 404:
            message = f"no such endpoint: {asked} (GET /cds-services lists the CDS services)"
            if len(path) > 1 and path.endswith("/"):
                message += "; paths take no trailing slash"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            message = f"method not allowed: {asked}" + (f" (allowed: {allowed})" if allowed else "")
        else:
            message = str(exc.detail)
        response = error(exc.status_code, message)
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JsonResponse:
        log.error("unexpected error", extra={"error": type(exc).__name__, "frames": frames(exc)})
        return error(500, "internal error while evaluating; the request was not processed")
