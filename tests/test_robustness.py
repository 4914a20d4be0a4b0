"""Whatever a client sends, the answer is a 2xx or a 4xx with a message — never a 500."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds.app import create_app
from cds.runtime import Runtime
from cds.store.decisions import DecisionStore
from tests.factories import draft_bundle, draft_order, grade2_resources, hook_request, prefetch

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
fhirish = st.fixed_dictionaries(
    {
        "resourceType": st.sampled_from(
            [
                "Observation",
                "MedicationAdministration",
                "Bundle",
                "Medication",
                "MedicationRequest",
                "Patient",
            ]
        )
    },
    optional={
        "status": json_values | st.sampled_from(["final", "completed", "draft"]),
        "code": json_values,
        "valueQuantity": json_values,
        "effectiveDateTime": json_values | st.just("2026-11-20T08:00:00Z"),
        "effectivePeriod": json_values,
        "entry": st.lists(st.fixed_dictionaries({"resource": json_values}), max_size=3),
        "medicationCodeableConcept": json_values,
        "medicationReference": json_values,
        "component": json_values,
        "subject": json_values,
        "dosageInstruction": json_values,
        "contained": json_values,
    },
)


@pytest.fixture(scope="module")
def client(runtime: Runtime, store: DecisionStore) -> TestClient:
    return TestClient(create_app(runtime, store=store), raise_server_exceptions=False)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(observations=fhirish | json_values, meds=fhirish | json_values, draft=fhirish | json_values)
def test_no_500_for_any_payload(
    client: TestClient, observations: Any, meds: Any, draft: Any
) -> None:
    for service, hook in (("crs-monitor", "patient-view"), ("crs-order-sign", "order-sign")):
        body = hook_request(
            hook,
            {"draftOrders": draft},
            {"observations": observations, "medicationAdministrations": meds},
        )
        r = client.post(f"/cds-services/{service}", json=body)
        assert r.status_code in (200, 400, 412), r.text
        if r.status_code != 200:
            assert r.json()["error"]


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(context=json_values, top=json_values)
def test_no_500_for_any_envelope(client: TestClient, context: Any, top: Any) -> None:
    obs, admins = grade2_resources()
    for body in (
        {
            "hook": "patient-view",
            "hookInstance": "x",
            "context": context,
            "prefetch": prefetch(obs, admins),
        },
        top,
        {"hook": top, "hookInstance": top, "context": {"patientId": top}, "prefetch": top},
    ):
        r = client.post("/cds-services/crs-monitor", json=body)
        assert r.status_code in (200, 400, 412), r.text


def test_mutated_valid_order_never_500(client: TestClient) -> None:
    obs, admins = grade2_resources()
    base = draft_order("mr", 640, "mg")
    for key in list(base):
        for junk in (None, 1, "x", [], {}, [1], {"a": 1}):
            order = dict(base)
            order[key] = junk
            body = hook_request(
                "order-sign", {"draftOrders": draft_bundle(order)}, prefetch(obs, admins)
            )
            r = client.post("/cds-services/crs-order-sign", json=body)
            assert r.status_code in (200, 400), (key, junk, r.text)


@pytest.mark.parametrize(
    ("body", "byte", "why"),
    [
        (b'{"hook": "patient-view\xff"}', 22, "(0xff) invalid start byte"),
        (b'{"hook": "\xed\xa0\x80"}', 10, "(0xed) invalid continuation byte"),
    ],
)
def test_a_body_that_is_not_utf8_says_where_it_breaks(
    client: TestClient, body: bytes, byte: int, why: str
) -> None:
    # (orjson's own message said "surrogates not allowed" at line 1 column 1 for any bad byte)
    response = client.post("/cds-services/crs-monitor", content=body)
    assert response.status_code == 400
    assert response.json()["error"] == f"request body is not valid UTF-8: byte {byte} {why}"


@pytest.mark.parametrize(
    ("method", "path", "status", "error"),
    [
        ("GET", "/", 404, "no such endpoint: GET / (GET /cds-services lists the CDS services)"),
        ("GET", "/cds-services/..%2f..", 404, "no such endpoint: GET /cds-services/../.."),
        (
            "PUT",
            "/cds-services/crs-monitor",
            405,
            "method not allowed: PUT /cds-services/crs-monitor (allowed: POST)",
        ),
        ("DELETE", "/healthz", 405, "method not allowed: DELETE /healthz (allowed: GET)"),
        # (a 307 to a URL built from the Host header: a redirected POST loses its signed aud)
        (
            "POST",
            "/cds-services/crs-monitor/",
            404,
            "no such endpoint: POST /cds-services/crs-monitor/ (GET /cds-services lists the "
            "CDS services); paths take no trailing slash",
        ),
        ("GET", "/cds-services/", 404, "no such endpoint: GET /cds-services/ ("),
    ],
)
def test_the_routers_own_answers_say_what_was_asked_in_the_error_shape(
    client: TestClient, method: str, path: str, status: int, error: str
) -> None:
    # (they were FastAPI's {"detail": "Not Found"}: no `error`, unlike every other 4xx)
    response = client.request(method, path)
    assert response.status_code == status
    assert response.json()["error"].startswith(error)
    if status == 405:
        assert response.headers["Allow"]


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/cds-services", "/metrics"])
def test_head_answers_as_get_without_the_body(client: TestClient, path: str) -> None:
    # load balancers, uptime monitors and `curl -I` probe with HEAD (it was a 405)
    got = client.get(path)
    head = client.head(path)
    assert head.status_code == got.status_code
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    if path != "/metrics":  # (the figures move between the two calls)
        assert head.headers["content-length"] == got.headers["content-length"]


def test_head_of_a_path_that_takes_no_get_is_405_with_its_methods(client: TestClient) -> None:
    response = client.head("/cds-services/crs-monitor")
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert response.content == b""
