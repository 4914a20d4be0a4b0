"""Helpers for the integration tests: call the real app, and tiny misbehaving FHIR servers.

The stub servers are real sockets on 127.0.0.1 (http.server in a thread). Each path prefix
is one "FHIR server" with one behaviour, e.g. `http://127.0.0.1:PORT/error500`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import httpx

from cds.app import create_app
from cds.clock import utc_now
from cds.evaluation import risk_data_since
from cds.fhir.client import close_http_clients, http_client
from cds.fhir.gather import FhirAccess, gather
from cds.fhir.prefetch import PrefetchPlan
from cds.fhir.reading import ResourceCollector
from cds.ids import new_uuid
from cds.protocol import HookRequest
from cds.runtime import Runtime
from cds.store.decisions import DecisionStore

GOOD_TOKEN = "good-token-7f3a"
# The slow mode's answer time: far past the deadlines the tests give (0.5 s), so that a
# call answered well before it proves the deadline was kept, on a loaded machine too.
SLOW_SECONDS = 30.0


def runtime_with(runtime: Runtime, **settings: Any) -> Runtime:
    """The session runtime with some settings replaced (fallback settings do not touch rules)."""
    return dataclasses.replace(runtime, settings=runtime.settings.model_copy(update=settings))


async def gather_with(
    runtime: Runtime,
    plan: PrefetchPlan,
    request: HookRequest,
    http: Callable[[], httpx.AsyncClient] = http_client,
) -> ResourceCollector:
    """The gather step alone, as the pipeline runs it for `runtime` now."""
    settings = runtime.settings
    access = FhirAccess(
        http,
        settings.fhir_allowed_servers,
        settings.fhir_timeout_seconds,
        settings.fhir_page_size,
    )
    since = risk_data_since(runtime, datetime.now(UTC))
    return await gather(request, plan, access, runtime.knowledge, since)


_STORES: dict[str, DecisionStore] = {}


def store_for(runtime: Runtime) -> DecisionStore:
    """One decision store per database for the whole run (apps are made per call)."""
    url = runtime.settings.database
    if url not in _STORES:
        _STORES[url] = DecisionStore.open(runtime, new_uuid, utc_now)
    return _STORES[url]


def post_hook(
    runtime: Runtime,
    service_id: str,
    body: dict[str, Any],
    http: Callable[[], httpx.AsyncClient] = http_client,
) -> httpx.Response:
    """POST the body to the real FastAPI app (in process), on a fresh event loop; `http`
    is the app's HTTP client for FHIR servers."""

    async def go() -> httpx.Response:
        app = create_app(runtime, store=store_for(runtime), http=http)
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://cds.test") as c:
                return await c.post(f"/cds-services/{service_id}", json=body)
        finally:
            await close_http_clients()

    return asyncio.run(go())


def card_outcome(service_id: str, response: httpx.Response) -> dict[str, Any]:
    """The response as a scenario's `expect` dict."""
    assert response.status_code == 200, response.text
    cards = response.json()["cards"]
    if service_id == "crs-monitor":
        if not cards:
            return {"service": service_id, "card": False}
        (card,) = [c for c in cards if "crs" in c["extension"]]
        crs = card["extension"]["crs"]
        outcome: dict[str, Any] = {
            "service": service_id,
            "grade": crs["grade"],
            "maxGrade": crs["maxGrade"],
        }
        # issue #14: the ICANS card beside it, and the risk scores, only when present
        icans = [c["extension"]["icans"] for c in cards if "icans" in c["extension"]]
        assert len(icans) + 1 == len(cards)
        if icans:
            outcome["icansGrade"], outcome["icansMaxGrade"] = (
                icans[0]["grade"],
                icans[0]["maxGrade"],
            )
        if crs.get("riskScores"):
            outcome["riskScores"] = {r["score"]: r.get("category") for r in crs["riskScores"]}
        return outcome
    return {
        "service": service_id,
        "problems": [p for c in cards for p in c["extension"]["tocilizumabCheck"]["problems"]],
    }


# --- stub FHIR servers ------------------------------------------------------------------


def _bundle(entries: list[dict[str, Any]], links: list[dict[str, str]] | None = None) -> bytes:
    return json.dumps(
        {"resourceType": "Bundle", "type": "searchset", "entry": entries, "link": links or []}
    ).encode()


class _Handler(BaseHTTPRequestHandler):
    server: StubServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet

    def _send(self, status: int, body: bytes, content_type: str = "application/fhir+json") -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the deadline tests)

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        mode, _, rest = self.path.lstrip("/").partition("/")
        resource = rest.split("?", 1)[0]
        if mode == "error500":
            self._send(500, b'{"resourceType":"OperationOutcome","issue":[]}')
        elif mode == "slow":
            time.sleep(SLOW_SECONDS)
            self._send(200, _bundle([]))
        elif mode == "auth":
            if self.headers.get("Authorization") != f"Bearer {GOOD_TOKEN}":
                self._send(401, b'{"resourceType":"OperationOutcome","issue":[]}')
            elif resource.startswith("Patient/"):
                self._send(200, json.dumps({"resourceType": "Patient", "id": "p"}).encode())
            else:
                self._send(200, _bundle([]))
        elif mode == "html":
            self._send(200, b"<html>login</html>", "text/html")
        elif mode == "notbundle":
            self._send(200, json.dumps({"resourceType": "Patient", "id": "p"}).encode())
        elif mode == "outside":
            if resource.startswith("Patient/"):
                self._send(200, json.dumps({"resourceType": "Patient", "id": "p"}).encode())
                return
            next_link = {"relation": "next", "url": "http://127.0.0.2:9/fhir/Observation?page=2"}
            self._send(200, _bundle([], [next_link]))
        elif mode == "outcome":
            if resource.startswith("Patient/"):
                self._send(200, json.dumps({"resourceType": "Patient", "id": "p"}).encode())
                return
            outcome = {
                "resource": {
                    "resourceType": "OperationOutcome",
                    "issue": [{"severity": "warning", "code": "not-supported"}],
                },
                "search": {"mode": "outcome"},
            }
            self._send(200, _bundle([outcome]))
        else:
            self._send(404, b'{"resourceType":"OperationOutcome","issue":[]}')


class StubServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # do not wait for the slow handler at shutdown

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, str | None]] = []

    @property
    def root(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def base(self, mode: str) -> str:
        """The base URL of the stub FHIR server with this behaviour."""
        return f"{self.root}/{mode}"


Server = TypeVar("Server", bound=socketserver.BaseServer)


@contextmanager
def in_thread(server: Server) -> Iterator[Server]:
    """`server` serving in a daemon thread until the block ends, then shut down."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def stub_server() -> Iterator[StubServer]:
    """A running StubServer, stopped afterwards."""
    with in_thread(StubServer()) as server:
        yield server
