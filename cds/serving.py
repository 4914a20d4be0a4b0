"""How `crs-cds serve` runs uvicorn: how many connections, and how long a client may take
to send a request, are bounded (a slow or idle client holds nothing for long).

uvicorn bounds the idle time between requests (`timeout_keep_alive`) and the connections
and tasks it serves at once (`limit_concurrency`, beyond which it answers 503), but not the
time a client takes to send a request's head: `HeadTimeoutProtocol` closes a connection
whose request line and headers have not arrived within `header_timeout` seconds of its
opening (or of the previous response). The body's time is bounded where it is read
(`cds.api.body`, CRS_BODY_TIMEOUT_SECONDS)."""

from __future__ import annotations

import asyncio
import functools
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cds.settings import Settings


class HeadTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request's head."""

    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self._head_deadline: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        self._disarm()
        self._head_deadline = self.loop.call_later(self.header_timeout, self._head_late)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_late(self) -> None:
        self._head_deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        waiting = bool(self.pipeline)  # a pipelined request has its head already
        super().on_response_complete()
        if not waiting and not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments of `uvicorn.run` that bound connections and read times."""
    timeout = settings.header_timeout_seconds
    protocol = functools.partial(HeadTimeoutProtocol, header_timeout=timeout)
    return {
        # a partial of a module-level class: picklable, so every worker process gets it
        "http": cast(type[asyncio.Protocol], protocol),
        "limit_concurrency": settings.max_connections,
        "timeout_keep_alive": settings.keep_alive_seconds,
    }
