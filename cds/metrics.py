"""Prometheus metrics: what an operator watches, never what a patient is.

Labels hold only bounded, non-identifying values: a route template or a known service
id, an HTTP status, a card indicator and grade, a refusal reason, an outcome name. With
`crs-cds serve --workers N`, set PROMETHEUS_MULTIPROC_DIR to an empty directory so that
`/metrics` sums every worker (prometheus_client's multiprocess mode); in Kubernetes, one
worker per pod and several replicas need nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter(
    "crs_cds_requests_total",
    "HTTP requests answered, by route (or service) and status",
    ["route", "status"],
)
REQUEST_SECONDS = Histogram(
    "crs_cds_request_seconds",
    "Time to answer an HTTP request, by route (or service)",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
CARDS = Counter(
    "crs_cds_cards_total",
    "Cards returned, by service, kind, indicator and grade ('-' when the card has none)",
    ["service", "kind", "indicator", "grade"],
)
AUTH_FAILURES = Counter(
    "crs_cds_authentication_failures_total",
    "Client tokens refused, by reason",
    ["reason"],
)
FHIR_QUERIES = Counter(
    "crs_cds_fhir_fallback_total",
    "FHIR-server fallbacks of hook calls, by outcome (ok, failed, timeout, refused)",
    ["outcome"],
)
DATABASE_SECONDS = Histogram(
    "crs_cds_database_seconds",
    "Time of a database operation of the decision store, by operation",
    ["operation"],
    buckets=LATENCY_BUCKETS,
)
RECORDS_SPOOLED = Counter(
    "crs_cds_records_spooled_total",
    "Audit records written to the local spool because the database was away",
)
NOTIFICATIONS = Counter(
    "crs_cds_watch_notifications_total",
    "Watch notification deliveries tried, by channel (webhook, fhir) and outcome "
    "(delivered; retry: failed, to be tried again; failed: given up)",
    ["channel", "outcome"],
)
# The watch's census, lag and deliveries are the database's figures: cds/watch/metrics.py


def observe_cards(service: str, cards: Iterable[tuple[str, str, int | None]]) -> None:
    """Count the cards of a hook call: (kind, indicator, grade or None) each."""
    for kind, indicator, grade in cards:
        CARDS.labels(service, kind, indicator, "-" if grade is None else str(grade)).inc()


class Timer:
    """`with Timer(DATABASE_SECONDS.labels("record")):` observes the elapsed time."""

    def __init__(self, histogram: Any) -> None:
        self.histogram = histogram

    def __enter__(self) -> Timer:
        self.started = time.perf_counter()
        return self

    def __exit__(self, *_: object) -> None:
        self.histogram.observe(time.perf_counter() - self.started)


def exposition(*extra: bytes) -> tuple[bytes, str]:
    """The metrics in Prometheus text format (all workers' in multiprocess mode), followed
    by `extra` expositions (figures read elsewhere, e.g. the watch's from its tables)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return b"".join((generate_latest(registry), *extra)), CONTENT_TYPE_LATEST
    return b"".join((generate_latest(), *extra)), CONTENT_TYPE_LATEST


Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


class MetricsMiddleware:
    """Counts and times every HTTP request. The route label is the matched route's
    template — for hook calls and feedback the service id when it is one of the
    services (an unknown id would let a client create label values)."""

    def __init__(self, app: ASGIApp, services: frozenset[str]) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def sending(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = self._route(scope)
            REQUESTS.labels(route, str(status)).inc()
            REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)

    def _route(self, scope: Scope) -> str:
        service = (scope.get("path_params") or {}).get("service_id")
        matched = scope.get("route")
        template = getattr(matched, "path", None) if matched is not None else None
        if template is None:
            return "(unmatched)"
        if service is not None:
            name = service if service in self.services else "(unknown service)"
            return str(template).replace("{service_id}", name)
        return str(template)
