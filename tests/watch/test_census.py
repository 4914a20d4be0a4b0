"""The census in the store, on SQLite and PostgreSQL: patient ids sealed at rest, row leases
that no two workers share and that a dead worker's successor takes over, results written
only under the lease, and one notification per change key however often it is found."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from cds.runtime import Runtime
from cds.store.tables import (
    watch_deliveries,
    watch_notifications,
    watch_patients,
    watch_subscriptions,
)
from cds.watch.census import CycleResult, NewNotification
from cds.watch.changes import ExposureRef, Notified, State, Thresholds, detect
from cds.watch.delivery import payload
from cds.watch.ids import PatientIds, SealedIdUnreadable
from cds.watch.service import Watch
from cds.watch.status import patient_status
from cds.watch.subscriptions import EVENT_NUMBER_MAX, NotificationEvent, StatusNotification
from cds.watch.worker import next_poll
from cds.web.evaluations import by_card, by_record
from tests.factories import AT
from tests.watch.support import now, open_watch, watch_runtime

FHIR = "http://127.0.0.1:9/fhir"  # never called here
LEASE = timedelta(seconds=30)


@pytest.fixture()
def watch(runtime: Runtime, database_url: str, tmp_path: Path) -> Iterator[Watch]:
    rt = watch_runtime(runtime, tmp_path, FHIR, database_url=database_url)
    store, opened = open_watch(rt)
    with store.engine.begin() as connection:  # each test starts from an empty census
        for table in ("watch_deliveries", "watch_notifications", "watch_history", "watch_patients"):
            connection.execute(text(f"DELETE FROM {table}"))
    yield opened
    store.close()


def test_patient_ids_are_sealed_at_rest_and_named_by_pseudonym(watch: Watch) -> None:
    pseudonym = watch.census.enrol("patient-4711", "cli", now())
    with watch.census.engine.connect() as connection:
        row = connection.execute(select(watch_patients)).one()
    assert row.patient == pseudonym != "patient-4711"
    assert b"patient-4711" not in row.patient_ref
    assert watch.ids.open(row.patient_ref) == "patient-4711"
    assert watch.ids.seal("patient-4711") != watch.ids.seal("patient-4711")  # a nonce each
    other = PatientIds.from_keys(watch.ids.pseudonyms, "another id key")
    with pytest.raises(SealedIdUnreadable):
        other.open(row.patient_ref)


def test_two_workers_never_hold_the_same_patient(watch: Watch) -> None:
    census = watch.census
    census.enrol_many([f"p{i}" for i in range(10)], "cli", now())
    first = census.claim("worker-a", now(), LEASE, 6)
    second = census.claim("worker-b", now(), LEASE, 6)
    assert len(first) == 6 and len(second) == 4
    assert not {r.patient for r in first} & {r.patient for r in second}
    assert census.claim("worker-c", now(), LEASE, 6) == []  # all held


def test_a_live_worker_keeps_its_patients_by_renewing_its_leases(watch: Watch) -> None:
    census = watch.census
    census.enrol("p1", "cli", now())
    (held,) = census.claim("slow-worker", now(), LEASE, 5)
    assert census.renew("slow-worker", [held.patient], now() + 2 * LEASE) == 1
    assert census.claim("other", now() + LEASE + timedelta(seconds=1), LEASE, 5) == []
    assert census.renew("other", [held.patient], now() + 3 * LEASE) == 0  # not its lease


def test_a_dead_workers_patients_are_taken_over_when_its_lease_expires(watch: Watch) -> None:
    census = watch.census
    census.enrol("p1", "cli", now())
    (held,) = census.claim("dead-worker", now(), LEASE, 5)
    assert census.claim("other", now() + LEASE - timedelta(seconds=1), LEASE, 5) == []
    (taken,) = census.claim("other", now() + LEASE + timedelta(seconds=1), LEASE, 5)
    assert taken.patient == held.patient
    # the dead worker comes back: its lease is gone, it writes nothing
    result = CycleResult((), None, None, (), (), now() + LEASE, leave=False)
    assert census.finish("dead-worker", held, result, now()) is None
    with census.engine.connect() as connection:
        owner: str = connection.execute(select(watch_patients.c.lease_owner)).scalar_one()
    assert owner == "other"


def _state(grade: int) -> State:
    exposure = ExposureRef("product@2026-11-18T12:00:00+00:00", "product", "car-t", AT)
    return State(AT, exposure, grade, grade, None, True, AT + timedelta(days=9), AT, "rules")


def test_the_same_change_found_twice_is_stored_and_delivered_once(watch: Watch) -> None:
    census = watch.census
    pseudonym = census.enrol("p1", "cli", now())
    change = detect(pseudonym, _state(3), Notified(), Thresholds(1, 2, None))
    assert change is not None
    new = NewNotification(change, payload(change, watch.config), ("https://hooks.example/crs",))
    for worker in ("worker-a", "worker-b"):  # e.g. a worker and its successor after a lease
        (row,) = census.claim(worker, now() + timedelta(hours=1), LEASE, 1)
        result = CycleResult(((_state(3), "data"),), _state(3), None, (), (new,), now(), False)
        stored = census.finish(worker, row, result, now())
        assert stored == ([change.id] if worker == "worker-a" else [])
    with census.engine.connect() as connection:
        assert (
            connection.execute(select(func.count()).select_from(watch_notifications)).scalar_one()
            == 1
        )
        assert (
            connection.execute(select(func.count()).select_from(watch_deliveries)).scalar_one() == 1
        )
    assert census.notified(pseudonym) == {
        change.exposure.key: Notified(grade=3, fever=True, possible=0)
    }


def test_patients_are_polled_at_their_own_phase_of_the_interval() -> None:
    interval = timedelta(seconds=60)
    turns = [next_poll(f"patient-{i}", AT, interval) for i in range(500)]
    assert all(AT < t <= AT + interval for t in turns)
    offsets = sorted((t - AT).total_seconds() for t in turns)
    # spread over the interval: no second holds more than a few of the 500
    per_second = [sum(1 for o in offsets if s <= o < s + 1) for s in range(60)]
    assert max(per_second) <= 20 and min(per_second) >= 1
    assert next_poll("patient-1", turns[1], interval) == turns[1] + interval


def test_a_patient_who_left_comes_back_with_a_fresh_look(watch: Watch) -> None:
    census = watch.census
    census.enrol("p1", "cli", now())
    (row,) = census.claim("w", now(), LEASE, 1)
    left = CycleResult((), _state(0), now(), (), (), now(), leave=True)
    census.finish("w", row, left, now())
    assert census.known()[row.patient][0] is False
    census.enrol("p1", "census-search", now())
    (again,) = census.claim("w", now(), LEASE, 1)
    assert again.cursor is None and again.source == "census-search"


def test_event_numbers_up_to_2_63_are_kept(watch: Watch) -> None:
    # FHIR R5's eventNumber is an integer64; the columns were PostgreSQL integers, and
    # 2,147,483,648 answered 500 there (fuzzed)
    secret = f"secret-{uuid.uuid4()}"
    local = str(uuid.uuid4())
    watch.subscriptions.register(local, FHIR, "http://t/topic", "id-only", secret, now())
    for number in (2**31, EVENT_NUMBER_MAX):
        note = StatusNotification(
            "event-notification", None, None, None, (NotificationEvent(number, None, None),)
        )
        watch.subscriptions.accept(secret, note, FHIR, now())
        with watch.census.engine.connect() as connection:
            kept = connection.scalar(
                select(watch_subscriptions.c.last_event).where(watch_subscriptions.c.id == local)
            )
        assert kept == number


def test_a_lookup_by_an_id_holding_a_nul_finds_nothing(watch: Watch) -> None:
    # (PostgreSQL refuses to compare a NUL: GET /watch/patients/%00 and a timeline of
    # /crs/records/%00 answered 500 there, fuzzed)
    engine = watch.census.engine
    assert patient_status(engine, "a\x00b") is None
    assert by_record(engine, "\x00") is None
    assert by_card(engine, "\x00") is None
