"""Responses written with orjson (fast, handles datetimes), and JSON already rendered."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import Response


class JsonResponse(Response):
    """JSON serialised with orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class RenderedJson(Response):
    """A JSON body rendered before the response (by `protocol.render`)."""

    media_type = "application/json"


def error(status: int, message: str, location: str | None = None) -> JsonResponse:
    """`{"error": message, "location": …}`: what is wrong, and where."""
    body: dict[str, Any] = {"error": message}
    if location:
        body["location"] = location
    return JsonResponse(body, status_code=status)
