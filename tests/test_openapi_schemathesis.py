"""The OpenAPI document describes the real bodies and answers (issue #11, section 5), and
schemathesis, generating valid and invalid calls from it (positive and negative data),
finds no server error and no answer outside the document (status, content type, schema):
every operation, bounded examples, with authentication off and (a quicker pass) on."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from cds.app import create_app
from cds.runtime import Runtime
from cds.store.decisions import DecisionStore
from tests import auth_support as auth

EXAMPLES = 100
# Every check but two. "Positive data accepted": the schema cannot say that a hook must be
# the service's own, nor that an accepted card's feedback names its suggestions, so such
# schema-valid calls are rightly a 400. "Negative data rejected": the service reads
# leniently where real clients are lenient (`expires_in: "300"` is read as 300), so some
# schema-violating calls are rightly served. Negative data is still sent, to find 5xx.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    unsupported_method,
    ignored_auth,
]
EXAMPLES_WITH_AUTHENTICATION = 30
COUNTS: dict[str, Counter[str]] = {"off": Counter(), "on": Counter()}


def _schema(app: Any) -> Any:
    loaded = schemathesis.openapi.from_asgi("/openapi.json", app)
    loaded.config.generation.update(modes=list(schemathesis.GenerationMode))
    return loaded


@pytest.fixture(scope="module")
def open_api(runtime: Runtime, store: DecisionStore) -> Any:
    return _schema(create_app(runtime, store=store))


@pytest.fixture(scope="module")
def clock() -> auth.Clock:
    return auth.Clock()


@pytest.fixture(scope="module")
def open_api_authenticated(
    runtime: Runtime, tmp_path_factory: pytest.TempPathFactory, clock: auth.Clock
) -> Any:
    trusted = auth.default_trusted_clients(Path(tmp_path_factory.mktemp("trusted")))
    return _schema(auth.auth_app(auth.runtime_with_auth(runtime, trusted), clock))


without_authentication = schemathesis.pytest.from_fixture("open_api")
with_authentication = schemathesis.pytest.from_fixture("open_api_authenticated")
SETTINGS: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": list(HealthCheck),
    "derandomize": True,
}


def _count(mode: str, case: Any, status: int) -> None:
    COUNTS[mode][f"{case.method} {case.path}"] += 1
    COUNTS[mode][f"status {status}"] += 1
    COUNTS[mode]["examples"] += 1


@without_authentication.parametrize()
@settings(max_examples=EXAMPLES, **SETTINGS)
def test_generated_calls(case: Any) -> None:
    response = case.call()
    _count("off", case, response.status_code)
    case.validate_response(response, checks=CHECKS)


@with_authentication.parametrize()
@settings(max_examples=EXAMPLES_WITH_AUTHENTICATION, **SETTINGS)
def test_generated_calls_with_authentication(case: Any, clock: auth.Clock) -> None:
    """Every other call carries a valid client token (for the URL it calls)."""
    headers = {}
    if COUNTS["on"]["examples"] % 2 == 0:
        claims = auth.claims(clock(), aud=f"{auth.PUBLIC_BASE_URL}{case.formatted_path}")
        headers = auth.bearer(auth.sign(claims))
    response = case.call(headers=headers)
    _count("on", case, response.status_code)
    case.validate_response(response, checks=CHECKS)


def test_every_operation_was_called(capsys: pytest.CaptureFixture[str]) -> None:
    operations = {
        "GET /cds-services",
        "POST /cds-services/{service_id}",
        "POST /cds-services/{service_id}/feedback",
        "GET /fhir/Questionnaire/{qid}",
    }
    with capsys.disabled():
        for mode, counts in COUNTS.items():
            statuses = {k: v for k, v in sorted(counts.items()) if k.startswith("status")}
            print(
                f"\nschemathesis, authentication {mode}: {counts['examples']} calls, "
                f"{sum(1 for op in operations if counts[op])} operations, {statuses}"
            )
    for counts in COUNTS.values():
        assert all(counts[op] for op in operations)
        assert not any(k.startswith("status 5") for k in counts)
    assert COUNTS["on"]["status 401"] and COUNTS["on"]["status 200"]
