"""Keys fetched from a JWK Set URL (a real HTTP server on 127.0.0.1): cached, fetched
again on an unknown `kid` (key rotation), never more often than the rate limit allows,
kept when the server fails; a token's `jku` fetched only when allowed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cds.auth.signing import new_client_key
from cds.runtime import Runtime
from tests.auth_support import (
    ISSUER,
    Clock,
    KeySetServer,
    auth_app,
    bearer,
    claims,
    jwks,
    key_set_server,
    runtime_with_auth,
    sign,
    token,
    trusted_clients_file,
)
from tests.factories import grade2_monitor_request

OLD = new_client_key("ES384", "2026-old")
NEW = new_client_key("ES384", "2026-new")
ROTATED_JKU = "/rotated/jwks.json"


@pytest.fixture
def server() -> Iterator[KeySetServer]:
    with key_set_server() as server:
        server.sets["/jwks.json"] = jwks(OLD)
        yield server


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def client(
    runtime: Runtime, tmp_path: Path, server: KeySetServer, clock: Clock
) -> Iterator[TestClient]:
    entry = {
        "iss": ISSUER,
        "jwks_url": server.url("/jwks.json"),
        "jku": [server.url(ROTATED_JKU)],
    }
    auth = runtime_with_auth(runtime, trusted_clients_file(tmp_path, [entry]))
    with TestClient(auth_app(auth, clock)) as client:  # one event loop for the whole test
        yield client


def call(client: TestClient, value: str) -> tuple[int, str | None]:
    response = client.post(
        "/cds-services/crs-monitor", json=grade2_monitor_request(), headers=bearer(value)
    )
    return response.status_code, response.json().get("reason")


def test_keys_are_fetched_once_and_cached(
    client: TestClient, server: KeySetServer, clock: Clock
) -> None:
    assert call(client, token(clock(), OLD)) == (200, None)
    assert call(client, token(clock(), OLD)) == (200, None)
    assert server.hits == {"/jwks.json": 1}


def test_rotation_unknown_kid_fetches_again_within_the_rate_limit(
    client: TestClient, server: KeySetServer, clock: Clock
) -> None:
    assert call(client, token(clock(), OLD)) == (200, None)
    server.sets["/jwks.json"] = jwks(OLD, NEW)  # the EHR publishes its next key
    clock.advance(10)
    # fetched 10 s ago: the rate limit (60 s) holds, whatever the token says
    assert call(client, token(clock(), NEW)) == (401, "unknown-kid")
    assert server.hits["/jwks.json"] == 1
    clock.advance(51)
    assert call(client, token(clock(), NEW)) == (200, None)  # refetched: the new key
    assert server.hits["/jwks.json"] == 2
    assert call(client, token(clock(), OLD)) == (200, None)  # the old one still listed
    server.sets["/jwks.json"] = jwks(NEW)  # the old key retired
    clock.advance(61)
    assert call(client, token(clock(), NEW)) == (200, None)  # cached: no fetch needed
    assert server.hits["/jwks.json"] == 2


def test_unknown_kids_cannot_hammer_the_key_server(
    client: TestClient, server: KeySetServer, clock: Clock
) -> None:
    assert call(client, token(clock(), OLD)) == (200, None)
    clock.advance(61)
    stranger = new_client_key("ES384", "stranger")
    for _ in range(10):
        assert call(client, token(clock(), stranger)) == (401, "unknown-kid")
        clock.advance(1)
    assert server.hits["/jwks.json"] == 2  # one fetch for the first unknown kid, then none


def test_the_cache_expires(client: TestClient, server: KeySetServer, clock: Clock) -> None:
    assert call(client, token(clock(), OLD)) == (200, None)
    clock.advance(3601)
    assert call(client, token(clock(), OLD)) == (200, None)
    assert server.hits["/jwks.json"] == 2


def test_keys_are_kept_when_the_key_server_fails(
    client: TestClient, server: KeySetServer, clock: Clock
) -> None:
    assert call(client, token(clock(), OLD)) == (200, None)
    server.status = 500
    clock.advance(3601)
    assert call(client, token(clock(), OLD)) == (200, None)
    assert server.hits["/jwks.json"] == 2


def test_never_fetched_is_keys_unavailable(
    client: TestClient, server: KeySetServer, clock: Clock
) -> None:
    server.status = 503
    assert call(client, token(clock(), OLD)) == (401, "keys-unavailable")
    assert call(client, token(clock(), OLD)) == (401, "keys-unavailable")
    assert server.hits["/jwks.json"] == 1  # the failed attempt counts for the rate limit


def test_an_allowed_jku_is_fetched(client: TestClient, server: KeySetServer, clock: Clock) -> None:
    server.sets[ROTATED_JKU] = jwks(NEW)
    signed = sign(claims(clock()), NEW, jku=server.url(ROTATED_JKU))
    assert call(client, signed) == (200, None)
    assert server.hits == {ROTATED_JKU: 1}


def test_a_jku_not_allowed_is_never_fetched(
    client: TestClient, server: KeySetServer, clock: Clock
) -> None:
    server.sets["/evil.json"] = jwks(NEW)
    signed = sign(claims(clock()), NEW, jku=server.url("/evil.json"))
    assert call(client, signed) == (401, "jku-not-allowed")
    assert server.hits == {}


def test_a_fetched_set_with_private_or_symmetric_keys_skips_them(
    client: TestClient, server: KeySetServer, clock: Clock
) -> None:
    leaked = {**OLD.public_jwk(), "d": "AAAA"}
    server.sets["/jwks.json"] = {"keys": [leaked, {"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}
    assert call(client, token(clock(), OLD)) == (401, "unknown-kid")
