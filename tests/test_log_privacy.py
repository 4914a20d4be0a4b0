"""The whole service at DEBUG leaks nothing into its logs (issue #11, section 4): a patient
with distinctive id, name, birth date and values goes through prefetch, the FHIR-server
fallback (a real FHIR server), errors (400, 404, 412, a 500), feedback and refused client
tokens; neither the root logger (JSON formatter, every library's logger forced to DEBUG)
nor a `crs-cds serve` subprocess at DEBUG writes any of them."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from cds import fhirbuild as b
from cds.app import create_app
from cds.logs import QUIET_LOGGERS, JsonLogFormatter, ThirdPartyFilter
from cds.runtime import Runtime
from cds.store.decisions import DecisionStore
from tests import auth_support as auth
from tests.serving import serve_process

PATIENT_ID = "Zqx7Pt3004"
FAMILY, GIVEN = "Quibbleworth", "Xylophant"
BIRTH_DATE = "1937-02-11"
USER = "Practitioner/Dr-Vexwold"
ENCOUNTER = "enc-Plumtree99"
ORDER_ID = "ord-Wimbleton7"
FHIR_TOKEN = "fhir-token-Ka8Qz2Wq"
COMMENT = "comment-Marrowby-says"
# values a log's timings cannot write (three decimals; timings have two)
TEMPERATURE, SYSTOLIC, DIASTOLIC, WEIGHT = 38.913, 81.137, 47.219, 73.317
SECRETS = (
    PATIENT_ID,
    FAMILY,
    GIVEN,
    BIRTH_DATE,
    "Dr-Vexwold",
    ENCOUNTER,
    ORDER_ID,
    FHIR_TOKEN,
    COMMENT,
    *(str(v) for v in (TEMPERATURE, SYSTOLIC, DIASTOLIC, WEIGHT)),
)
MONITOR = "/cds-services/crs-monitor"
SIGN = "/cds-services/crs-order-sign"


def _ago(hours: float) -> datetime:
    return datetime.now(UTC).replace(microsecond=0) - timedelta(hours=hours)


def chart() -> dict[str, list[dict[str, Any]]]:
    """The patient's resources: a grade 2 CRS three days after a CAR-T infusion."""
    patient = b.patient(PATIENT_ID, birth_date=BIRTH_DATE)
    patient["name"] = [{"family": FAMILY, "given": [GIVEN]}]
    return {
        "patient": [patient],
        "observations": [
            b.temperature(PATIENT_ID, _ago(2), TEMPERATURE),
            b.blood_pressure(PATIENT_ID, _ago(1), SYSTOLIC, DIASTOLIC),
            b.weight(PATIENT_ID, _ago(30), WEIGHT),
        ],
        "medicationAdministrations": [
            b.administration(PATIENT_ID, _ago(72), text="YESCARTA suspension for IV infusion")
        ],
    }


def body(hook: str = "patient-view", prefetch: bool = True, **extra: Any) -> dict[str, Any]:
    resources = chart()
    context: dict[str, Any] = {"userId": USER, "patientId": PATIENT_ID, "encounterId": ENCOUNTER}
    if hook == "order-sign":
        order = {
            "resourceType": "MedicationRequest",
            "id": ORDER_ID,
            "status": "draft",
            "intent": "order",
            "medicationCodeableConcept": {"text": "tocilizumab"},
            "subject": {"reference": f"Patient/{PATIENT_ID}"},
            "dosageInstruction": [
                {"doseAndRate": [{"doseQuantity": {"value": 2000, "unit": "mg", "code": "mg"}}]}
            ],
        }
        context["draftOrders"] = b.collection([order])
    request: dict[str, Any] = {
        "hook": hook,
        "hookInstance": f"hook-{datetime.now(UTC).timestamp()}",
        "context": context,
        "fhirAuthorization": {"access_token": FHIR_TOKEN, "token_type": "Bearer"},
        **extra,
    }
    if prefetch:
        request["prefetch"] = {
            "patient": resources["patient"][0],
            "observations": b.searchset(resources["observations"]),
            "oxygenDevices": None,
            "medicationAdministrations": b.searchset(resources["medicationAdministrations"]),
        }
    return request


@pytest.fixture(scope="module")
def fhir_with_patient(fhir_base_url: str) -> str:
    """The patient PUT into the real FHIR server."""
    resources = [r for group in chart().values() for r in group]
    response = httpx.post(
        fhir_base_url,
        content=orjson.dumps(b.transaction(resources)),
        headers={"Content-Type": "application/fhir+json"},
        timeout=30,
    )
    assert response.status_code == 200, response.text[:500]
    return fhir_base_url


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Everything logged, as `configure_logging` writes it, at DEBUG — with every library
    logger forced to DEBUG too (as an operator debugging might do); restored after."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLogFormatter())
    handler.addFilter(ThirdPartyFilter())
    root = logging.getLogger()
    saved = root.level, {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for name in (*QUIET_LOGGERS, "sqlalchemy.engine", "httpcore.http11", "uvicorn.error"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        for name, level in saved[1].items():
            logging.getLogger(name).setLevel(level)
        for name in ("sqlalchemy.engine", "httpcore.http11", "uvicorn.error"):
            logging.getLogger(name).setLevel(logging.NOTSET)


def assert_private(text: str, *more: str) -> list[dict[str, Any]]:
    """No secret anywhere in `text`; its JSON lines."""
    for secret in (*SECRETS, *more):
        assert secret not in text, f"{secret!r} logged"
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


class _FailingClock:
    """A clock that fails with patient data in its message (a defect: a 500)."""

    def __call__(self) -> datetime:
        raise ValueError(f"no time for {PATIENT_ID} born {BIRTH_DATE}")


def test_nothing_private_is_logged_in_process(
    runtime: Runtime, store: DecisionStore, fhir_with_patient: str, captured: io.StringIO
) -> None:
    allowing = dataclasses.replace(
        runtime,
        settings=runtime.settings.model_copy(update={"fhir_allowed_servers": [fhir_with_patient]}),
    )
    client = TestClient(create_app(allowing, store=store), raise_server_exceptions=False)
    # prefetch
    answer = client.post(MONITOR, json=body())
    assert answer.status_code == 200
    (card,) = answer.json()["cards"]
    # fallback from the real FHIR server, with the access token
    fetched = client.post(MONITOR, json=body(prefetch=False, fhirServer=fhir_with_patient))
    assert fetched.status_code == 200, fetched.text
    assert fetched.json()["cards"][0]["extension"]["crs"]["grade"] == 2
    # the pharmacist's check
    assert client.post(SIGN, json=body("order-sign")).status_code == 200
    # errors: 400, 404, 412 (server not allowed; a bad token for a real query)
    bad = body()
    bad["context"]["patientId"] = {"id": PATIENT_ID, "name": FAMILY}
    assert client.post(MONITOR, json=bad).status_code == 400
    assert client.post(f"/cds-services/{PATIENT_ID}", json=body()).status_code == 404
    elsewhere = body(prefetch=False, fhirServer=f"http://127.0.0.1:9/{PATIENT_ID}")
    assert client.post(MONITOR, json=elsewhere).status_code == 412
    # feedback
    item = {
        "card": card["uuid"],
        "outcome": "overridden",
        "overrideReason": {"reason": {"code": "other"}, "userComment": COMMENT},
        "outcomeTimestamp": datetime.now(UTC).isoformat(),
    }
    assert client.post(f"{MONITOR}/feedback", json={"feedback": [item]}).status_code == 200
    unknown = {**item, "card": f"card-{PATIENT_ID}"}
    assert client.post(f"{MONITOR}/feedback", json={"feedback": [unknown]}).status_code == 404
    # a defect (500): frames only
    failing = TestClient(
        create_app(runtime, store=store, clock=_FailingClock()), raise_server_exceptions=False
    )
    assert failing.post(MONITOR, json=body()).status_code == 500

    lines = assert_private(captured.getvalue())
    messages = {line["message"] for line in lines}
    assert "evaluated" in messages and "fhirServer fallback" in messages  # it did log
    (unexpected,) = [line for line in lines if line["message"] == "unexpected error"]
    assert unexpected["error"] == "ValueError" and unexpected["frames"]
    # libraries at DEBUG said nothing of their own (below WARNING)
    assert all(line["logger"].startswith("cds") or line["level"] != "DEBUG" for line in lines)


def test_refused_client_tokens_are_counted_never_logged(
    runtime: Runtime, tmp_path: Path, captured: io.StringIO
) -> None:
    clock = auth.Clock()
    app = auth.auth_app(
        auth.runtime_with_auth(runtime, auth.default_trusted_clients(tmp_path)), clock
    )
    client = TestClient(app)
    now = clock()
    tokens = [
        f"garbage-{PATIENT_ID}",
        auth.token(now, exp=int(now.timestamp()) - 600),  # expired
        auth.token(now, aud="https://elsewhere.example.org"),
        auth.token(now, key=auth.FORGED_EC_KEY),
        auth.unsigned(auth.claims(now, sub=PATIENT_ID)),
        auth.hmac_with_public_key(auth.claims(now)),
    ]
    for value in tokens:
        response = client.post(MONITOR, json=body(), headers=auth.bearer(value))
        assert response.status_code == 401
    good = auth.token(now)
    assert client.post(MONITOR, json=body(), headers=auth.bearer(good)).status_code == 200
    assert client.post(MONITOR, json=body(), headers=auth.bearer(good)).status_code == 401

    lines = assert_private(captured.getvalue(), *tokens, good, *(t.split(".")[0] for t in tokens))
    refused = [line for line in lines if line["message"] == "client token refused"]
    assert len(refused) == len(tokens) + 1 and all(line["reason"] for line in refused)


def test_nothing_private_is_logged_by_the_served_service(
    tmp_path: Path, fhir_with_patient: str
) -> None:
    env = {"CRS_LOG_LEVEL": "DEBUG", "CRS_FHIR_ALLOWED_SERVERS": fhir_with_patient}
    with (
        serve_process(tmp_path, env) as served,
        httpx.Client(base_url=served.url, timeout=60) as client,
    ):  # (httpx: 5 s by default; a loaded machine is slower)
        answer = client.post(MONITOR, json=body())
        assert answer.status_code == 200
        (card,) = answer.json()["cards"]
        fetched = client.post(MONITOR, json=body(prefetch=False, fhirServer=fhir_with_patient))
        assert fetched.status_code == 200, fetched.text
        assert client.post(SIGN, json=body("order-sign")).status_code == 200
        bad = body()
        bad["context"]["patientId"] = [PATIENT_ID]
        assert client.post(MONITOR, json=bad).status_code == 400
        elsewhere = body(prefetch=False, fhirServer=f"http://127.0.0.1:9/{PATIENT_ID}")
        assert client.post(MONITOR, json=elsewhere).status_code == 412
        assert client.post(MONITOR, content=b"{" + PATIENT_ID.encode()).status_code == 400
        item = {
            "card": card["uuid"],
            "outcome": "overridden",
            "overrideReason": {"reason": {"code": "other"}, "userComment": COMMENT},
            "outcomeTimestamp": datetime.now(UTC).isoformat(),
        }
        assert client.post(f"{MONITOR}/feedback", json={"feedback": [item]}).status_code == 200
    text = served.log.read_text()
    lines = assert_private(text)
    assert any(line["message"] == "evaluated" for line in lines)
    assert all(line["logger"].startswith("cds") or line["level"] != "DEBUG" for line in lines)
    # every line is JSON: nothing printed raw (tracebacks, uvicorn's own format)
    assert all(line.startswith("{") for line in text.splitlines() if line.strip())
