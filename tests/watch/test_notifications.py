"""FHIR Subscription notifications (R5 Backport IG on R4) as the IG shapes them: handshake,
heartbeat, event notifications with empty, id-only and full-resource payloads, the R4B
SubscriptionStatus; authenticated by the channel header; a gap in event numbers makes a
catch-up; nothing is stored from a refused one, and a stored one is processed even by a
worker that starts after it was received."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from cds import fhirbuild as fb
from cds.app import create_app
from cds.runtime import Runtime
from cds.store.decisions import DecisionStore
from cds.store.tables import watch_inbox, watch_patients, watch_subscriptions
from cds.watch.service import Watch
from cds.watch.subscriptions import MalformedNotification, read_notification
from cds.watch.worker import Worker
from tests.watch.support import (
    Receiver,
    new_patient,
    now,
    open_watch,
    put,
    r4_notification,
    r4b_notification,
    scenario_copy,
    watch_runtime,
    webhook_receiver,
)

SECRET = "channel-secret-for-tests-0123456789"
SUBSCRIPTION = "crs-watch-sub-1"


# --- reading the Bundles (no HTTP) -----------------------------------------------------


def test_the_r4_shapes_are_read() -> None:
    server = "https://fhir.example/r4"
    note = read_notification(
        orjson.dumps(
            r4_notification(
                server,
                SUBSCRIPTION,
                "event-notification",
                7,
                [(6, "Observation/o1", "p1"), (7, "Observation/o2", None)],
            )
        )
    )
    assert (note.kind, note.subscription_id, note.events_since_start) == (
        "event-notification",
        SUBSCRIPTION,
        7,
    )
    assert [(e.number, e.focus, e.patient) for e in note.events] == [
        (6, ("Observation", "o1"), "p1"),  # additional-context names the patient
        (7, ("Observation", "o2"), None),  # id-only: read the focus to know
    ]
    full = fb.temperature("p9", now(), 38.4)
    note = read_notification(
        orjson.dumps(
            r4_notification(
                server,
                SUBSCRIPTION,
                "event-notification",
                8,
                [(8, f"Observation/{full['id']}", None)],
                resources=[full],
            )
        )
    )
    assert note.events[0].patient == "p9"  # full-resource: the resource's subject
    empty = read_notification(
        orjson.dumps(
            r4_notification(server, SUBSCRIPTION, "event-notification", 9, [(9, None, None)])
        )
    )
    assert empty.events[0].focus is None and empty.events[0].patient is None
    beat = read_notification(orjson.dumps(r4_notification(server, SUBSCRIPTION, "heartbeat", 9)))
    assert (beat.kind, beat.events, beat.events_since_start) == ("heartbeat", (), 9)


def test_the_r4b_subscription_status_is_read() -> None:
    note = read_notification(
        orjson.dumps(
            r4b_notification(
                "https://x/fhir", SUBSCRIPTION, "event-notification", 2, [(2, "Observation/a")]
            )
        )
    )
    assert (note.kind, note.subscription_id, note.events[0].number) == (
        "event-notification",
        SUBSCRIPTION,
        2,
    )


def _without_event_number() -> dict[str, Any]:
    bundle = r4_notification(
        "https://x", SUBSCRIPTION, "event-notification", 1, [(1, "Observation/a", None)]
    )
    event = bundle["entry"][0]["resource"]["parameter"][-1]
    event["part"] = [p for p in event["part"] if p["name"] != "event-number"]
    return bundle


def _r4b(**status: Any) -> bytes:
    """An R4B notification whose SubscriptionStatus holds `status` (and its subscription)."""
    resource = {
        "resourceType": "SubscriptionStatus",
        "type": "event-notification",
        "subscription": {"reference": "http://x/Subscription/s"},
        **status,
    }
    return orjson.dumps(
        {"resourceType": "Bundle", "type": "history", "entry": [{"resource": resource}]}
    )


WHERE = "Bundle.entry[0].resource"


# what fuzzing found answered 500 (a TypeError, or an OverflowError writing the number)
@pytest.mark.parametrize(
    ("body", "location", "words"),
    [
        (_r4b(type=[]), f"{WHERE}.type", "not one of"),
        (_r4b(type={}), f"{WHERE}.type", "not one of"),
        (_r4b(notificationEvent=True), f"{WHERE}.notificationEvent", "expected an array"),
        (_r4b(notificationEvent=5), f"{WHERE}.notificationEvent", "expected an array"),
        (
            _r4b(notificationEvent=[{"eventNumber": "1", "additionalContext": 7}]),
            f"{WHERE}.notificationEvent[0].additionalContext",
            "expected an array",
        ),
        (
            _r4b(notificationEvent=[{"eventNumber": str(2**63)}]),
            f"{WHERE}.notificationEvent[0].eventNumber",
            "above",
        ),
        (
            _r4b(eventsSinceSubscriptionStart="9" * 400),
            f"{WHERE}.eventsSinceSubscriptionStart",
            "more than 19 characters",
        ),
    ],
)
def test_a_notification_of_the_wrong_shape_is_malformed_not_an_error(
    body: bytes, location: str, words: str
) -> None:
    with pytest.raises(MalformedNotification) as caught:
        read_notification(body)
    assert words in caught.value.message
    assert caught.value.location == location


@pytest.mark.parametrize("number", ["1_000", " 5 ", "\u0663", "+5", "-5", "5.0", True, 5.0])
def test_an_event_number_is_ascii_digits_or_an_integer(number: object) -> None:
    """int() read "1_000", " 5 " and an Arabic-Indic three as event numbers."""
    with pytest.raises(MalformedNotification) as caught:
        read_notification(_r4b(notificationEvent=[{"eventNumber": number}]))
    assert "not a" in caught.value.message


def test_an_event_number_may_be_a_json_integer() -> None:
    note = read_notification(_r4b(notificationEvent=[{"eventNumber": 7}]))
    assert [e.number for e in note.events] == [7]


def test_the_largest_event_number_a_64_bit_column_keeps_is_read() -> None:
    note = read_notification(_r4b(notificationEvent=[{"eventNumber": str(2**63 - 1)}]))
    assert [e.number for e in note.events] == [2**63 - 1]


@pytest.mark.parametrize(
    ("body", "location", "words"),
    [
        (b"{not json", None, "not valid JSON"),
        (
            orjson.dumps({"resourceType": "Observation"}),
            "Bundle.resourceType",
            "expected a FHIR Bundle",
        ),
        (
            orjson.dumps({"resourceType": "Bundle", "type": "searchset", "entry": []}),
            "Bundle.type",
            "type history",
        ),
        (
            orjson.dumps(
                {
                    "resourceType": "Bundle",
                    "type": "history",
                    "entry": [{"resource": {"resourceType": "Patient"}}],
                }
            ),
            "Bundle.entry[0].resource",
            "subscription status",
        ),
        (
            orjson.dumps(_without_event_number()),
            "Bundle.entry[0].resource.parameter[5].part",
            "event-number",
        ),
        (
            orjson.dumps(
                r4_notification(
                    "https://x", SUBSCRIPTION, "event-notification", 1, [(1, "Observation/a", None)]
                )
            ).replace(b'"valueCode":"event-notification"', b'"valueCode":"tuesday"'),
            "Bundle.entry[0].resource.parameter[3].valueCode",
            "not one of",
        ),
    ],
)
def test_a_malformed_notification_says_what_and_where(
    body: bytes, location: str | None, words: str
) -> None:
    with pytest.raises(MalformedNotification) as caught:
        read_notification(body)
    assert words in caught.value.message
    assert caught.value.location == location


# --- the endpoint, with the real FHIR server behind the watch ----------------------------


@dataclass
class Service:
    runtime: Runtime
    store: DecisionStore
    watch: Watch
    client: TestClient
    receiver: Receiver
    fhir: str

    def post(self, bundle: dict[str, Any], secret: str | None = SECRET) -> Any:
        headers = {"Content-Type": "application/fhir+json"}
        if secret is not None:
            headers["Authorization"] = f"Bearer {secret}"
        return self.client.post(
            "/watch/notifications", content=orjson.dumps(bundle), headers=headers
        )

    def inbox(self) -> int:
        with self.store.engine.connect() as connection:
            return int(
                connection.execute(select(func.count()).select_from(watch_inbox)).scalar_one()
            )

    def subscription(self) -> Any:
        with self.store.engine.connect() as connection:
            return connection.execute(
                select(watch_subscriptions).where(watch_subscriptions.c.id == "local-1")
            ).one()

    def worker(self) -> Worker:
        return Worker(self.watch)


@pytest.fixture()
def service(runtime: Runtime, fhir_base_url: str, tmp_path: Path) -> Iterator[Service]:
    with webhook_receiver() as receiver:
        rt = watch_runtime(
            runtime,
            tmp_path,
            fhir_base_url,
            watch_webhook_urls=[receiver.url],
            watch_poll_seconds=3600.0,  # only the notifications make patients due
            watch_census_seconds=86_400.0,
            watch_in_serve=False,
        )
        store, watch = open_watch(rt)
        watch.census.claim_job("census-search", "test", now(), timedelta(0), timedelta(0))
        watch.census.finish_job("census-search", "test", now())  # ran just now: not due
        watch.subscriptions.register(
            "local-1", fhir_base_url, "http://t/topic", "id-only", SECRET, now()
        )
        app = create_app(rt, store=store)
        app.state.watch = watch  # the same watch object as the test's workers
        yield Service(rt, store, watch, TestClient(app), receiver, fhir_base_url)
        store.close()


def _census_patient(service: Service) -> tuple[str, str]:
    """A g0 copy (afebrile) enrolled and looked at once (its baseline)."""
    pid = new_patient("watch-sub")
    put(service.fhir, scenario_copy("g0-tisacel-afebrile", now(), pid))
    pseudonym = service.watch.census.enrol(pid, "cli", now())
    asyncio.run(service.worker().drain())
    return pid, pseudonym


def test_the_handshake_activates_the_subscription(service: Service) -> None:
    response = service.post(r4_notification(service.fhir, SUBSCRIPTION, "handshake", 0))
    assert response.status_code == 200, response.text
    row = service.subscription()
    assert (row.status, row.subscription_id, row.last_event) == ("active", SUBSCRIPTION, 0)


@pytest.mark.parametrize(
    ("secret", "status", "words"),
    [
        (None, 401, "no Authorization header"),
        ("not-the-secret", 401, "matches no subscription"),
    ],
)
def test_an_unauthenticated_notification_is_refused_and_changes_nothing(
    service: Service, secret: str | None, status: int, words: str
) -> None:
    before = service.inbox()
    response = service.post(
        r4_notification(
            service.fhir, SUBSCRIPTION, "event-notification", 1, [(1, "Observation/x", "p")]
        ),
        secret=secret,
    )
    assert response.status_code == status
    assert words in response.json()["error"]
    assert service.inbox() == before
    assert service.subscription().last_event is None


def test_the_channel_header_is_checked_before_the_body_is_read(service: Service) -> None:
    # a body that is not a notification at all, from a caller without the secret: 401
    # (it was parsed first: malformed shapes answered 400 or 500 to anyone)
    response = service.client.post(
        "/watch/notifications",
        content=_r4b(type=[]),
        headers={"Authorization": "Bearer anything"},
    )
    assert response.status_code == 401
    assert "matches no subscription" in response.json()["error"]


def test_a_notification_larger_than_a_hook_call_is_refused_before_it_is_read(
    service: Service,
) -> None:
    limit = service.runtime.settings.max_request_bytes
    response = service.client.post(
        "/watch/notifications",
        content=b" " * (limit + 1),
        headers={"Authorization": f"Bearer {SECRET}"},
    )
    assert response.status_code == 413
    assert service.inbox() == 0


def test_a_malformed_notification_is_refused_with_where_and_changes_nothing(
    service: Service,
) -> None:
    before = service.inbox()
    bundle = r4_notification(
        service.fhir, SUBSCRIPTION, "event-notification", 1, [(1, "Observation/x", None)]
    )
    bundle["entry"][0]["resource"]["parameter"][-1]["part"][0]["valueString"] = "one"
    response = service.post(bundle)
    assert response.status_code == 400
    assert response.json() == {
        "error": "not an event number (ASCII digits): 'one'",
        "location": "Bundle.entry[0].resource.parameter[5].part[0].value",
    }
    assert service.inbox() == before


def test_another_subscriptions_header_is_refused(service: Service) -> None:
    service.post(r4_notification(service.fhir, SUBSCRIPTION, "handshake", 0))
    response = service.post(r4_notification(service.fhir, "someone-else", "heartbeat", 0))
    assert response.status_code == 403
    assert "belongs to Subscription/crs-watch-sub-1" in response.json()["error"]


def test_an_id_only_event_makes_its_patient_due_and_the_fever_is_notified(service: Service) -> None:
    pid, pseudonym = _census_patient(service)
    fever = fb.temperature(pid, now() - timedelta(seconds=1), 38.9)
    put(service.fhir, [fever])
    response = service.post(
        r4_notification(
            service.fhir,
            SUBSCRIPTION,
            "event-notification",
            1,
            [(1, f"Observation/{fever['id']}", None)],
        )
    )
    assert response.status_code == 200
    assert response.json() == {"accepted": "event-notification", "events": 1, "catchUp": False}
    asyncio.run(service.worker().drain())  # reads the focus for its patient, polls it
    (body,) = service.receiver.bodies(pseudonym)
    assert (body["event"], body["grade"]) == ("crs.first-fever", 1)


def test_a_full_resource_event_names_its_patient(service: Service) -> None:
    pid, pseudonym = _census_patient(service)
    fever = fb.temperature(pid, now() - timedelta(seconds=1), 39.2)
    put(service.fhir, [fever])
    bundle = r4_notification(
        service.fhir,
        SUBSCRIPTION,
        "event-notification",
        1,
        [(1, f"Observation/{fever['id']}", None)],
        [fever],
    )
    assert service.post(bundle).status_code == 200
    asyncio.run(service.worker().drain())
    assert [b["event"] for b in service.receiver.bodies(pseudonym)] == ["crs.first-fever"]


def test_a_gap_in_event_numbers_makes_a_catch_up(service: Service) -> None:
    pid, pseudonym = _census_patient(service)
    assert (
        service.post(
            r4_notification(
                service.fhir,
                SUBSCRIPTION,
                "event-notification",
                1,
                [(1, "Observation/none-1", "nobody")],
            )
        ).status_code
        == 200
    )
    asyncio.run(service.worker().drain())
    # event 2 never arrives: it was this patient's fever
    put(service.fhir, [fb.temperature(pid, now() - timedelta(seconds=1), 38.8)])
    response = service.post(
        r4_notification(
            service.fhir,
            SUBSCRIPTION,
            "event-notification",
            3,
            [(3, "Observation/none-3", "nobody")],
        )
    )
    assert response.json()["catchUp"] is True
    assert service.subscription().catch_up_since is not None
    asyncio.run(service.worker().drain())  # the catch-up query finds the patient
    assert [b["event"] for b in service.receiver.bodies(pseudonym)] == ["crs.first-fever"]
    assert service.subscription().catch_up_since is None
    assert service.subscription().last_event == 3


def test_a_heartbeat_counting_more_events_than_received_makes_a_catch_up(service: Service) -> None:
    service.post(r4_notification(service.fhir, SUBSCRIPTION, "handshake", 0))
    assert (
        service.post(r4_notification(service.fhir, SUBSCRIPTION, "heartbeat", 0)).json()["catchUp"]
        is False
    )
    assert (
        service.post(r4_notification(service.fhir, SUBSCRIPTION, "heartbeat", 2)).json()["catchUp"]
        is True
    )


def test_an_empty_payload_asks_what_changed(service: Service) -> None:
    pid, pseudonym = _census_patient(service)
    put(service.fhir, [fb.temperature(pid, now() - timedelta(seconds=1), 38.5)])
    response = service.post(
        r4_notification(service.fhir, SUBSCRIPTION, "event-notification", 1, [(1, None, None)])
    )
    assert response.json()["catchUp"] is False  # no gap, but nothing named either
    asyncio.run(service.worker().drain())
    assert [b["event"] for b in service.receiver.bodies(pseudonym)] == ["crs.first-fever"]


def test_an_accepted_notification_is_processed_by_a_worker_started_after_it(
    service: Service,
) -> None:
    pid, pseudonym = _census_patient(service)
    fever = fb.temperature(pid, now() - timedelta(seconds=1), 38.7)
    put(service.fhir, [fever])
    assert (
        service.post(
            r4b_notification(
                service.fhir,
                SUBSCRIPTION,
                "event-notification",
                1,
                [(1, f"Observation/{fever['id']}")],
            )
        ).status_code
        == 200
    )
    # the service stops before any worker saw it; a new process opens the same database
    service.client.close()
    service.store.close()
    store, watch = open_watch(service.runtime)
    with store.engine.connect() as connection:
        due: datetime = connection.execute(
            select(watch_patients.c.next_poll_at).where(watch_patients.c.patient == pseudonym)
        ).scalar_one()
    assert due > now()  # not due by the clock: only the stored notification makes it so
    asyncio.run(Worker(watch).drain())
    assert [b["event"] for b in service.receiver.bodies(pseudonym)] == ["crs.first-fever"]
    store.close()


def test_an_administration_of_an_unknown_patient_enrols_it_when_it_is_a_risk_product(
    service: Service,
) -> None:
    pid = new_patient("watch-new")
    given = fb.administration(
        pid,
        now() - timedelta(hours=1),
        rxnorm="1987402",
        text="Yescarta (axicabtagene ciloleucel)",
        end=now() - timedelta(minutes=30),
    )
    put(service.fhir, [fb.patient(pid), given])
    other = new_patient("watch-other")
    paracetamol = fb.administration(other, now() - timedelta(hours=1), text="paracetamol 1 g")
    put(service.fhir, [fb.patient(other), paracetamol])
    bundle = r4_notification(
        service.fhir,
        SUBSCRIPTION,
        "event-notification",
        2,
        [
            (1, f"MedicationAdministration/{given['id']}", pid),
            (2, f"MedicationAdministration/{paracetamol['id']}", other),
        ],
    )
    assert service.post(bundle).status_code == 200
    asyncio.run(service.worker().drain())
    known = service.watch.census.known()
    assert known[service.watch.ids.pseudonym(pid)][0] is True
    assert service.watch.ids.pseudonym(other) not in known
