"""Builders for the client-authentication tests: client keys, trusted-clients files,
tokens (good and bad), an app with authentication on, and a JWK Set server on 127.0.0.1."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI

from cds.app import create_app
from cds.auth import ReplayGuard
from cds.auth.signing import ClientKey, new_client_key
from cds.runtime import Runtime
from tests.serving import free_port as free_port  # re-exported for the auth tests
from tests.serving import serve_process

ISSUER = "https://ehr.example.org"
PUBLIC_BASE_URL = "https://cds.example.org"
MONITOR_URL = f"{PUBLIC_BASE_URL}/cds-services/crs-monitor"
DISCOVERY_URL = f"{PUBLIC_BASE_URL}/cds-services"
ALLOWED_JKU = "https://ehr.example.org/.well-known/jwks.json"

EC_KEY = new_client_key("ES384", "ec-1")
RSA_KEY = new_client_key("RS384", "rsa-1")
FORGED_EC_KEY = new_client_key("ES384", "ec-1")  # same kid, another key: a forgery

REMOVE = object()  # a claim or header value meaning "leave this out"


class Clock:
    """A clock the test moves (the app's clock and the tokens' `now`)."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def jwks(*keys: ClientKey) -> dict[str, Any]:
    return {"keys": [k.public_jwk() for k in keys]}


def trusted_clients_file(directory: Path, entries: list[dict[str, Any]]) -> Path:
    path = directory / "trusted-clients.json"
    path.write_text(json.dumps(entries))
    return path


def default_trusted_clients(directory: Path) -> Path:
    """One EHR with an inline JWK Set (an ES384 and an RS384 key) and one allowed jku."""
    entry = {"iss": ISSUER, "jwks": jwks(EC_KEY, RSA_KEY), "jku": [ALLOWED_JKU]}
    return trusted_clients_file(directory, [entry])


def runtime_with_auth(runtime: Runtime, clients_file: Path, **settings: Any) -> Runtime:
    """The session runtime with authentication on (and any other settings replaced)."""
    update = {"trusted_clients_file": clients_file, "public_base_url": PUBLIC_BASE_URL}
    update.update(settings)
    return dataclasses.replace(runtime, settings=runtime.settings.model_copy(update=update))


def auth_app(runtime: Runtime, clock: Clock, replay_guard: ReplayGuard | None = None) -> FastAPI:
    return create_app(runtime, clock=clock, replay_guard=replay_guard)


def claims(now: datetime, **changes: Any) -> dict[str, Any]:
    """Valid claims for a crs-monitor call at `now` (lifetime 60 s); REMOVE drops one."""
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": MONITOR_URL,
        "iat": int(now.timestamp()),
        "exp": int(now.timestamp()) + 60,
        "jti": str(uuid.uuid4()),
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not REMOVE}


def sign(
    payload: dict[str, Any], key: ClientKey = EC_KEY, alg: str | None = None, **header: Any
) -> str:
    """`payload` signed with `key` (its kid unless `kid=` says otherwise)."""
    headers = {"kid": key.kid, **header}
    headers = {k: v for k, v in headers.items() if v is not REMOVE}
    return jwt.encode(payload, key.private, algorithm=alg or key.alg, headers=headers)


def token(now: datetime, key: ClientKey = EC_KEY, **changes: Any) -> str:
    return sign(claims(now, **changes), key)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(payload: dict[str, Any], kid: str = EC_KEY.kid) -> str:
    """`alg: none`: no signature at all."""
    header = {"alg": "none", "typ": "JWT", "kid": kid}
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}."


def hmac_with_public_key(payload: dict[str, Any], key: ClientKey = EC_KEY) -> str:
    """HS384 with the issuer's *public* key (PEM) as the secret: the classic key confusion."""
    secret = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS384", "typ": "JWT", "kid": key.kid}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha384).digest()
    return f"{signing_input}.{_b64(mac)}"


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


# --- a JWK Set server on 127.0.0.1 -------------------------------------------------------


class KeySetServer(ThreadingHTTPServer):
    """Serves `sets[path]` as JSON (404 for another path, `status` if set) and counts the
    GETs per path."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _KeySetHandler)
        self.sets: dict[str, dict[str, Any]] = {}
        self.hits: dict[str, int] = {}
        self.status = 200

    def url(self, path: str) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}{path}"


class _KeySetHandler(BaseHTTPRequestHandler):
    server: KeySetServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.hits[self.path] = self.server.hits.get(self.path, 0) + 1
        body = json.dumps(self.server.sets.get(self.path, {})).encode()
        status = self.server.status if self.path in self.server.sets else 404
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def key_set_server() -> Iterator[KeySetServer]:
    server = KeySetServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


# --- `crs-cds serve` as a real process ----------------------------------------------------


@contextmanager
def running_service(
    directory: Path, env: dict[str, str], port: int | None = None, *args: str
) -> Iterator[tuple[str, Path]]:
    """`crs-cds serve` on 127.0.0.1 with `env` (and no other CRS_ setting): its URL and
    its log file; stopped by its PID."""
    with serve_process(directory, env, port, *args) as served:
        yield served.url, served.log
