"""OpenTelemetry traces, off by default, configured by the standard `OTEL_*` variables.

On when `OTEL_TRACES_EXPORTER` names an exporter (`otlp`, `console`) or an OTLP endpoint
is set (`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); the
service name defaults to `crs-cds` (`OTEL_SERVICE_NAME`). FastAPI, httpx (the FHIR
fallback, key sets, webhooks) and SQLAlchemy are instrumented. FHIR URLs hold patient ids,
so every outgoing request's URL is cut to its server and resource type before it is
recorded; health, readiness and metrics requests are not traced.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI
from sqlalchemy import Engine

EXCLUDED_URLS = "healthz,readyz,metrics"
_URL_ATTRIBUTES = ("http.url", "url.full")


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the OTEL_* variables ask for traces."""
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def redacted(url: str) -> str:
    """`https://ehr/fhir/Observation?patient=123` → `https://ehr/fhir/Observation`;
    `…/Patient/123` → `…/Patient`: no ids, no query."""
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    kept = [s for s in segments if s[:1].isupper() or s in ("fhir", "r4", "R4", "baseR4")]
    return f"{parts.scheme}://{parts.netloc}/" + "/".join(dict.fromkeys(kept))


def _redact_request(span: Any, request: Any) -> None:
    if span is None or not span.is_recording():
        return
    url = str(getattr(request, "url", "") or "")
    for name in _URL_ATTRIBUTES:
        span.set_attribute(name, redacted(url))


def configure(app: FastAPI, engine: Engine, span_processor: Any = None) -> bool:
    """Instrument the app, the HTTP clients and the database when traces are wanted (or a
    span processor is given, as the tests do); returns whether tracing is on."""
    if span_processor is None and not wanted():
        return False
    from opentelemetry import trace
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider(
        resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "crs-cds")})
    )
    provider.add_span_processor(span_processor or _exporter_processor())
    trace.set_tracer_provider(provider)
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, excluded_urls=EXCLUDED_URLS)
    HTTPXClientInstrumentor().instrument(
        tracer_provider=provider,
        request_hook=_redact_request,
        async_request_hook=_async_redact_request,
    )
    SQLAlchemyInstrumentor().instrument(engine=engine, tracer_provider=provider)
    return True


async def _async_redact_request(span: Any, request: Any) -> None:
    _redact_request(span, request)


def _exporter_processor() -> Any:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "console":
        return BatchSpanProcessor(ConsoleSpanExporter())
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return BatchSpanProcessor(OTLPSpanExporter())
