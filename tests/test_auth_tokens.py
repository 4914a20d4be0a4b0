"""Client JWTs on every hook call (CDS Hooks 2.0 "Trusting CDS Clients"): the bad-token
matrix (each one 401 with its reason and `WWW-Authenticate`), good ES384 and RS384 tokens,
replays (also to a second app instance sharing the replay guard), discovery, the verified
identity reaching the pipeline, and no token in the logs or the answers."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from cds.auth import JTI_MAX_LENGTH, ClientIdentity
from cds.auth.replay import MemoryReplayGuard
from cds.errors import PrefetchUnavailable
from cds.logs import JsonLogFormatter
from cds.runtime import Runtime
from cds.store.tables import audit_records
from tests.auth_support import (
    DISCOVERY_URL,
    EC_KEY,
    FORGED_EC_KEY,
    ISSUER,
    MONITOR_URL,
    PUBLIC_BASE_URL,
    REMOVE,
    RSA_KEY,
    Clock,
    auth_app,
    bearer,
    claims,
    default_trusted_clients,
    hmac_with_public_key,
    runtime_with_auth,
    sign,
    token,
    unsigned,
)
from tests.factories import grade2_monitor_request, hook_request

Headers = Callable[[datetime], dict[str, str]]

# name: (the Authorization header at `now`, the reason of the 401)
BAD_TOKENS: dict[str, tuple[Headers, str]] = {
    "no token": (lambda now: {}, "missing-token"),
    "not a JWT": (lambda now: bearer("this-is-not-a-jwt"), "malformed-token"),
    "three segments, not base64 JSON": (lambda now: bearer("a.b.c"), "malformed-token"),
    "Basic scheme": (lambda now: {"Authorization": "Basic dXNlcjpwYXNz"}, "malformed-token"),
    "alg none": (lambda now: bearer(unsigned(claims(now))), "algorithm-not-allowed"),
    "HS384 signed with the public key as secret": (
        lambda now: bearer(hmac_with_public_key(claims(now))),
        "algorithm-not-allowed",
    ),
    "RS256 (not configured)": (
        lambda now: bearer(sign(claims(now), RSA_KEY, alg="RS256")),
        "algorithm-not-allowed",
    ),
    "no kid": (lambda now: bearer(sign(claims(now), kid=REMOVE)), "missing-kid"),
    "unknown kid": (lambda now: bearer(sign(claims(now), kid="no-such-key")), "unknown-kid"),
    "unknown iss": (
        lambda now: bearer(token(now, iss="https://intruder.example.net")),
        "untrusted-issuer",
    ),
    "no iss": (lambda now: bearer(token(now, iss=REMOVE)), "untrusted-issuer"),
    "bad signature (another key, same kid)": (
        lambda now: bearer(token(now, FORGED_EC_KEY)),
        "bad-signature",
    ),
    "forged, with its own key embedded (jwk header)": (
        lambda now: bearer(sign(claims(now), FORGED_EC_KEY, jwk=FORGED_EC_KEY.public_jwk())),
        "bad-signature",
    ),
    "payload altered after signing": (lambda now: bearer(_altered(now)), "bad-signature"),
    "RS384 alg with the EC key's kid": (
        lambda now: bearer(sign(claims(now), RSA_KEY, kid=EC_KEY.kid)),
        "bad-signature",
    ),
    "wrong aud (another service)": (
        lambda now: bearer(token(now, aud=f"{PUBLIC_BASE_URL}/cds-services/crs-order-sign")),
        "wrong-audience",
    ),
    "aud array without the URL called": (
        lambda now: bearer(token(now, aud=["https://other.example.org/cds-services"])),
        "wrong-audience",
    ),
    "no aud": (lambda now: bearer(token(now, aud=REMOVE)), "wrong-audience"),
    "expired": (
        lambda now: bearer(token(now, iat=_t(now, -400), exp=_t(now, -100))),
        "expired",
    ),
    "no exp": (lambda now: bearer(token(now, exp=REMOVE)), "missing-exp"),
    "iat in the future": (
        lambda now: bearer(token(now, iat=_t(now, 120), exp=_t(now, 180))),
        "issued-in-future",
    ),
    "no iat": (lambda now: bearer(token(now, iat=REMOVE)), "missing-iat"),
    "nbf in the future": (lambda now: bearer(token(now, nbf=_t(now, 120))), "not-yet-valid"),
    "lifetime too long (1 h)": (
        lambda now: bearer(token(now, exp=_t(now, 3600))),
        "lifetime-too-long",
    ),
    "jku not allowed": (
        lambda now: bearer(sign(claims(now), jku="https://intruder.example.net/jwks.json")),
        "jku-not-allowed",
    ),
    "missing jti": (lambda now: bearer(token(now, jti=REMOVE)), "missing-jti"),
    "a sub with a NUL (the audit trail keeps it; PostgreSQL cannot)": (
        lambda now: bearer(token(now, sub="doctor\u0000x")),
        "malformed-token",
    ),
    "a jti with a NUL (PostgreSQL cannot keep it: not a database outage, a bad token)": (
        lambda now: bearer(token(now, jti="a\u0000b")),
        "malformed-token",
    ),
    "jti one character longer than the store keeps": (
        lambda now: bearer(token(now, jti="j" * (JTI_MAX_LENGTH + 1))),
        "jti-too-long",
    ),
}


def _t(now: datetime, seconds: int) -> int:
    return int(now.timestamp()) + seconds


def _altered(now: datetime) -> str:
    header, _, signature = token(now).split(".")
    other = token(now, aud=[MONITOR_URL, "https://x.example.org"]).split(".")[1]
    return f"{header}.{other}.{signature}"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth_runtime(runtime: Runtime, tmp_path: Path) -> Runtime:
    return runtime_with_auth(runtime, default_trusted_clients(tmp_path))


@pytest.fixture
def client(auth_runtime: Runtime, clock: Clock) -> TestClient:
    return TestClient(auth_app(auth_runtime, clock))


def assert_refused(response: Any, reason: str) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["reason"] == reason
    assert response.json()["error"]
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer error="invalid_token", error_description="{reason}"'
    )


@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_bad_token_is_refused_with_its_reason(case: str, client: TestClient, clock: Clock) -> None:
    headers, reason = BAD_TOKENS[case]
    sent = headers(clock())
    response = client.post("/cds-services/crs-monitor", json=grade2_monitor_request(), headers=sent)
    assert_refused(response, reason)
    for value in sent.values():
        assert value.split()[-1] not in response.text  # the token is never echoed


@pytest.mark.parametrize(
    ("sent", "named"),
    [
        ({"jti": "a\u0000b"}, "jti holds a NUL character"),
        ({"sub": "doctor\u0000x"}, "sub holds a NUL character"),
        ({"tenant": "t\u0000"}, "tenant holds a NUL character"),
        ({"nbf": "x"}, "nbf is not a NumericDate"),
        ({"nbf": 2**70}, "nbf is not a NumericDate"),
        ({"sub": "s" * 20_000}, "longer than 16384 characters"),
    ],
)
def test_a_malformed_token_says_which_part(
    sent: dict[str, Any], named: str, client: TestClient, clock: Clock
) -> None:
    headers = bearer(token(clock(), **sent))
    response = client.post(
        "/cds-services/crs-monitor", json=grade2_monitor_request(), headers=headers
    )
    assert_refused(response, "malformed-token")
    assert response.json()["error"].endswith(named)


def test_an_out_of_range_exp_is_not_called_missing(client: TestClient, clock: Clock) -> None:
    headers = bearer(token(clock(), exp=1e300))
    response = client.post(
        "/cds-services/crs-monitor", json=grade2_monitor_request(), headers=headers
    )
    assert_refused(response, "missing-exp")
    assert "NumericDate" in response.json()["error"]


@pytest.mark.parametrize("key", [EC_KEY, RSA_KEY], ids=["ES384", "RS384"])
def test_good_token_is_served(key: Any, client: TestClient, clock: Clock) -> None:
    response = client.post(
        "/cds-services/crs-monitor",
        json=grade2_monitor_request(),
        headers=bearer(token(clock(), key)),
    )
    assert response.status_code == 200, response.text
    assert response.json()["cards"][0]["extension"]["crs"]["grade"] == 2


def test_aud_may_be_an_array_holding_the_url_called(client: TestClient, clock: Clock) -> None:
    sent = bearer(token(clock(), aud=["https://other.example.org", MONITOR_URL]))
    response = client.post("/cds-services/crs-monitor", json=grade2_monitor_request(), headers=sent)
    assert response.status_code == 200, response.text


def test_skew_tolerates_a_client_clock_slightly_ahead(client: TestClient, clock: Clock) -> None:
    sent = bearer(token(clock(), iat=_t(clock(), 20), exp=_t(clock(), 80)))  # skew 30 s
    response = client.post("/cds-services/crs-monitor", json=grade2_monitor_request(), headers=sent)
    assert response.status_code == 200, response.text


def test_a_token_is_verified_before_the_service_is_looked_up(client: TestClient) -> None:
    response = client.post("/cds-services/no-such-service", json=grade2_monitor_request())
    assert_refused(response, "missing-token")


def test_replayed_jti_is_refused(client: TestClient, clock: Clock) -> None:
    sent = bearer(token(clock()))
    first = client.post("/cds-services/crs-monitor", json=grade2_monitor_request(), headers=sent)
    assert first.status_code == 200, first.text
    again = client.post("/cds-services/crs-monitor", json=grade2_monitor_request(), headers=sent)
    assert_refused(again, "replayed")


def test_same_jti_from_a_fresh_token_is_a_replay(client: TestClient, clock: Clock) -> None:
    first = bearer(token(clock(), jti="one-id"))
    assert client.post(
        "/cds-services/crs-monitor", json=grade2_monitor_request(), headers=first
    ).is_success
    clock.advance(5)
    second = bearer(token(clock(), jti="one-id"))  # newly signed, same id
    response = client.post(
        "/cds-services/crs-monitor", json=grade2_monitor_request(), headers=second
    )
    assert_refused(response, "replayed")


def test_replay_to_a_second_instance_sharing_the_guard_is_refused(
    auth_runtime: Runtime, clock: Clock
) -> None:
    shared = MemoryReplayGuard(clock)
    one = TestClient(auth_app(auth_runtime, clock, shared))
    two = TestClient(auth_app(auth_runtime, clock, shared))
    sent = bearer(token(clock()))
    assert one.post(
        "/cds-services/crs-monitor", json=grade2_monitor_request(), headers=sent
    ).is_success
    assert_refused(
        two.post("/cds-services/crs-monitor", json=grade2_monitor_request(), headers=sent),
        "replayed",
    )


def test_by_default_a_replay_to_another_instance_on_the_same_database_is_refused(
    auth_runtime: Runtime, clock: Clock
) -> None:
    """The default guard is the decision store's: every replica on one database shares it."""
    one = TestClient(auth_app(auth_runtime, clock))
    two = TestClient(auth_app(auth_runtime, clock))
    sent = bearer(token(clock()))
    assert one.post(
        "/cds-services/crs-monitor", json=grade2_monitor_request(), headers=sent
    ).is_success
    assert_refused(
        two.post("/cds-services/crs-monitor", json=grade2_monitor_request(), headers=sent),
        "replayed",
    )


def test_a_replayed_token_is_remembered_through_the_skew(
    auth_runtime: Runtime, clock: Clock
) -> None:
    guard = MemoryReplayGuard(clock)
    client = TestClient(auth_app(auth_runtime, clock, guard))
    sent = bearer(token(clock()))  # exp = now + 60
    assert client.post(
        "/cds-services/crs-monitor", json=grade2_monitor_request(), headers=sent
    ).is_success
    clock.advance(75)  # past exp, within the 30 s skew: still acceptable, so still remembered
    assert_refused(
        client.post("/cds-services/crs-monitor", json=grade2_monitor_request(), headers=sent),
        "replayed",
    )
    clock.advance(30)
    assert_refused(
        client.post("/cds-services/crs-monitor", json=grade2_monitor_request(), headers=sent),
        "expired",
    )
    fresh = bearer(token(clock()))
    assert client.post(
        "/cds-services/crs-monitor", json=grade2_monitor_request(), headers=fresh
    ).is_success
    assert len(guard) == 1  # the first id forgotten once it could no longer pass


# --- discovery, health ---------------------------------------------------------------------


def test_discovery_needs_a_token_for_its_own_url(client: TestClient, clock: Clock) -> None:
    assert_refused(client.get("/cds-services"), "missing-token")
    assert_refused(client.get("/cds-services", headers=bearer(token(clock()))), "wrong-audience")
    response = client.get("/cds-services", headers=bearer(token(clock(), aud=DISCOVERY_URL)))
    assert response.status_code == 200, response.text
    assert response.json()["extension"] == {"authentication": "on"}


def test_discovery_can_be_left_open(auth_runtime: Runtime, clock: Clock) -> None:
    settings = auth_runtime.settings.model_copy(update={"authenticate_discovery": False})
    app = auth_app(dataclasses.replace(auth_runtime, settings=settings), clock)
    response = TestClient(app).get("/cds-services")
    assert response.status_code == 200
    assert response.json()["extension"] == {"authentication": "on"}


def test_healthz_says_on_and_needs_no_token(client: TestClient) -> None:
    assert client.get("/healthz").json()["authentication"] == "on"


def test_off_by_default(runtime: Runtime) -> None:
    client = TestClient(auth_app(runtime, Clock()))
    assert client.get("/healthz").json()["authentication"] == "off"
    assert client.get("/cds-services").json()["extension"] == {"authentication": "off"}
    assert (
        client.post("/cds-services/crs-monitor", json=grade2_monitor_request()).status_code == 200
    )


def test_cors_preflight_needs_no_token(client: TestClient) -> None:
    response = client.options(
        "/cds-services/crs-monitor",
        headers={
            "Origin": "https://sandbox.cds-hooks.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert response.status_code == 200
    assert "authorization" in response.headers["access-control-allow-headers"].lower()


# --- the verified identity and the FHIR fallback -----------------------------------------


def _recorded_client(app: Any, hook_instance: str) -> tuple[str | None, ...]:
    with app.state.store.engine.connect() as connection:
        row = connection.execute(
            select(
                audit_records.c.client_iss, audit_records.c.client_sub, audit_records.c.tenant
            ).where(audit_records.c.hook_instance == hook_instance)
        ).one()
    return tuple(row)


def test_the_verified_identity_is_recorded(auth_runtime: Runtime, clock: Clock) -> None:
    app = auth_app(auth_runtime, clock)
    sent = bearer(token(clock(), sub="Practitioner/doc", tenant="hospital-a"))
    body = grade2_monitor_request()
    response = TestClient(app).post("/cds-services/crs-monitor", json=body, headers=sent)
    assert response.status_code == 200, response.text
    assert _recorded_client(app, body["hookInstance"]) == (
        ISSUER,
        "Practitioner/doc",
        "hospital-a",
    )


def test_open_mode_records_no_identity(runtime: Runtime) -> None:
    app = auth_app(runtime, Clock())
    body = grade2_monitor_request()
    assert TestClient(app).post("/cds-services/crs-monitor", json=body).is_success
    assert _recorded_client(app, body["hookInstance"]) == (None, None, None)


@pytest.mark.parametrize(
    ("enabled", "client", "fallback"),
    [
        (False, None, True),  # the explicit open mode
        (True, ClientIdentity(ISSUER), True),  # an authenticated client
        (True, None, False),  # authentication on and no client: never
    ],
)
def test_fhir_fallback_only_for_an_authenticated_client_or_open_mode(
    auth_runtime: Runtime, runtime: Runtime, enabled: bool, client: Any, fallback: bool
) -> None:
    app = auth_app(auth_runtime if enabled else runtime, Clock())
    assert app.state.authentication.fhir_fallback(client) is fallback


def test_pipeline_does_not_read_fhir_server_without_the_fallback(runtime: Runtime) -> None:
    settings = runtime.settings.model_copy(
        update={"fhir_allowed_servers": ["http://127.0.0.1:9/fhir"]}
    )
    app = auth_app(dataclasses.replace(runtime, settings=settings), Clock())
    body = hook_request("patient-view", fhir_server="http://127.0.0.1:9/fhir")
    with pytest.raises(PrefetchUnavailable, match="only for an authenticated client"):
        asyncio.run(app.state.hooks.run("crs-monitor", _json(body), None, fhir_fallback=False))


def _json(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body)


# --- no token in logs or answers ------------------------------------------------------------


def test_tokens_never_reach_the_logs_and_refusals_are_counted_by_reason(
    client: TestClient, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    sent: list[str] = []
    with caplog.at_level(logging.DEBUG):
        for case, (headers, _) in BAD_TOKENS.items():
            value = headers(clock()).get("Authorization")
            if value:
                sent.append(value.split()[-1])
            response = client.post(
                "/cds-services/crs-monitor", json=grade2_monitor_request(), headers=headers(clock())
            )
            assert response.status_code == 401, case
        good = token(clock())
        sent.append(good)
        assert client.post(
            "/cds-services/crs-monitor", json=grade2_monitor_request(), headers=bearer(good)
        ).is_success
    formatter = JsonLogFormatter()
    lines = [formatter.format(record) for record in caplog.records]
    everything = "\n".join([caplog.text, *lines, *(str(vars(r)) for r in caplog.records)])
    for value in sent:
        assert value not in everything
        for part in value.split("."):
            if len(part) > 16:
                assert part not in everything
    refusals = [r for r in caplog.records if r.getMessage() == "client token refused"]
    assert sorted(r.__dict__["reason"] for r in refusals) == sorted(
        reason for _, reason in BAD_TOKENS.values()
    )
    assert all('"reason": ' in formatter.format(r) for r in refusals)


def test_feedback_needs_a_valid_token_too(auth_runtime: Runtime, clock: Clock) -> None:
    client = TestClient(auth_app(auth_runtime, clock))
    body = grade2_monitor_request()
    card_call = client.post("/cds-services/crs-monitor", json=body, headers=bearer(token(clock())))
    (card,) = card_call.json()["cards"]
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": clock().isoformat()}
    anonymous = client.post("/cds-services/crs-monitor/feedback", json={"feedback": [item]})
    assert_refused(anonymous, "missing-token")
    signed = client.post(
        "/cds-services/crs-monitor/feedback",
        json={"feedback": [item]},
        headers=bearer(token(clock(), aud=f"{MONITOR_URL}/feedback")),
    )
    assert signed.status_code == 200, signed.text


def test_refused_tokens_are_counted_by_reason_in_the_metrics(
    auth_runtime: Runtime, clock: Clock
) -> None:
    client = TestClient(auth_app(auth_runtime, clock))

    def refused(text: str) -> float:
        line = next(
            (
                line
                for line in text.splitlines()
                if line.startswith('crs_cds_authentication_failures_total{reason="missing-token"}')
            ),
            None,
        )
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    before = refused(client.get("/metrics").text)
    client.post("/cds-services/crs-monitor", json=grade2_monitor_request())
    assert refused(client.get("/metrics").text) == before + 1
