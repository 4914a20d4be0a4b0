"""What a client sends (issue #11, section 3): a size limit enforced while the body streams
in (413), a time limit on the body (408), a limit on draft orders (413), and inputs nested
deep enough to break recursive code — none of them a 500, none hiding a card."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from cds.app import create_app
from cds.runtime import Runtime
from cds.store.decisions import DecisionStore
from cds.store.tables import audit_records
from cds.tocilizumab_order import MAX_ORDER_DEPTH, nested_deeper_than
from tests import factories as h

MONITOR = "/cds-services/crs-monitor"
SIGN = "/cds-services/crs-order-sign"


def app_with(runtime: Runtime, store: DecisionStore, **values: Any) -> FastAPI:
    settings = runtime.settings.model_copy(update=values)
    return create_app(dataclasses.replace(runtime, settings=settings), store=store)


def grade2_body(hook: str = "patient-view", **context: Any) -> dict[str, Any]:
    observations, administrations = h.grade2_resources()
    body: dict[str, Any] = h.hook_request(hook, context, h.prefetch(observations, administrations))
    return body


async def _post_streamed(
    app: FastAPI, path: str, chunks: list[bytes], pause: float = 0.0
) -> tuple[httpx.Response, int]:
    """POST a chunked body (no Content-Length); how many bytes the app pulled."""
    pulled = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        for chunk in chunks:
            if pause:
                await asyncio.sleep(pause)
            pulled += len(chunk)
            yield chunk

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://cds.test") as client:
        response = await client.post(path, content=body())
    return response, pulled


# --- size ---------------------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_saying_so(runtime: Runtime, store: DecisionStore) -> None:
    client = TestClient(app_with(runtime, store, max_request_bytes=100_000))
    body = orjson.dumps(grade2_body()) + b" " * 100_000
    response = client.post(MONITOR, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.headers["connection"] == "close"
    message = response.json()["error"]
    assert "larger than this service accepts" in message
    assert "CRS_MAX_REQUEST_BYTES" in message


def test_the_limit_is_enforced_while_the_body_streams(
    runtime: Runtime, store: DecisionStore
) -> None:
    """No Content-Length: the app stops pulling at the limit, not after the whole body."""
    app = app_with(runtime, store, max_request_bytes=1_000_000)
    chunks = [b" " * 65_536] * 1_000  # 64 MiB offered
    response, pulled = asyncio.run(_post_streamed(app, MONITOR, chunks))
    assert response.status_code == 413
    assert pulled <= 1_000_000 + 65_536


def test_a_body_under_the_limit_is_served(runtime: Runtime, store: DecisionStore) -> None:
    app = app_with(runtime, store, max_request_bytes=100_000)
    body = orjson.dumps(grade2_body())
    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    response, _ = asyncio.run(_post_streamed(app, MONITOR, chunks))
    assert response.status_code == 200, response.text
    assert response.json()["cards"][0]["indicator"] == "warning"


def test_a_default_limit_takes_a_real_chart() -> None:
    """10,000 resources are about 7 MB: the default leaves room, under the ingress's 16 MiB."""
    from cds.settings import Settings

    limit = Settings().max_request_bytes
    assert 12 * 1024 * 1024 <= limit < 16 * 1024 * 1024


def test_a_slow_body_is_408(runtime: Runtime, store: DecisionStore) -> None:
    app = app_with(runtime, store, body_timeout_seconds=0.3)
    body = orjson.dumps(grade2_body())
    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]
    response, _ = asyncio.run(_post_streamed(app, MONITOR, chunks, pause=0.1))
    assert response.status_code == 408
    assert "CRS_BODY_TIMEOUT_SECONDS" in response.json()["error"]
    assert response.headers["connection"] == "close"


def test_feedback_over_its_limit_is_413(client: TestClient) -> None:
    body = b'{"feedback": [], "x": "' + b"x" * (1024 * 1024) + b'"}'
    response = client.post(f"{MONITOR}/feedback", content=body)
    assert response.status_code == 413
    assert "1 MiB for this endpoint" in response.json()["error"]


@pytest.mark.parametrize("path", [MONITOR, f"{MONITOR}/feedback"])
def test_a_compressed_body_is_415_not_read_against_its_label(client: TestClient, path: str) -> None:
    # gzip was ignored: a gzipped body answered "not valid UTF-8", and a plain body
    # labelled gzip was read as if it were plain
    plain = orjson.dumps(grade2_body())
    for body in (gzip.compress(plain), plain):
        response = client.post(
            path,
            content=body,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        assert response.status_code == 415
        assert "Content-Encoding 'gzip' is not supported" in response.json()["error"]
    identity = client.post(
        MONITOR,
        content=plain,
        headers={"Content-Type": "application/json", "Content-Encoding": "identity"},
    )
    assert identity.status_code == 200


@pytest.mark.parametrize(
    ("content_type", "said"),
    [
        ("text/plain", "Content-Type 'text/plain' is not read"),
        ("text/plain;charset=UTF-8", "Content-Type 'text/plain' is not read"),
        ("application/x-www-form-urlencoded", "is not read: send the body as application/json"),
        ("multipart/form-data; boundary=x", "Content-Type 'multipart/form-data' is not read"),
        ("application/json; charset=utf-16", "charset 'utf-16' is not read"),
        ("application/json; charset=latin-1", "charset 'latin-1' is not read"),
    ],
)
def test_a_body_labelled_as_a_form_text_or_another_charset_is_415(
    client: TestClient, store: DecisionStore, content_type: str, said: str
) -> None:
    """A web page may POST a form or text/plain to another origin without a CORS
    preflight: such a body was read as JSON (and with CORS '*' and authentication off, a
    page could make the service evaluate and record a call). JSON is UTF-8."""
    before = _records(store)
    response = client.post(
        MONITOR, content=orjson.dumps(grade2_body()), headers={"Content-Type": content_type}
    )
    assert response.status_code == 415, response.text
    assert said in response.json()["error"]
    assert _records(store) == before  # not evaluated, nothing recorded


def _records(store: DecisionStore) -> int:
    with store.engine.connect() as connection:
        return int(connection.scalar(select(func.count()).select_from(audit_records)) or 0)


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "application/json",
        "application/json; charset=UTF-8",
        "application/json; charset=us-ascii",
        "application/fhir+json",
    ],
)
def test_json_bodies_are_read_with_or_without_a_content_type(
    client: TestClient, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post(MONITOR, content=orjson.dumps(grade2_body()), headers=headers)
    assert response.status_code == 200, response.text


def test_too_many_draft_orders_is_413_naming_the_setting(
    runtime: Runtime, store: DecisionStore
) -> None:
    client = TestClient(app_with(runtime, store, max_draft_orders=5))
    orders = [h.draft_order(f"o{i}", 640, "mg") for i in range(6)]
    body = grade2_body("order-sign", draftOrders=h.draft_bundle(*orders))
    response = client.post(SIGN, json=body)
    assert response.status_code == 413
    error = response.json()
    assert "holds 6 entries" in error["error"] and "CRS_MAX_DRAFT_ORDERS" in error["error"]
    assert error["location"] == "context.draftOrders.entry"
    body = grade2_body("order-sign", draftOrders=h.draft_bundle(*orders[:5]))
    assert client.post(SIGN, json=body).status_code == 200


# --- nesting ------------------------------------------------------------------------------


def _with_deep(body: dict[str, Any], depth: int, kind: str = "object") -> bytes:
    """The body as JSON, with the string "__DEEP__" replaced by a value nested `depth` deep
    (written as text: the encoders themselves refuse such depths)."""
    deep = (
        "[" * depth + "1" + "]" * depth if kind == "array" else '{"a":' * depth + "1" + "}" * depth
    )
    return json.dumps(body).replace('"__DEEP__"', deep).encode()


def _cards(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    cards: list[dict[str, Any]] = response.json()["cards"]
    return cards


@pytest.mark.parametrize("kind", ["object", "array"])
@pytest.mark.parametrize("depth", [500, 1000])
def test_a_readable_order_with_a_deep_extra_field_keeps_its_critical_card(
    client: TestClient, depth: int, kind: str
) -> None:
    order = h.draft_order("toci-2000", 2000, "mg")
    order["extra"] = "__DEEP__"
    body = grade2_body("order-sign", draftOrders=h.draft_bundle(order))
    response = client.post(SIGN, content=_with_deep(body, depth, kind))
    (card,) = _cards(response)
    assert card["indicator"] == "critical"
    assert "dose-above-cap" in card["extension"]["tocilizumabCheck"]["problems"]
    # the corrected order cannot be offered (not valid FHIR): the card says so
    assert "suggestions" not in card
    assert "No corrected order offered" in card["detail"]


def test_a_valid_but_deeply_nested_order_keeps_its_card_without_a_correction(
    client: TestClient,
) -> None:
    """Extensions nest legally: nested 100 deep, the order is read and checked; the
    corrected order (which would carry that nesting into the response) is not offered."""
    order = h.draft_order("toci-2000", 2000, "mg")
    order["extension"] = "__DEEP__"
    body = grade2_body("order-sign", draftOrders=h.draft_bundle(order))
    leaf = '{"url":"http://x/leaf","valueString":"v"}'
    deep = '[{"url":"http://x/e","extension":' * 100 + f"[{leaf}]" + "}]" * 100
    response = client.post(SIGN, content=json.dumps(body).replace('"__DEEP__"', deep).encode())
    (card,) = _cards(response)
    assert card["indicator"] == "critical"
    assert f"nested more than {MAX_ORDER_DEPTH} levels deep" in card["detail"]


def test_a_valid_order_nested_a_little_is_still_corrected(client: TestClient) -> None:
    order = h.draft_order("toci-2000", 2000, "mg")
    ext: dict[str, Any] = {"url": "http://x/leaf", "valueString": "v"}
    for _ in range(10):
        ext = {"url": "http://x/e", "extension": [ext]}
    order["extension"] = [ext]
    (card,) = _cards(
        client.post(SIGN, json=grade2_body("order-sign", draftOrders=h.draft_bundle(order)))
    )
    assert card["indicator"] == "critical"
    (suggestion,) = card["suggestions"]
    assert suggestion["actions"][0]["resource"]["extension"] == [ext]


@pytest.mark.parametrize("depth", [500, 1000])
def test_an_unreadable_deep_order_is_reported_not_a_500(client: TestClient, depth: int) -> None:
    order = h.draft_order("toci-deep", 2000, "mg")
    order["dosageInstruction"] = "__DEEP__"
    body = grade2_body("order-sign", draftOrders=h.draft_bundle(order))
    (card,) = _cards(client.post(SIGN, content=_with_deep(body, depth)))
    assert "could not be read and was NOT checked" in card["summary"]


def test_json_nested_past_what_is_read_is_400(client: TestClient) -> None:
    body = grade2_body()
    body["context"]["extra"] = "__DEEP__"
    response = client.post(MONITOR, content=_with_deep(body, 5_000))
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]


def test_bundles_nested_in_bundles_are_walked_without_recursion(client: TestClient) -> None:
    observations, administrations = h.grade2_resources()
    body = h.hook_request("patient-view", {}, h.prefetch(observations[1:], administrations))
    body["prefetch"]["more"] = "__B__"
    nested = (
        '{"resourceType":"Bundle","type":"collection","entry":[{"resource":' * 300
        + json.dumps(observations[0])
        + "}]}" * 300
    )
    response = client.post(MONITOR, content=json.dumps(body).replace('"__B__"', nested).encode())
    (card,) = _cards(response)
    assert card["extension"]["crs"]["grade"] == 2  # the fever, 300 Bundles down, was read


def test_questionnaire_items_nested_deep_are_read(client: TestClient) -> None:
    body = grade2_body()
    response_items = '[{"linkId":"a","item":' * 300 + '[{"linkId":"z"}]' + "}]" * 300
    qr = {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "questionnaire": "urn:crs-cds:questionnaire:ice",
        "subject": {"reference": f"Patient/{h.PATIENT}"},
        "authored": h.hours_ago(1).isoformat(),
        "item": "__I__",
    }
    body["prefetch"]["neuro"] = qr
    raw = json.dumps(body).replace('"__I__"', response_items).encode()
    assert _cards(client.post(MONITOR, content=raw))


@pytest.mark.parametrize("where", ["item", "reason", "top"])
def test_feedback_with_deep_extra_members_is_stored(client: TestClient, where: str) -> None:
    (card,) = _cards(client.post(MONITOR, json=grade2_body()))
    item: dict[str, Any] = {
        "card": card["uuid"],
        "outcome": "overridden",
        "outcomeTimestamp": "2026-01-01T00:00:00Z",
    }
    feedback: dict[str, Any] = {"feedback": [item]}
    if where == "item":
        item["x"] = "__DEEP__"
    elif where == "reason":
        item["overrideReason"] = {"reason": {"code": "other", "x": "__DEEP__"}}
    else:
        feedback["x"] = "__DEEP__"
    response = client.post(f"{MONITOR}/feedback", content=_with_deep(feedback, 1_000))
    assert response.status_code == 200, response.text


def test_nesting_is_measured_without_recursion() -> None:
    value: Any = 1
    for _ in range(100_000):
        value = {"a": [value]}
    assert nested_deeper_than(value, 64)
    assert not nested_deeper_than({"a": [{"b": 1}]}, 3)
    assert nested_deeper_than({"a": [{"b": {}}]}, 3)


@pytest.mark.parametrize("path", ["/cds-services/{}", "/cds-services/{}/feedback"])
def test_an_unknown_service_id_is_not_echoed_in_full(client: TestClient, path: str) -> None:
    """A 10,000-character id came back whole in the 404 (the router's own cuts at 200)."""
    response = client.post(path.format("s" * 10_000), json={"feedback": []})
    assert response.status_code == 404
    error = response.json()["error"]
    assert "(10000 characters)" in error and len(error) < 600
