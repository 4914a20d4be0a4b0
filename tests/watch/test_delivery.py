"""Notifications out: a receiver that fails gets the same notification again after a
backoff (same Idempotency-Key) until it takes it, or until the attempts run out and
`crs-cds watch status` shows it failed; the body is signed when a secret is set; the
patient is named by pseudonym unless the id is asked for; the FHIR write-back writes a
Communication or a Flag the EHR shows, once however often it is sent."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import update

from cds.runtime import Runtime
from cds.store.decisions import DecisionStore
from cds.store.tables import watch_deliveries
from cds.watch.census import CycleResult, NewNotification
from cds.watch.changes import ExposureRef, Notified, State, Thresholds, detect
from cds.watch.delivery import backoff, payload, writeback_resource
from cds.watch.service import Watch
from cds.watch.status import status
from cds.watch.worker import Worker
from tests.factories import AT
from tests.watch.support import open_watch, watch_runtime, webhook_receiver


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def _notify(watch: Watch, patient_id: str, grade: int = 3) -> str:
    """A change stored for `patient_id` (as a cycle would), with its deliveries; its id."""
    census = watch.census
    pseudonym = census.enrol(patient_id, "cli", watch.clock())
    exposure = ExposureRef("axicabtagene-ciloleucel@x", "axicabtagene-ciloleucel", "car-t", AT)
    state = State(AT, exposure, grade, grade, None, True, AT + timedelta(days=9), AT, "rules")
    change = detect(pseudonym, state, Notified(), Thresholds(1, 2, None))
    assert change is not None
    (row,) = census.claim("test", watch.clock(), timedelta(seconds=30), 1)
    new = NewNotification(change, payload(change, watch.config), watch.config.targets())
    result = CycleResult(((state, "data"),), state, None, (), (new,), watch.clock(), False)
    assert census.finish("test", row, result, watch.clock()) == [change.id]
    return change.id


def _sent(channel: str, outcome: str) -> float:
    """crs_cds_watch_notifications_total of a channel and outcome (this process's)."""
    found = REGISTRY.get_sample_value(
        "crs_cds_watch_notifications_total", {"channel": channel, "outcome": outcome}
    )
    return found or 0.0


def _open(
    runtime: Runtime, tmp_path: Path, fhir: str, clock: Clock, **settings: Any
) -> tuple[DecisionStore, Watch]:
    return open_watch(watch_runtime(runtime, tmp_path, fhir, **settings), clock)


def test_a_failing_receiver_gets_the_notification_again_after_a_backoff(
    runtime: Runtime, tmp_path: Path
) -> None:
    clock = Clock()
    with webhook_receiver() as receiver:
        receiver.fail_first = 2
        store, watch = _open(
            runtime, tmp_path, "http://127.0.0.1:9/fhir", clock, watch_webhook_urls=[receiver.url]
        )
        nid = _notify(watch, "p-retry")
        worker = Worker(watch)
        counted = {o: _sent("webhook", o) for o in ("retry", "delivered")}
        asyncio.run(worker.deliver())  # 503
        (shown,) = status(store.engine)["notifications"][0]["deliveries"]
        assert (shown["status"], shown["attempts"], shown["lastError"]) == (
            "pending",
            1,
            "HTTP 503",
        )
        asyncio.run(worker.deliver())
        assert receiver.bodies() == []  # not yet due: backing off
        clock.now += backoff(1) + timedelta(milliseconds=1)
        asyncio.run(worker.deliver())  # 503 again
        clock.now += backoff(2) + timedelta(milliseconds=1)
        asyncio.run(worker.deliver())
        (received,) = receiver.of()
        assert received.headers["idempotency-key"] == nid == received.body["id"]
        (shown,) = status(store.engine)["notifications"][0]["deliveries"]
        assert (shown["status"], shown["attempts"]) == ("delivered", 3)
        assert _sent("webhook", "retry") == counted["retry"] + 2
        assert _sent("webhook", "delivered") == counted["delivered"] + 1
        assert shown["target"] == receiver.url.rsplit("/", 1)[0] + "/…"  # no path shown
        store.close()


def test_after_the_last_attempt_a_delivery_is_failed_and_can_be_retried(
    runtime: Runtime, tmp_path: Path
) -> None:
    clock = Clock()
    with webhook_receiver() as receiver:
        receiver.fail_first = 2
        store, watch = _open(
            runtime,
            tmp_path,
            "http://127.0.0.1:9/fhir",
            clock,
            watch_webhook_urls=[receiver.url],
            watch_webhook_attempts=2,
        )
        _notify(watch, "p-fail")
        worker = Worker(watch)
        for _ in range(2):
            asyncio.run(worker.deliver())
            clock.now += timedelta(minutes=20)
        assert status(store.engine)["deliveries"] == {"pending": 0, "delivered": 0, "failed": 1}
        assert watch.deliveries.retry_failed(clock.now) == 1
        asyncio.run(worker.deliver())
        assert status(store.engine)["deliveries"] == {"pending": 0, "delivered": 1, "failed": 0}
        assert len(receiver.bodies()) == 1
        store.close()


def test_the_body_is_signed_and_names_the_patient_as_configured(
    runtime: Runtime, tmp_path: Path
) -> None:
    clock = Clock()
    with webhook_receiver() as receiver:
        store, watch = _open(
            runtime,
            tmp_path,
            "http://127.0.0.1:9/fhir",
            clock,
            watch_webhook_urls=[receiver.url],
            watch_webhook_secret="shared-secret",
            watch_patient_details=["pseudonym", "id"],
            public_base_url="https://cds.example.org",
        )
        _notify(watch, "p-details")
        asyncio.run(Worker(watch).deliver())
        (received,) = receiver.of()
        body = received.body
        assert set(body) == {
            "event",
            "id",
            "at",
            "patient",
            "grade",
            "maxGrade",
            "possibleGrade",
            "gradeIfFebrile",
            "exposure",
            "ruleSetVersion",
            "link",
        }
        assert body["patient"] == {"pseudonym": watch.ids.pseudonym("p-details"), "id": "p-details"}
        assert (
            body["link"] == f"https://cds.example.org/watch/patients/{body['patient']['pseudonym']}"
        )
        assert body["exposure"] == {
            "product": "axicabtagene-ciloleucel",
            "kind": "car-t",
            "at": AT.isoformat(),
        }
        signature = hmac.new(b"shared-secret", orjson.dumps(body), hashlib.sha256).hexdigest()
        assert received.headers["x-crs-signature"] == f"sha256={signature}"
        assert received.headers["x-crs-event"] == "crs.escalation"
        stored = status(store.engine)["notifications"][0]
        assert "p-details" not in orjson.dumps(stored).decode()  # the store keeps the pseudonym
        store.close()


@pytest.mark.parametrize("kind", ["communication", "flag"])
def test_the_fhir_write_back_is_shown_by_the_ehr_once(
    runtime: Runtime, fhir_base_url: str, tmp_path: Path, kind: str
) -> None:
    clock = Clock()
    settings: dict[str, Any] = {"watch_writeback": kind}
    if kind == "communication":
        settings["watch_writeback_recipient"] = "CareTeam/crs-team"
    store, watch = _open(runtime, tmp_path, fhir_base_url, clock, **settings)
    pid = f"writeback-{kind}"
    nid = _notify(watch, pid)
    asyncio.run(Worker(watch).deliver())
    resource_type = "Communication" if kind == "communication" else "Flag"
    written = httpx.get(f"{fhir_base_url}/{resource_type}/{nid}").json()
    assert written["subject"] == {"reference": f"Patient/{pid}"}
    assert written["identifier"] == [{"system": "urn:crs-cds:watch-notification", "value": nid}]
    text = (
        written["payload"][0]["contentString"]
        if kind == "communication"
        else written["code"]["text"]
    )
    assert (
        "CRS grade 3" in text
        and "axicabtagene ciloleucel" in text
        and "nothing was ordered" in text
    )
    if kind == "communication":
        assert written["recipient"] == [{"reference": "CareTeam/crs-team"}]
    # sent again (a worker died before recording it): the same resource, not a second one
    with store.engine.begin() as connection:
        connection.execute(
            update(watch_deliveries).values(status="pending", next_attempt_at=clock.now)
        )
    asyncio.run(Worker(watch).deliver())
    again = httpx.get(f"{fhir_base_url}/{resource_type}/{nid}").json()
    assert again["meta"]["versionId"] == "2"
    found = httpx.get(
        f"{fhir_base_url}/{resource_type}",
        params={"identifier": f"urn:crs-cds:watch-notification|{nid}"},
    ).json()
    assert len(found["entry"]) == 1
    store.close()


def test_the_write_back_resources_are_valid_fhir() -> None:
    body = {
        "event": "crs.possible",
        "id": "4f1c2b8e-0000-5000-8000-000000000001",
        "at": AT.isoformat(),
        "grade": 0,
        "maxGrade": 0,
        "possibleGrade": 2,
        "exposure": {"product": "teclistamab", "kind": "bispecific", "at": AT.isoformat()},
    }
    for kind in ("communication", "flag"):
        resource = writeback_resource(kind, body, "p1", AT, None, lambda p: p)
        assert "possible CRS grade 2" in orjson.dumps(resource).decode()
