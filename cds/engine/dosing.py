"""Tocilizumab for CRS: the weight-based dose and the limits on repeat doses. Pure.

Values come from rules/tocilizumab.yaml (Actemra US label, CAR-T labels); the
institution sets the dose tolerance and rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from cds.engine.facts import Administration, Facts, Measurement
from cds.engine.grading import Grading

# Problem codes, exactly as the pharmacist services report them.
DOSE_ABOVE_CAP = "dose-above-cap"
DOSE_NOT_WEIGHT_BASED = "dose-not-weight-based"
DOSE_UNREADABLE = "dose-unreadable"  # not readable as a mass (a volume, no unit, no value)
DOSE_INVALID = "dose-invalid"  # zero, negative or not a number: no dose at all
INTERVAL_UNDER_8H = "interval-under-8h"
OVER_3_IN_24H = "over-3-in-24h"
OVER_4_TOTAL = "over-4-total"
# a dose on record whose time cannot be read: the interval and the counts cannot be checked
DOSE_TIME_UNKNOWN = "dose-time-unknown"
NO_WEIGHT = "no-weight"
NO_CRS_EVIDENCE = "no-crs-evidence"

# Float noise guard for comparisons of mg values (1 µg).
_EPS = 1e-6


@dataclass(frozen=True)
class DosingRules:
    """Tocilizumab dosing for CRS: label values plus institution settings."""

    weight_threshold_kg: float
    mg_per_kg_at_or_above: float
    mg_per_kg_below: float
    max_dose_mg: float
    min_interval: timedelta
    max_doses_per_24h: int
    max_doses_total: int
    infusion_minutes: int
    tolerance_fraction: float
    rounding_mg: float | None
    indication_min_grade: int  # tocilizumab from this grade on
    persistent_fever: timedelta  # or at grade 1, for a fever lasting longer than this

    def mg_per_kg(self, weight_kg: float) -> float:
        """8 mg/kg at or above the threshold (30 kg), 12 mg/kg below it (label values)."""
        if weight_kg >= self.weight_threshold_kg:
            return self.mg_per_kg_at_or_above
        return self.mg_per_kg_below


@dataclass(frozen=True)
class Indication:
    """Why tocilizumab is indicated: the grade (or, with fever possibly masked by
    premedication, the possible grade), or a grade 1 fever that has lasted too long."""

    grade: int
    persistent_fever: bool = False
    possible: bool = False  # only a possible grade: offered, not recommended


def tocilizumab_indication(grading: Grading, rules: DosingRules) -> Indication | None:
    """From the indication grade (rules/tocilizumab.yaml), or at grade 1 with an unbroken
    febrile run longer than the persistent-fever threshold; None otherwise."""
    if grading.grade >= rules.indication_min_grade:
        return Indication(grading.grade)
    if grading.possible_grade is not None and grading.possible_grade >= rules.indication_min_grade:
        return Indication(grading.possible_grade, possible=True)
    duration = grading.fever_duration
    if grading.grade >= 1 and duration is not None and duration > rules.persistent_fever:
        return Indication(grading.grade, persistent_fever=True)
    return None


@dataclass(frozen=True)
class Dose:
    """A recommended dose and how it was reached."""

    mg: float  # what to give: the target, rounded when the institution rounds
    weight_kg: float
    mg_per_kg: float
    weight_based_mg: float  # weight × mg/kg, before the cap and rounding
    capped: bool
    target_mg: float  # weight-based, capped: what orders are checked against


def recommended_dose(weight_kg: float, rules: DosingRules) -> Dose:
    """The weight-based dose in mg, never above the cap.

    Institution rounding applies only where the rounded dose stays within the dose
    tolerance of the weight-based dose (a 100 mg step must not turn 60 mg for a 5 kg
    child into 100 mg); otherwise the dose is given unrounded.
    """
    per_kg = rules.mg_per_kg(weight_kg)
    weight_based = weight_kg * per_kg
    capped = weight_based > rules.max_dose_mg
    target = min(weight_based, rules.max_dose_mg)
    mg = target
    if rules.rounding_mg:
        rounded = min(round(target / rules.rounding_mg) * rules.rounding_mg, rules.max_dose_mg)
        if rounded > 0 and within_tolerance(rounded, target, rules):
            mg = rounded
    return Dose(round(mg, 3), weight_kg, per_kg, round(weight_based, 3), capped, round(target, 3))


def latest_weight(facts: Facts, at: datetime) -> Measurement | None:
    """The most recent body weight recorded at or before `at`."""
    weights = [m for m in facts.of("body_weight") if m.at <= at and m.value > 0]
    return weights[-1] if weights else None


@dataclass(frozen=True)
class DoseHistory:
    """Tocilizumab given so far, and whether another dose is allowed at `at`."""

    at: datetime
    doses: list[Administration]  # since `counted_since`, up to `at`, oldest first
    doses_last_24h: int  # the 24 h and interval limits count every dose on record
    last_dose_at: datetime | None
    next_allowed_at: datetime | None  # None: allowed now, or never (see problems)
    problems: list[str]  # what forbids a dose now: interval / 24 h / total / time codes
    counted_since: datetime | None = None  # the reach of the risk data (None: every dose)
    undated: int = 0  # doses on record whose time could not be read (counted in the total)

    @property
    def doses_total(self) -> int:
        return len(self.doses) + self.undated

    @property
    def hours_since_last(self) -> float | None:
        if self.last_dose_at is None:
            return None
        return round((self.at - self.last_dose_at).total_seconds() / 3600, 2)

    @property
    def allowed_now(self) -> bool:
        return not self.problems


def dose_history(
    facts: Facts,
    at: datetime,
    counted_since: datetime | None,
    rules: DosingRules,
    undated: tuple[datetime | None, ...] = (),
) -> DoseHistory:
    """Count the tocilizumab doses and check a new dose at `at`.

    The interval (at least `min_interval`, 8 h, since the last dose) and the 24-hour
    count (doses given less than 24 h before `at`) count every dose on record; the total
    counts the doses since `counted_since` (the reach of the risk data: the label's
    "maximum total of 4 doses" is not reset by a new CRS episode or risk period) and the `undated`
    ones, doses on record whose time could not be read (each the latest instant it may
    have been given, when its date could be read; None: any time). One that may fall in
    the last 24 hours leaves neither the interval nor the 24-hour count checkable: no
    dose is allowed unchecked.
    """
    given = [
        a for a in facts.administrations if a.medication_class == "tocilizumab" and a.start <= at
    ]
    doses = [a for a in given if counted_since is None or a.start >= counted_since]
    day_ago = at - timedelta(hours=24)
    recent = [a for a in given if a.start > day_ago]
    in_period = [u for u in undated if counted_since is None or u is None or u >= counted_since]
    last = given[-1].start if given else None
    problems: list[str] = []
    waits: list[datetime] = []
    if last is not None and at - last < rules.min_interval:
        problems.append(INTERVAL_UNDER_8H)
        waits.append(last + rules.min_interval)
    if len(recent) >= rules.max_doses_per_24h:
        problems.append(OVER_3_IN_24H)
        # allowed once the oldest dose that keeps the count at the limit is 24 h old
        waits.append(recent[len(recent) - rules.max_doses_per_24h].start + timedelta(hours=24))
    next_allowed: datetime | None = max(waits) if waits else None
    if any(u is None or u > day_ago for u in in_period):
        problems.append(DOSE_TIME_UNKNOWN)
        next_allowed = None  # (when is not known: the time must be charted first)
    if len(doses) + len(in_period) >= rules.max_doses_total:
        problems.append(OVER_4_TOTAL)
        next_allowed = None
    return DoseHistory(
        at, doses, len(recent), last, next_allowed, problems, counted_since, len(in_period)
    )


def within_tolerance(ordered_mg: float, target_mg: float, rules: DosingRules) -> bool:
    """|ordered − target| ≤ tolerance × target (inclusive)."""
    return abs(ordered_mg - target_mg) <= rules.tolerance_fraction * target_mg + _EPS


def dose_problems(ordered_mg: float | None, dose: Dose | None, rules: DosingRules) -> list[str]:
    """Problems with an ordered dose in mg against the cap and the weight-based dose.

    A dose that could not be read in mg (None) is `dose-unreadable`, and one that is zero,
    negative or not finite is `dose-invalid`: neither is compared with the cap or the
    weight-based dose."""
    problems: list[str] = []
    if ordered_mg is None:
        return [DOSE_UNREADABLE]
    if not is_finite_positive(ordered_mg):
        return [DOSE_INVALID]
    above_cap = ordered_mg > rules.max_dose_mg + _EPS
    if above_cap:
        problems.append(DOSE_ABOVE_CAP)
    # An order that is the exact weight-based dose above the cap is one problem (the cap),
    # not two.
    cap_only = (
        above_cap and dose is not None and within_tolerance(ordered_mg, dose.weight_based_mg, rules)
    )
    if (
        dose is not None
        and not within_tolerance(ordered_mg, dose.target_mg, rules)
        and not cap_only
    ):
        problems.append(DOSE_NOT_WEIGHT_BASED)
    return problems


def is_finite_positive(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0
