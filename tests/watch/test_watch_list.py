"""With the watch on, the unit's watch list is the watch's census (issue #13 section 3 on
issue #12): patients whose chart nobody opened are on it, each with the state, grade
history, last readings and last notification the workers keep, and a timeline link where
a CRS card of that exposure was shown. On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select, text

from cds.app import create_app
from cds.engine.facts import Facts
from cds.evaluation import judge
from cds.readings import LastReadings, Reading
from cds.runtime import Runtime
from cds.store.tables import cards
from cds.watch.census import CycleResult, NewNotification
from cds.watch.changes import ExposureRef, Notified, State, Thresholds, detect, state_of
from cds.watch.delivery import payload
from cds.watch.service import Watch
from tests.factories import AT, given, grade2_resources, h, hook_request, prefetch
from tests.factories import systolic as sbp
from tests.factories import temperature as temp
from tests.watch.support import watch_runtime
from tests.web.conftest import SIGNING_KEY, Clock, World, free_port, signed_in

FHIR = "http://127.0.0.1:9/fhir"  # the watched server (no call reaches it here)
LEASE = timedelta(seconds=30)
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture()
def world(runtime: Runtime, database_url: str, tmp_path: Path) -> Iterator[World]:
    base_url = f"http://127.0.0.1:{free_port()}"
    rt = watch_runtime(
        runtime,
        tmp_path,
        FHIR,
        database_url=database_url,
        watch_in_serve=False,
        public_base_url=base_url,
        link_signing_key=SecretStr(SIGNING_KEY),
    )
    clock = Clock(NOW)
    app = create_app(rt, clock=clock)
    with app.state.store.engine.begin() as connection:  # each test from an empty store
        for table in (
            "watch_deliveries",
            "watch_notifications",
            "watch_history",
            "watch_patients",
            "audit_records",
        ):
            connection.execute(text(f"DELETE FROM {table}"))
    yield World(app, TestClient(app, base_url=base_url), clock, base_url)
    app.state.store.close()


def _state(exposure: ExposureRef, at: datetime, grade: int, readings: LastReadings) -> State:
    return State(
        at, exposure, grade, grade, None, True, at + timedelta(days=5), at, "rules", readings
    )


def _evaluated(watch: Watch, patient_id: str, states: list[State]) -> str:
    """The patient enrolled and evaluated by a worker: `states` in turn, each change
    notified (what a cycle writes)."""
    census = watch.census
    pseudonym = census.enrol(patient_id, "census-search", NOW)
    (row,) = census.claim("worker", NOW, LEASE, 1)
    limits = Thresholds(1, 2, None)
    notified: dict[str, Notified] = {}
    news = []
    for state in states:
        assert state.exposure is not None
        change = detect(pseudonym, state, notified.get(state.exposure.key, Notified()), limits)
        if change is not None:
            news.append(NewNotification(change, payload(change, watch.config), ()))
            notified[state.exposure.key] = notified.get(state.exposure.key, Notified()).after(
                change.event, state.grade, state.possible_grade, change.key
            )
    later = NOW + timedelta(minutes=1)  # the next turn: not due again in this test
    result = CycleResult(
        tuple((s, "poll") for s in states), states[-1], NOW, (), tuple(news), later, False
    )
    assert census.finish("worker", row, result, NOW) is not None
    return pseudonym


def test_the_list_shows_the_watchs_census_patients(world: World) -> None:
    watch: Watch = world.app.state.watch
    readings = LastReadings(
        temperature=Reading("38.9 °C", NOW - timedelta(minutes=30)),
        systolic=Reading("86 mmHg", NOW - timedelta(minutes=20)),
        oxygen=Reading("nasal cannula", NOW - timedelta(minutes=10)),
    )
    exposure = ExposureRef(
        f"axicabtagene-ciloleucel@{(NOW - timedelta(days=3)).isoformat()}",
        "axicabtagene-ciloleucel",
        "car-t",
        NOW - timedelta(days=3),
    )
    states = [
        _state(exposure, NOW - timedelta(hours=3), 1, LastReadings()),
        _state(exposure, NOW - timedelta(minutes=10), 2, readings),
    ]
    unseen = _evaluated(watch, "never-opened-1", states)
    closed = replace(
        _state(exposure, NOW - timedelta(days=2), 1, readings),
        watch_until=NOW - timedelta(seconds=1),
    )
    _evaluated(watch, "window-closed-2", [closed])
    watch.census.enrol("never-evaluated-3", "census-search", NOW)

    listing = signed_in(world).get("/crs/watch.json")
    assert listing.status_code == 200, listing.text
    (patient,) = listing.json()["patients"]
    assert patient["patient"] == unseen
    assert patient["product"] == "axicabtagene ciloleucel"  # the catalogue's display
    assert (patient["grade"], patient["maxGrade"], patient["day"]) == (2, 2, 3)
    assert [point["grade"] for point in patient["history"]] == [1, 2]
    assert patient["lastTemperature"]["text"] == "38.9 °C"
    assert patient["lastSystolic"]["text"] == "86 mmHg"
    assert patient["lastOxygen"]["text"] == "nasal cannula"
    assert patient["dataGap"] is False
    assert patient["lastNotifiedAt"] is not None
    assert patient["timeline"] is None  # no chart was opened: no stored evaluation to draw


def test_a_row_opens_the_timeline_of_the_card_shown_for_that_exposure(world: World) -> None:
    watch: Watch = world.app.state.watch
    observations, admins = grade2_resources("opened-4", anchor=NOW)
    shown = world.client.post(
        "/cds-services/crs-monitor",
        json=hook_request(
            "patient-view", {}, prefetch(observations, admins, "opened-4"), patient_id="opened-4"
        ),
    )
    assert shown.status_code == 200, shown.text
    with watch.census.engine.connect() as connection:
        card = connection.execute(select(cards.c.exposure, cards.c.record_id)).one()
    product, at = card.exposure.split("@", 1)
    exposure = ExposureRef(card.exposure, product, "car-t", datetime.fromisoformat(at))
    _evaluated(watch, "opened-4", [_state(exposure, NOW, 2, LastReadings())])
    (patient,) = signed_in(world).get("/crs/watch.json").json()["patients"]
    assert patient["timeline"] == f"/crs/records/{card.record_id}/timeline"
    assert patient["dataGap"] is True  # no temperature in the stored state
    assert signed_in(world).get(patient["timeline"]).status_code == 200


def test_an_evaluated_state_carries_the_last_readings(runtime: Runtime) -> None:
    facts = Facts.build(
        [temp(10, 37.0), temp(6, 38.6), sbp(2, 84), temp(1, 38.2), temp(-1, 39.0)],
        [],
        [given("axicabtagene-ciloleucel", "car-t", 48)],
    )
    state = state_of(judge(runtime, facts, AT, patient_id=None), "rules")
    # the last at or before the time of the evaluation (a later value is not yet known)
    assert state.readings == LastReadings(
        temperature=Reading("38.2 °C", h(1)), systolic=Reading("84 mmHg", h(2)), oxygen=None
    )
    assert LastReadings.from_json(state.readings.json()) == state.readings
