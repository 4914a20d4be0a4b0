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
from cds.clock import utc_now
from cds.ids import new_uuid
from cds.runtime import Runtime
from cds.store.decisions import DecisionStore
from tests import auth_support as auth
from tests.watch.support import watch_runtime

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
COUNTS: dict[str, Counter[str]] = {"off": Counter(), "on": Counter(), "watch": Counter()}
EXAMPLES_WITH_THE_WATCH = 60
LABELS = {"off": "authentication off", "on": "authentication on", "watch": "the watch on"}
WATCH_OPERATIONS = {
    "POST /watch/notifications",
    "POST /watch/patients",
    "GET /watch/patients/{pseudonym}",
}


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


@pytest.fixture(scope="module")
def open_api_watching(runtime: Runtime, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The watch on (its routes in the document), watching a server nobody answers at:
    the routes only store, so nothing is fetched; no worker runs in the process."""
    data_dir = tmp_path_factory.mktemp("watch")
    watching = watch_runtime(runtime, data_dir, "http://127.0.0.1:9/fhir", watch_in_serve=False)
    store = DecisionStore.open(watching, new_uuid, utc_now)
    return _schema(create_app(watching, store=store))


without_authentication = schemathesis.pytest.from_fixture("open_api")
with_the_watch = schemathesis.pytest.from_fixture("open_api_watching").include(
    path_regex="^/watch/"
)
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


@with_the_watch.parametrize()
@settings(max_examples=EXAMPLES_WITH_THE_WATCH, **SETTINGS)
def test_generated_calls_to_the_watch(case: Any) -> None:
    response = case.call()
    _count("watch", case, response.status_code)
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
            called = WATCH_OPERATIONS if mode == "watch" else operations
            statuses = {k: v for k, v in sorted(counts.items()) if k.startswith("status")}
            print(
                f"\nschemathesis, {LABELS[mode]}: {counts['examples']} calls, "
                f"{sum(1 for op in called if counts[op])} operations, {statuses}"
            )
    for mode in ("off", "on"):
        assert all(COUNTS[mode][op] for op in operations)
    assert all(COUNTS["watch"][op] for op in WATCH_OPERATIONS)
    for counts in COUNTS.values():
        assert not any(k.startswith("status 5") for k in counts)
    assert COUNTS["on"]["status 401"] and COUNTS["on"]["status 200"]
