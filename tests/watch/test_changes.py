"""What the watch notifies, as the issue states it: a grade above any notified before for
the exposure, a new possible grade from 2, a first CRS fever, a data gap — each once."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from cds.engine.facts import Facts
from cds.runtime import Runtime
from cds.watch.changes import (
    ExposureRef,
    Notified,
    State,
    Thresholds,
    WatchEvent,
    detect,
    detect_all,
    replay,
)
from tests.factories import AT, given, h, systolic, temperature

LIMITS = Thresholds(fever_grade=1, possible_from=2, temperature_gap=timedelta(hours=8))
AXICEL = ExposureRef(
    "axicabtagene-ciloleucel@2026-11-18T12:00:00+00:00", "axicabtagene-ciloleucel", "car-t", h(48)
)
NEXT_DOSE = ExposureRef("teclistamab@2026-11-20T08:00:00+00:00", "teclistamab", "bispecific", h(4))
PATIENT = "p" * 32


def state(
    grade: int,
    *,
    fever: bool | None = None,
    possible: int | None = None,
    at: datetime = AT,
    temperature_since: datetime | None = None,
    exposure: ExposureRef | None = AXICEL,
) -> State:
    return State(
        at=at,
        exposure=exposure,
        grade=grade,
        max_grade=grade,
        possible_grade=possible,
        fever=grade >= 1 if fever is None else fever,
        watch_until=AT + timedelta(days=20),
        temperature_since=temperature_since or at - timedelta(hours=1),
        rule_set_version="test",
    )


def events(*states: State, memory: dict[str, Notified] | None = None) -> list[str]:
    return [c.event.value for c in detect_all(PATIENT, states, memory or {}, LIMITS)]


@pytest.mark.parametrize(
    ("grades", "expected"),
    [
        ([0], []),
        ([0, 0, 0], []),
        ([1], ["crs.first-fever"]),  # fever alone: the first fever says it
        ([0, 1, 1, 1], ["crs.first-fever"]),
        ([1, 2], ["crs.first-fever", "crs.escalation"]),
        ([3], ["crs.escalation"]),  # fever and a pressor at once: one notification
        ([1, 3, 2, 3], ["crs.first-fever", "crs.escalation"]),  # no higher than notified
        ([1, 3, 2, 4], ["crs.first-fever", "crs.escalation", "crs.escalation"]),
        ([2, 1, 0, 1, 2], ["crs.escalation"]),  # fever came with grade 2: consumed
    ],
)
def test_grades_over_time_are_notified_when_above_any_notified_before(
    grades: list[int], expected: list[str]
) -> None:
    assert (
        events(*[state(g, at=AT + timedelta(minutes=i)) for i, g in enumerate(grades)]) == expected
    )


def test_each_change_has_a_key_and_an_id_that_name_it_alike_everywhere() -> None:
    (first,) = detect_all(PATIENT, [state(1)], {}, LIMITS)
    (again,) = detect_all(PATIENT, [state(1, at=AT + timedelta(hours=1))], {}, LIMITS)
    assert first.key == again.key == f"{PATIENT}|{AXICEL.key}|first-fever"
    assert first.id == again.id  # uuid5 of the key: the webhook's idempotency key
    (three,) = detect_all(PATIENT, [state(3)], {}, LIMITS)
    assert three.key.endswith("|grade|3") and three.id != first.id


@pytest.mark.parametrize(
    ("possible", "expected"),
    [
        ([None], []),
        ([1], []),  # below rules/alerting.yaml watch.possible_grade_from
        ([2], ["crs.possible"]),
        ([2, 2, None, 2], ["crs.possible"]),
        ([2, 3], ["crs.possible", "crs.possible"]),
        ([3, 2], ["crs.possible"]),
    ],
)
def test_a_new_possible_grade_from_2_is_notified(
    possible: list[int | None], expected: list[str]
) -> None:
    states = [state(0, possible=p, at=AT + timedelta(minutes=i)) for i, p in enumerate(possible)]
    assert events(*states) == expected


def test_possible_grades_are_not_notified_without_the_rule() -> None:
    off = Thresholds(1, None, None)
    assert detect(PATIENT, state(0, possible=3), Notified(), off) is None


def test_no_temperature_for_longer_than_the_gap_is_one_data_gap_notification() -> None:
    last = AT - timedelta(hours=9)
    (gap,) = detect_all(PATIENT, [state(0, temperature_since=last)], {}, LIMITS)
    assert gap.event is WatchEvent.DATA_GAP
    memory = {AXICEL.key: Notified().after(gap.event, 0, None, gap.key)}
    later = state(0, temperature_since=last, at=AT + timedelta(hours=2))
    assert detect_all(PATIENT, [later], memory, LIMITS) == []  # the same gap: once
    # a temperature, then a new gap: notified again
    newer = AT + timedelta(hours=1)
    assert events(
        state(0, temperature_since=newer, at=newer + timedelta(hours=8, minutes=1)), memory=memory
    ) == ["data.gap"]
    # within the gap: nothing
    assert events(state(0, temperature_since=AT - timedelta(hours=7, minutes=59))) == []


def test_outside_every_window_nothing_is_notified() -> None:
    assert events(state(0, exposure=None)) == []


def test_a_new_exposure_is_notified_anew() -> None:
    memory: dict[str, Notified] = {}
    assert events(state(3), memory=memory) == ["crs.escalation"]
    assert events(state(1, exposure=NEXT_DOSE), memory=memory) == ["crs.first-fever"]


def test_the_batch_replay_evaluates_the_patient_at_each_time(runtime: Runtime) -> None:
    # axicabtagene ciloleucel 48 h before AT; a fever at AT-6 h; SBP 84 at AT-2 h
    facts = Facts.build(
        [temperature(10, 37.0), temperature(6, 38.6), systolic(2, 84), temperature(1, 38.2)],
        [],
        [given("axicabtagene-ciloleucel", "car-t", 48)],
    )
    changes = replay(runtime, facts, PATIENT, [h(10), h(6), h(2), h(1), AT], LIMITS)
    assert [(c.event.value, c.state.grade) for c in changes] == [
        ("crs.first-fever", 1),
        ("crs.escalation", 2),
    ]
    assert changes[0].state.at == h(6)


@pytest.mark.parametrize(
    ("if_febrile", "expected"),
    [
        ([None], []),
        ([1], []),  # below rules/alerting.yaml watch.possible_grade_from
        ([3], ["crs.if-febrile"]),
        ([3, 3, None, 3], ["crs.if-febrile"]),
        ([2, 3], ["crs.if-febrile", "crs.if-febrile"]),
        ([3, 2], ["crs.if-febrile"]),
    ],
)
def test_crs_findings_without_a_current_temperature_are_notified_once_a_grade(
    if_febrile: list[int | None], expected: list[str]
) -> None:
    # (a vasopressor and no temperature in the first 8 h: before any data gap is due)
    states = [
        replace(state(0, at=AT + timedelta(minutes=i)), grade_if_febrile=g)
        for i, g in enumerate(if_febrile)
    ]
    assert events(*states) == expected
    for change in detect_all(PATIENT, states, {}, LIMITS):
        assert change.key.endswith(f"|if-febrile|{change.state.grade_if_febrile}")
        assert change.possible == change.state.grade_if_febrile  # as the notification keeps it


def test_a_possible_grade_and_a_grade_if_febrile_are_remembered_apart() -> None:
    memory: dict[str, Notified] = {}
    possible = state(0, possible=2)
    unmeasured = replace(state(0, at=AT + timedelta(hours=1)), grade_if_febrile=2)
    found = detect_all(PATIENT, [possible, unmeasured], memory, LIMITS)
    assert [c.event for c in found] == [WatchEvent.POSSIBLE, WatchEvent.IF_FEBRILE]
    assert memory[AXICEL.key].possible == 2 and memory[AXICEL.key].if_febrile == 2
    # rebuilt from stored notifications (the census keeps the grade if febrile in the
    # notification's possible grade), the memory is the same
    rebuilt = Notified()
    for c in found:
        rebuilt = rebuilt.after(c.event, c.state.grade, c.possible, c.key)
    assert rebuilt == memory[AXICEL.key]


def test_replay_notifies_a_vasopressor_with_no_temperature_in_the_first_hours(
    runtime: Runtime,
) -> None:
    car_t = given("axicabtagene-ciloleucel", "car-t", 6)
    pressor = given("norepinephrine", "vasopressor", 2, None)
    facts = Facts.build([systolic(1, 82)], [], [car_t, pressor])
    changes = replay(runtime, facts, PATIENT, [h(1), AT], LIMITS)
    assert [c.event for c in changes] == [WatchEvent.IF_FEBRILE]
    assert changes[0].state.grade_if_febrile == 3 and changes[0].state.grade == 0
