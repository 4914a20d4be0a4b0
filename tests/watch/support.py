"""Helpers for the watch's tests: a webhook receiver on 127.0.0.1, the watch opened on a
database, scenario patients copied under new ids into the real FHIR server, and the
notification Bundles of the Subscriptions Backport IG."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.watch_support import Receiver as Receiver  # re-exported for the tests
from bench.watch_support import put as put
from bench.watch_support import scenario_copy as scenario_copy
from bench.watch_support import webhook_receiver as webhook_receiver
from cds.clock import Clock, utc_now
from cds.ids import new_uuid
from cds.runtime import Runtime
from cds.store.decisions import DecisionStore
from cds.watch.service import Watch

FHIR_HEADERS = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
PSEUDONYM_KEY = "test-pseudonym-key-0123456789abcdef"


def watch_runtime(runtime: Runtime, data_dir: Path, fhir: str, **settings: Any) -> Runtime:
    """The session runtime with the watch on (watching `fhir`) and its own data dir."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "fhir_allowed_servers": [fhir],
        "watch_fhir_server": fhir,
        "watch_poll_seconds": 1.0,
        "fhir_timeout_seconds": 5.0,
        "pseudonym_key": PSEUDONYM_KEY,
        **settings,
    }
    return dataclasses.replace(runtime, settings=runtime.settings.model_copy(update=values))


def open_watch(runtime: Runtime, clock: Clock = utc_now) -> tuple[DecisionStore, Watch]:
    store = DecisionStore.open(runtime, new_uuid, clock)
    watch = Watch.open(runtime, store, clock)
    assert watch is not None
    return store, watch


def new_patient(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def now() -> datetime:
    return datetime.now(UTC)


# --- notification Bundles as the Subscriptions Backport IG shows them (R4 and R4B) ---


def r4_notification(
    server: str,
    subscription_id: str,
    kind: str,
    events_since: int,
    events: list[tuple[int, str | None, str | None]] = (),  # type: ignore[assignment]
    resources: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A history Bundle whose first entry is the R4 status Parameters; `events` are
    (event-number, focus `Type/id` or None, patient id for additional-context or None)."""
    parameters: list[dict[str, Any]] = [
        {
            "name": "subscription",
            "valueReference": {"reference": f"{server}/Subscription/{subscription_id}"},
        },
        {"name": "topic", "valueCanonical": "http://example.org/SubscriptionTopic/crs-data"},
        {"name": "status", "valueCode": "active"},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(events_since)},
    ]
    for number, focus, patient in events:
        parts: list[dict[str, Any]] = [
            {"name": "event-number", "valueString": str(number)},
            {"name": "timestamp", "valueInstant": now().isoformat()},
        ]
        if focus:
            parts.append({"name": "focus", "valueReference": {"reference": f"{server}/{focus}"}})
        if patient:
            parts.append(
                {
                    "name": "additional-context",
                    "valueReference": {"reference": f"Patient/{patient}"},
                }
            )
        parameters.append({"name": "notification-event", "part": parts})
    status_id = str(uuid.uuid4())
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"urn:uuid:{status_id}",
            "resource": {
                "resourceType": "Parameters",
                "id": status_id,
                "meta": {
                    "profile": [
                        "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
                        "backport-subscription-status-r4"
                    ]
                },
                "parameter": parameters,
            },
            "request": {"method": "GET", "url": f"{server}/Subscription/{subscription_id}/$status"},
            "response": {"status": "200"},
        }
    ]
    for r in resources or []:
        entries.append(
            {
                "fullUrl": f"{server}/{r['resourceType']}/{r['id']}",
                "resource": r,
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
                "response": {"status": "201"},
            }
        )
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "history",
        "timestamp": now().isoformat(),
        "entry": entries,
    }


def r4b_notification(
    server: str, subscription_id: str, kind: str, events_since: int, events: list[tuple[int, str]]
) -> dict[str, Any]:
    """The R4B shape: a SubscriptionStatus first (id-only events)."""
    return {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": {
                    "resourceType": "SubscriptionStatus",
                    "status": "active",
                    "type": kind,
                    "eventsSinceSubscriptionStart": str(events_since),
                    "notificationEvent": [
                        {
                            "eventNumber": str(n),
                            "timestamp": now().isoformat(),
                            "focus": {"reference": f"{server}/{focus}"},
                        }
                        for n, focus in events
                    ],
                    "subscription": {"reference": f"{server}/Subscription/{subscription_id}"},
                    "topic": "http://example.org/SubscriptionTopic/crs-data",
                },
            }
        ],
    }
