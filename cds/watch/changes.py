"""What matters: the changes of a patient's evaluated state that are notified, each once.

Pure: states in, changes out; no clock, I/O or settings. A state is one evaluation (the
service's engine, `cds.evaluation`) at one time; the watch evaluates at the time of each
new piece of data, so that what it notifies does not depend on when it looked.

For one exposure (a risk period's latest dose, keyed as the CRS card keys it), in this
order, at most one change per evaluation:

1. `crs.escalation`: a grade above any notified before (`crs.first-fever` instead when
   it is the first fever and the grade is the fever's own);
2. `crs.first-fever`: the first CRS fever in the look-back;
3. `crs.possible`: a possible grade (fever possibly masked by premedication) from
   rules/alerting.yaml `watch.possible_grade_from`, above any notified before;
4. `crs.if-febrile`: hypotension, hypoxia or a vasopressor with no current temperature —
   the grade if the patient is febrile — from the same `watch.possible_grade_from`, above
   any notified before (the card's `gradeIfFebrile`: fever not assessed, from the first
   hour of the risk period, before a data gap is due);
5. `data.gap`: inside the window, no temperature for longer than the gap setting
   (counted from the last temperature, or from the start of the risk period).

Each change has a key made of the patient's pseudonym, the exposure and what changed
(`…|grade|3`): the same change seen twice — by two workers, or after a restart — has the
same key, and the store keeps one notification per key.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum

from cds.engine.exposure import Exposure
from cds.engine.facts import Facts
from cds.evaluation import Evaluation, judge
from cds.readings import LastReadings, last_readings
from cds.runtime import Runtime

# uuid5 namespace of notification ids (a notification's id is its change key's uuid5,
# so that every worker names the same change alike: the webhook's idempotency key).
NOTIFICATION_NAMESPACE = uuid.UUID("5b0c1d3e-8a52-4f5e-9a57-8c1e2f3a4b5c")


class WatchEvent(StrEnum):
    ESCALATION = "crs.escalation"
    POSSIBLE = "crs.possible"
    IF_FEBRILE = "crs.if-febrile"
    FIRST_FEVER = "crs.first-fever"
    DATA_GAP = "data.gap"


@dataclass(frozen=True)
class ExposureRef:
    """The exposure of a state, as stored and notified."""

    key: str  # `product@latest-dose-time`, as the CRS card's acknowledgements key it
    product: str
    kind: str
    at: datetime

    @classmethod
    def of(cls, exposure: Exposure) -> ExposureRef:
        return cls(exposure_key(exposure), exposure.product, exposure.kind, exposure.at)


def exposure_key(exposure: Exposure) -> str:
    """The key of an exposure: its product and its latest dose (the CRS card's key)."""
    return f"{exposure.product}@{exposure.at.isoformat()}"


@dataclass(frozen=True)
class State:
    """A patient's evaluated state at `at` (the time of the data)."""

    at: datetime
    exposure: ExposureRef | None  # None: outside every risk window
    grade: int | None
    max_grade: int | None
    possible_grade: int | None
    fever: bool  # a CRS fever in the look-back
    watch_until: datetime | None  # the window (or the CRS activity keeping it open) ends
    temperature_since: datetime | None  # last temperature, or the risk period's start
    rule_set_version: str
    # what the watch list shows (not compared)
    readings: LastReadings = field(default_factory=LastReadings)
    # CRS findings with no current temperature: the grade if febrile (not kept in the
    # census: it is notified from the evaluation itself)
    grade_if_febrile: int | None = None

    def same_as(self, other: State | None) -> bool:
        """The same grade, maxGrade, possibleGrade and exposure (for the history)."""
        return other is not None and (
            self.exposure,
            self.grade,
            self.max_grade,
            self.possible_grade,
        ) == (other.exposure, other.grade, other.max_grade, other.possible_grade)


def state_of(evaluation: Evaluation, rule_set_version: str) -> State:
    """The state an evaluation gives."""
    exposure, crs = evaluation.exposure, evaluation.crs
    if exposure is None or crs is None:
        return State(evaluation.at, None, None, None, None, False, None, None, rule_set_version)
    # the latest temperature of the risk period (as the grade's data gap counts it)
    since = crs.last_temperature_at or exposure.risk_period_start
    return State(
        at=evaluation.at,
        exposure=ExposureRef.of(exposure),
        grade=crs.grade,
        max_grade=crs.max_grade,
        possible_grade=crs.possible_grade,
        fever=crs.fever_in_window,
        watch_until=exposure.extended_until or exposure.window_ends,
        temperature_since=since,
        rule_set_version=rule_set_version,
        readings=last_readings(
            evaluation.facts.measurements, evaluation.facts.oxygen, evaluation.at
        ),
        grade_if_febrile=crs.unassessed_grade,
    )


@dataclass(frozen=True)
class Thresholds:
    """When a change matters (rules/alerting.yaml `watch`, rules/astct.yaml, settings)."""

    fever_grade: int  # the grade of a fever alone
    possible_from: int | None  # None: possible grades are not notified
    temperature_gap: timedelta | None  # None: data gaps are not notified


@dataclass(frozen=True)
class Notified:
    """What was notified for one exposure of one patient: the highest grade (a first
    fever counts with its grade), whether a fever was, the highest possible grade, the
    data gaps (by key), and the highest grade if febrile."""

    grade: int = 0
    fever: bool = False
    possible: int = 0
    gaps: frozenset[str] = field(default_factory=frozenset)
    if_febrile: int = 0

    def after(
        self, event: WatchEvent, grade: int | None, possible: int | None, key: str
    ) -> Notified:
        """What is notified once this notification is (`possible`: the possible grade,
        or of `crs.if-febrile` the grade if febrile — as `Change.possible` gives)."""
        if event in (WatchEvent.ESCALATION, WatchEvent.FIRST_FEVER):
            return replace(self, grade=max(self.grade, grade or 0), fever=True)
        if event is WatchEvent.POSSIBLE:
            return replace(self, possible=max(self.possible, possible or 0))
        if event is WatchEvent.IF_FEBRILE:
            return replace(self, if_febrile=max(self.if_febrile, possible or 0))
        return replace(self, gaps=self.gaps | {key})


@dataclass(frozen=True)
class Change:
    """A change that matters: notified once, under `key`."""

    event: WatchEvent
    key: str
    patient: str  # pseudonym
    state: State

    @property
    def id(self) -> str:
        """The notification id (and idempotency key): the same for the same change."""
        return str(uuid.uuid5(NOTIFICATION_NAMESPACE, self.key))

    @property
    def exposure(self) -> ExposureRef:
        assert self.state.exposure is not None  # a change always has one
        return self.state.exposure

    @property
    def possible(self) -> int | None:
        """The grade a possible-grade change is about, as notifications keep it: the
        possible grade, or of `crs.if-febrile` the grade if febrile."""
        if self.event is WatchEvent.IF_FEBRILE:
            return self.state.grade_if_febrile
        return self.state.possible_grade


def detect(patient: str, state: State, notified: Notified, limits: Thresholds) -> Change | None:
    """The change `state` makes, given what was notified for its exposure (or None)."""
    exposure = state.exposure
    if exposure is None or state.grade is None:
        return None
    prefix = f"{patient}|{exposure.key}|"

    def change(event: WatchEvent, what: str) -> Change:
        return Change(event, prefix + what, patient, state)

    first_fever = state.fever and not notified.fever
    if state.grade > notified.grade:
        if first_fever and state.grade <= limits.fever_grade:
            return change(WatchEvent.FIRST_FEVER, "first-fever")
        return change(WatchEvent.ESCALATION, f"grade|{state.grade}")
    if first_fever:
        return change(WatchEvent.FIRST_FEVER, "first-fever")
    if _new_possible(state.possible_grade, notified.possible, limits):
        return change(WatchEvent.POSSIBLE, f"possible|{state.possible_grade}")
    if _new_possible(state.grade_if_febrile, notified.if_febrile, limits):
        return change(WatchEvent.IF_FEBRILE, f"if-febrile|{state.grade_if_febrile}")
    return gap_change(patient, state, notified, limits)


def _new_possible(grade: int | None, notified: int, limits: Thresholds) -> bool:
    """A possible grade (or grade if febrile) from `watch.possible_grade_from`, above the
    highest of its kind notified before."""
    return (
        limits.possible_from is not None
        and grade is not None
        and grade >= limits.possible_from
        and grade > notified
    )


def gap_change(patient: str, state: State, notified: Notified, limits: Thresholds) -> Change | None:
    """`data.gap` when no temperature was charted for longer than the gap, in a window."""
    exposure, since = state.exposure, state.temperature_since
    if exposure is None or since is None or limits.temperature_gap is None:
        return None
    if state.at - since <= limits.temperature_gap:
        return None
    key = f"{patient}|{exposure.key}|gap|{since.isoformat()}"
    if key in notified.gaps:
        return None
    return Change(WatchEvent.DATA_GAP, key, patient, state)


def detect_all(
    patient: str, states: Iterable[State], memory: dict[str, Notified], limits: Thresholds
) -> list[Change]:
    """The changes of a sequence of states, in order; `memory` (what was notified, by
    exposure key) is updated as they are found."""
    found: list[Change] = []
    for state in states:
        if state.exposure is None:
            continue
        key = state.exposure.key
        notified = memory.get(key, Notified())
        change = detect(patient, state, notified, limits)
        if change is not None:
            found.append(change)
            memory[key] = notified.after(change.event, state.grade, change.possible, change.key)
    return found


def replay(
    runtime: Runtime,
    facts: Facts,
    patient: str,
    times: Iterable[datetime],
    limits: Thresholds,
) -> list[Change]:
    """The changes a patient's data give when evaluated at each of `times` in turn: what
    the watch notifies for them, computed in one batch (audit, tests)."""
    version = runtime.rules.version
    states = [state_of(judge(runtime, facts, t, patient_id=None), version) for t in times]
    return detect_all(patient, states, {}, limits)
