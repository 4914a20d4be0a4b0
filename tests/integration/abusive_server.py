"""A FHIR server on 127.0.0.1 that attacks its client: each path prefix is one "FHIR
server" with one abuse (`http://127.0.0.1:PORT/<mode>`). Every request is recorded with its
path and Authorization header, so that a test can say what was fetched with the token.

| mode | what it answers to a search (a Patient read is answered normally) |
|---|---|
| huge-length | a 1 GiB body announced by Content-Length, streamed |
| huge-stream | a 1 GiB body without Content-Length (ends when the connection closes) |
| gzip-bomb | 1 MiB of gzip that inflates to 1 GiB (Content-Encoding: gzip) |
| brotli | a body in a coding the client did not ask for |
| pages | a page with a `next` link to one more page, forever |
| dots | a page whose `next` link climbs out of the base URL (`<base>/../admin`) |
| encoded-dots | the same with `%2e%2e` |
| drip | a valid Bundle padded with spaces, one byte every 50 ms: a minute in all |
| sized | a valid Bundle of about 100 KB (for the per-request cap) |
"""

from __future__ import annotations

import json
import socket
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.integration.support import in_thread

GIB = 1 << 30
MIB = 1 << 20
DRIP_SECONDS = 0.05
DRIP_BYTES = 1200  # a minute at DRIP_SECONDS a byte: longer than any deadline a test sets
FHIR_JSON = "application/fhir+json"


@cache
def gzip_bomb() -> bytes:
    """1 GiB of zeros, gzip level 9: about 1 MiB (made once per test run, ~3 s)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(MIB)
    parts = [compressor.compress(zeros) for _ in range(GIB // MIB)]
    parts.append(compressor.flush())
    return b"".join(parts)


def bundle(entries: list[dict[str, Any]], next_url: str | None = None) -> bytes:
    links = [{"relation": "next", "url": next_url}] if next_url else []
    return json.dumps(
        {"resourceType": "Bundle", "type": "searchset", "entry": entries, "link": links}
    ).encode()


def _padding_entries(size: int) -> list[dict[str, Any]]:
    """Observations (of a code no rule reads) adding up to about `size` bytes of JSON."""
    one = {
        "resource": {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x" * 900},
        }
    }
    return [one] * (size // 1000)


class _Handler(BaseHTTPRequestHandler):
    server: AbusiveServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # no Nagle delay between the head and the body: a page costs ~1 ms, not 40
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _send(self, body: bytes, **headers: str) -> None:
        self._head(
            200,
            {"Content-Type": "application/fhir+json", "Content-Length": str(len(body)), **headers},
        )
        self.wfile.write(body)

    def _stream(self, total: int, chunk: bytes) -> None:
        sent = 0
        while sent < total:
            self.wfile.write(chunk)
            sent += len(chunk)

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        mode, _, rest = self.path.lstrip("/").partition("/")
        resource = rest.split("?", 1)[0]
        base = f"{self.server.root}/{mode}"
        try:
            if resource.startswith("Patient/"):
                self._send(json.dumps({"resourceType": "Patient", "id": "p"}).encode())
            elif mode == "huge-length":
                self._head(200, {"Content-Type": FHIR_JSON, "Content-Length": str(GIB)})
                self._stream(GIB, b" " * (64 * 1024))
            elif mode == "huge-stream":
                self.close_connection = True
                self._head(200, {"Content-Type": "application/fhir+json", "Connection": "close"})
                self._stream(GIB, b" " * (64 * 1024))
            elif mode == "gzip-bomb":
                self._send(gzip_bomb(), **{"Content-Encoding": "gzip"})
            elif mode == "brotli":
                self._send(b"\x1b\x00\x00", **{"Content-Encoding": "br"})
            elif mode == "pages":
                page = int(self.path.rsplit("page=", 1)[1]) if "page=" in self.path else 0
                self._send(bundle([], f"{base}/Observation?page={page + 1}"))
            elif mode == "dots":
                self._send(bundle([], f"{base}/../admin?page=2"))
            elif mode == "encoded-dots":
                self._send(bundle([], f"{base}/%2e%2e/admin?page=2"))
            elif mode == "drip":
                body = bundle([]).ljust(DRIP_BYTES)  # JSON with trailing whitespace
                self._head(
                    200,
                    {"Content-Type": "application/fhir+json", "Content-Length": str(len(body))},
                )
                for i in range(len(body)):
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
                    time.sleep(DRIP_SECONDS)
            elif mode == "sized":
                self._send(bundle(_padding_entries(100_000)))
            else:  # e.g. /admin: must never be reached
                self._head(404, {"Content-Length": "0"})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up: what it should do


class AbusiveServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, str | None]] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up mid-answer is what the abuse is for

    @property
    def root(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def base(self, mode: str) -> str:
        return f"{self.root}/{mode}"


@contextmanager
def abusive_server() -> Iterator[AbusiveServer]:
    with in_thread(AbusiveServer()) as server:
        yield server
