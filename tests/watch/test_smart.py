"""SMART Backend Services for the watch: against a real FHIR server that requires SMART
tokens (SEKMET with its token endpoint), a worker signs its assertion, gets a token from
the endpoint the server advertises, and reads the patient — and without credentials the
same look fails with 401; the token is kept until shortly before it expires, asked for
anew after a 401, and a refusal says why (httpx.MockTransport); bad settings are named."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
import orjson
import pytest
from sqlalchemy import select

from bench.watch_support import scenario_copy
from cds import fhirbuild as fb
from cds.auth.signing import ClientKey, new_client_key
from cds.errors import PrefetchUnavailable
from cds.fhir.client import FhirQueryFailed
from cds.runtime import Runtime
from cds.store.tables import watch_patients
from cds.watch.config import WatchConfigError, watch_config
from cds.watch.service import Watch
from cds.watch.smart import ASSERTION_TYPE, Credentials, SmartClient, TokenRefused
from cds.watch.worker import Worker
from tests.fhir_server import start_fhir_server
from tests.watch.support import new_patient, now, open_watch, watch_runtime

CLIENT = "crs-watch"
LOADER, LOADER_SECRET = "loader", "loader-secret-0123456789"
READS = (
    "system/Patient.rs system/Observation.rs system/MedicationAdministration.rs "
    "system/Condition.rs system/QuestionnaireResponse.rs"
)


@pytest.fixture(scope="module")
def key() -> ClientKey:
    return new_client_key("ES384")


@pytest.fixture(scope="module")
def smart_fhir(tmp_path_factory: pytest.TempPathFactory, key: ClientKey) -> Iterator[str]:
    """SEKMET requiring SMART tokens: the watch registered with its public key (read
    scopes), and a loader with a client secret that writes the test data."""
    auth = {
        "types": ["smart"],
        "smart_clients": [
            {
                "client_id": CLIENT,
                "jwks": {"keys": [key.public_jwk()]},
                "scopes": f"{READS} system/Medication.rs",
            },
            {"client_id": LOADER, "client_secret": LOADER_SECRET, "scopes": "system/*.*"},
        ],
    }
    with start_fhir_server(
        tmp_path_factory.mktemp("smart-fhir"), extra_config={"server_auth": auth}
    ) as base:
        yield base


def _load(fhir: str, resources: list[dict[str, Any]]) -> None:
    """Write resources as the loader (client_secret_basic token)."""
    root = fhir.removesuffix("/fhir")
    basic = base64.b64encode(f"{LOADER}:{LOADER_SECRET}".encode()).decode()
    token = httpx.post(
        f"{root}/auth/token",
        data={"grant_type": "client_credentials", "scope": "system/*.*"},
        headers={"Authorization": f"Basic {basic}"},
    ).json()["access_token"]
    answer = httpx.post(
        fhir,
        content=orjson.dumps(fb.transaction(resources)),
        headers={
            "Content-Type": "application/fhir+json",
            "Authorization": f"Bearer {token}",
        },
        timeout=30,
    )
    assert answer.status_code == 200, answer.text[:500]


def _look(watch: Watch, pseudonym: str) -> Any:
    """One worker cycle for the census; the patient's row after it."""

    async def run() -> None:
        stop = asyncio.Event()
        worker = asyncio.create_task(Worker(watch).run(stop))
        deadline = asyncio.get_running_loop().time() + 20
        while asyncio.get_running_loop().time() < deadline:
            row = await asyncio.to_thread(_row, watch, pseudonym)
            if row.evaluated_at is not None or row.failures:
                break
            await asyncio.sleep(0.1)
        stop.set()
        await worker

    asyncio.run(run())
    return _row(watch, pseudonym)


def _row(watch: Watch, pseudonym: str) -> Any:
    with watch.census.engine.connect() as connection:
        return connection.execute(
            select(watch_patients).where(watch_patients.c.patient == pseudonym)
        ).one()


def test_a_worker_reads_with_a_smart_token_and_fails_without(
    runtime: Runtime, smart_fhir: str, key: ClientKey, tmp_path: Path
) -> None:
    pid = new_patient("smart")
    _load(smart_fhir, scenario_copy("g2-brexucel-bp-panel", now(), pid))
    key_file = tmp_path / "watch-key.pem"
    key_file.write_bytes(key.private_pem())

    # no credentials: the server refuses, the cycle fails and says so
    plain = watch_runtime(runtime, tmp_path / "plain", smart_fhir)
    store, watch = open_watch(plain)
    refused = _look(watch, watch.census.enrol(pid, "cli", now()))
    assert refused.evaluated_at is None and refused.failures >= 1
    assert "401" in refused.last_error
    store.close()

    smart = watch_runtime(
        runtime,
        tmp_path / "smart",
        smart_fhir,
        watch_smart_client_id=CLIENT,
        watch_smart_key_file=key_file,
    )
    store, watch = open_watch(smart)
    assert watch.config.smart is not None and watch.config.smart.token_url is None  # discovered
    row = _look(watch, watch.census.enrol(pid, "cli", now()))
    assert row.failures == 0 and row.last_error is None
    assert (row.grade, row.product) == (2, "brexucabtagene-autoleucel")
    # the server answers 401 to a token (revoked, say): the worker drops it, and the next
    # look asks for a new one
    held = asyncio.run(watch.credentials.bearer())
    assert asyncio.run(watch.credentials.bearer()) == held
    try:
        raise PrefetchUnavailable("x", "fhirServer") from FhirQueryFailed("q", "HTTP 401", 401)
    except PrefetchUnavailable as exc:
        Worker(watch)._refused(exc)
    assert asyncio.run(watch.credentials.bearer()) not in (None, held)
    store.close()


# --- the token's life, with httpx.MockTransport ------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def _credentials(
    key: ClientKey,
    handler: Callable[[httpx.Request], httpx.Response],
    clock: Clock,
    token_url: str | None = None,
) -> Credentials:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    smart = SmartClient(CLIENT, key, tuple(READS.split()), token_url)
    return Credentials("https://ehr.example.org/fhir", None, smart, lambda: client, clock)


def test_the_token_is_kept_until_a_minute_before_it_expires(key: ClientKey) -> None:
    clock = Clock()
    asked: list[dict[str, list[str]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/.well-known/smart-configuration"):
            return httpx.Response(200, json={"token_endpoint": "https://auth.example.org/token"})
        assert str(request.url) == "https://auth.example.org/token"
        asked.append(parse_qs(request.content.decode()))
        return httpx.Response(
            200, json={"access_token": f"t{len(asked)}", "token_type": "Bearer", "expires_in": 600}
        )

    credentials = _credentials(key, handler, clock)

    async def run() -> list[str | None]:
        tokens = [await credentials.bearer()]
        clock.now += timedelta(seconds=539)
        tokens.append(await credentials.bearer())  # still the first
        clock.now += timedelta(seconds=1)
        tokens.append(await credentials.bearer())  # 60 s before expiry: a new one
        credentials.expire()  # the server answered 401
        tokens.append(await credentials.bearer())
        return tokens

    assert asyncio.run(run()) == ["t1", "t1", "t2", "t3"]
    form = asked[0]
    assert form["grant_type"] == ["client_credentials"]
    assert form["client_assertion_type"] == [ASSERTION_TYPE]
    assert form["scope"] == [READS]
    (assertion,) = form["client_assertion"]
    header = jwt.get_unverified_header(assertion)
    assert (header["alg"], header["kid"]) == ("ES384", key.kid)
    claims = jwt.decode(
        assertion,
        key.private.public_key(),
        algorithms=["ES384"],
        audience="https://auth.example.org/token",
        options={"verify_exp": False},
    )
    assert claims["iss"] == claims["sub"] == CLIENT
    assert claims["exp"] - claims["iat"] <= 300
    jtis = {
        jwt.decode(a["client_assertion"][0], options={"verify_signature": False})["jti"]
        for a in asked
    }
    assert len(jtis) == 3  # a new assertion each time


def test_a_refusal_says_why_without_the_token(key: ClientKey) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/.well-known/smart-configuration"):
            return httpx.Response(404)
        return httpx.Response(401, json={"error": "invalid_client"})

    credentials = _credentials(key, handler, Clock())
    with pytest.raises(
        TokenRefused, match="names no token_endpoint: set CRS_WATCH_SMART_TOKEN_URL"
    ):
        asyncio.run(credentials.bearer())
    credentials = _credentials(key, handler, Clock(), "https://auth.example.org/token")
    with pytest.raises(TokenRefused, match="HTTP 401 invalid_client") as refused:
        asyncio.run(credentials.bearer())
    assert "eyJ" not in str(refused.value)  # no assertion or token in the reason


def test_the_settings_are_checked(runtime: Runtime, key: ClientKey, tmp_path: Path) -> None:
    fhir = "https://ehr.example.org/fhir"
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(key.private_pem())
    cases: list[tuple[dict[str, Any], str]] = [
        ({"watch_smart_client_id": CLIENT}, "needs CRS_WATCH_SMART_KEY_FILE"),
        ({"watch_smart_key_file": key_file}, "without CRS_WATCH_SMART_CLIENT_ID"),
        (
            {
                "watch_smart_client_id": CLIENT,
                "watch_smart_key_file": key_file,
                "watch_fhir_token": "static",
            },
            "both set: choose one",
        ),
        (
            {"watch_smart_client_id": CLIENT, "watch_smart_key_file": tmp_path / "missing.pem"},
            "No such file",
        ),
        (
            {
                "watch_smart_client_id": CLIENT,
                "watch_smart_key_file": key_file,
                "watch_smart_token_url": "http://auth.example.org/token",
            },
            "must be https",
        ),
    ]
    for settings, message in cases:
        with pytest.raises(WatchConfigError, match=message):
            watch_config(watch_runtime(runtime, tmp_path, fhir, **settings))
    config = watch_config(
        watch_runtime(
            runtime,
            tmp_path,
            fhir,
            watch_smart_client_id=CLIENT,
            watch_smart_key_file=key_file,
            watch_writeback="flag",
        )
    )
    assert config is not None and config.smart is not None
    assert config.smart.key.kid == key.kid  # the key's thumbprint, as `crs-cds keys new` names it
    assert "system/Flag.cu" in config.smart.scopes
