"""HEAD answered as the GET of the same path, without its body (RFC 9110 §9.3.2): load
balancers, uptime monitors and `curl -I` probe with HEAD, and FastAPI routes answer only
the methods they declare (a HEAD was a 405)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


class HeadAsGet:
    """ASGI middleware: a HEAD request goes to the app as a GET; its status and headers
    (Content-Length included) are sent, its body is not. A path that takes no GET answers
    its 405 with the methods it takes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return  # a part of the body: not sent
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)
