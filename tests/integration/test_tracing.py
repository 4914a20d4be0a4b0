"""Traces: off unless the OTEL_* variables ask; when on, a hook call with a FHIR fallback
is traced through FastAPI, httpx and SQLAlchemy without a patient id in any span."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cds import tracing
from cds.app import create_app
from cds.runtime import Runtime
from cds.scenarios import get
from cds.store.decisions import DecisionStore
from tests.factories import hook_request
from tests.integration.support import runtime_with


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_traces_are_off_unless_asked_for(environ: dict[str, str], on: bool) -> None:
    assert tracing.wanted(environ) is on


def test_fhir_urls_lose_their_ids_and_query() -> None:
    assert (
        tracing.redacted("https://ehr.example/fhir/Observation?patient=p-123&code=8310-5")
        == "https://ehr.example/fhir/Observation"
    )
    assert tracing.redacted("http://h:8080/fhir/Patient/p-123") == "http://h:8080/fhir/Patient"


@pytest.fixture()
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    yield spans
    HTTPXClientInstrumentor().uninstrument()
    SQLAlchemyInstrumentor().uninstrument()


def test_a_traced_call_holds_no_patient_id(
    runtime: Runtime, store: DecisionStore, loaded: str, exporter: InMemorySpanExporter
) -> None:
    scenario = get("g3-lisocel-norepinephrine")
    allowed = runtime_with(runtime, fhir_allowed_servers=[loaded])
    app = create_app(allowed, store=store)
    assert tracing.configure(app, store.engine, SimpleSpanProcessor(exporter))
    try:
        # no prefetch: the fallback runs
        body = hook_request("patient-view", patient_id=scenario.patient_id, fhir_server=loaded)
        with TestClient(app) as client:
            assert client.post("/cds-services/crs-monitor", json=body).status_code == 200
    finally:
        FastAPIInstrumentor.uninstrument_app(app)
    spans = exporter.get_finished_spans()
    names = " ".join(s.name for s in spans)
    assert "POST /cds-services/{service_id}" in names
    assert any(s.name.startswith("GET") for s in spans)  # the FHIR queries (httpx)
    assert any(s.attributes and "db.statement" in s.attributes for s in spans)
    for span in spans:
        for value in (span.attributes or {}).values():
            assert scenario.patient_id not in str(value), (span.name, value)
