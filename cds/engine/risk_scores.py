"""Pre-infusion risk scores (EASIX, m-EASIX, EASIX-F, CAR-HEMATOTOX) from the labs taken
before lymphodepletion. Pure: no clock, I/O or settings.

Information for the physician: a score never changes a grade or an alert. Each input is
the latest value before the start of lymphodepletion; an input older than the maximum
age is "stale" and one not found "missing": the score then has no value (never a guess).
Without a charted lymphodepletion the scores' time point cannot be placed, so none is
computed.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cds.engine.exposure import Exposure
from cds.engine.facts import Administration, Facts, Measurement

COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
LYMPHODEPLETION = "lymphodepletion"


@dataclass(frozen=True)
class InputSpec:
    concept: str
    unit: str  # the unit the score uses
    factor: float  # canonical unit -> the score's unit
    bands: tuple[tuple[str, float, int], ...] = ()  # (op, value, points), first match wins


@dataclass(frozen=True)
class ScoreSpec:
    """One score of rules/risk_scores.yaml."""

    score: str
    kind: str  # ratio | points
    formula: str
    numerator: tuple[InputSpec, ...]
    denominator: InputSpec | None
    points: tuple[InputSpec, ...]
    categories: tuple[tuple[str, float, str], ...]  # (op, value, category), first match wins
    default_category: str | None
    cutoff: str
    predicts: str
    cohort: str
    citation: str
    confirmed: bool

    def inputs(self) -> tuple[InputSpec, ...]:
        if self.kind == "points":
            return self.points
        assert self.denominator is not None
        return (*self.numerator, self.denominator)


@dataclass(frozen=True)
class RiskScoreRules:
    scores: tuple[ScoreSpec, ...]
    lymphodepletion_within: timedelta
    max_age: timedelta


@dataclass(frozen=True)
class ScoreInput:
    """One input of a score: its value in the score's unit, or why there is none."""

    concept: str
    unit: str
    status: str  # used | missing | stale
    value: float | None = None
    at: datetime | None = None
    source: str | None = None


@dataclass(frozen=True)
class RiskScore:
    score: str
    value: float | None
    category: str | None
    inputs: tuple[ScoreInput, ...]
    spec: ScoreSpec

    @property
    def missing(self) -> list[str]:
        return [i.concept for i in self.inputs if i.status == "missing"]

    @property
    def stale(self) -> list[str]:
        return [i.concept for i in self.inputs if i.status == "stale"]


@dataclass(frozen=True)
class RiskAssessment:
    """The scores at their time point (the start of lymphodepletion), or why not."""

    lymphodepletion: Administration | None
    scores: tuple[RiskScore, ...]

    @property
    def time_point(self) -> datetime | None:
        return self.lymphodepletion.start if self.lymphodepletion is not None else None


def _latest_before(items: tuple[Measurement, ...], moment: datetime) -> Measurement | None:
    found = None
    for m in items:  # oldest first
        if m.at > moment:
            break
        found = m
    return found


def _input(facts: Facts, spec: InputSpec, time_point: datetime, max_age: timedelta) -> ScoreInput:
    m = _latest_before(facts.of(spec.concept), time_point)
    if m is None:
        return ScoreInput(spec.concept, spec.unit, "missing")
    value = round(m.value * spec.factor, 6)
    status = "stale" if time_point - m.at > max_age else "used"
    return ScoreInput(spec.concept, spec.unit, status, value, m.at, m.source)


def _category(spec: ScoreSpec, value: float) -> str | None:
    for op, threshold, category in spec.categories:
        if COMPARE[op](value, threshold):
            return category
    return spec.default_category


def compute(spec: ScoreSpec, inputs: tuple[ScoreInput, ...]) -> float | None:
    """The score from its inputs (in the score's units), or None when one is not usable."""
    if any(i.status != "used" or i.value is None for i in inputs):
        return None
    values = {i.concept: i.value for i in inputs if i.value is not None}
    if spec.kind == "points":
        total = 0
        for item in spec.points:
            for op, threshold, points in item.bands:
                if COMPARE[op](values[item.concept], threshold):
                    total += points
                    break
        return float(total)
    assert spec.denominator is not None
    denominator = values[spec.denominator.concept]
    if denominator <= 0:
        return None
    product = 1.0
    for item in spec.numerator:
        product *= values[item.concept]
    return product / denominator


def risk_scores(
    facts: Facts, exposure: Exposure | None, at: datetime, rules: RiskScoreRules
) -> RiskAssessment | None:
    """Every score at the start of the lymphodepletion: the one before the infusion of a
    CAR-T `exposure`, or, before any infusion (`exposure` None), one given within the
    allowed interval before `at` with no CAR-T since. None when there is nothing to show
    (after an infusion: no lymphodepletion and none of the scores' labs before it; before
    one: no recent lymphodepletion)."""
    if exposure is not None:
        infusion = exposure.risk_period_start
        earliest = infusion - rules.lymphodepletion_within
        latest = infusion
    else:
        earliest, latest = at - rules.lymphodepletion_within, at
    start = next(
        (
            a
            for a in facts.administrations
            if a.medication_class == LYMPHODEPLETION and earliest <= a.start <= latest
        ),
        None,
    )
    if exposure is None:
        if start is None or any(
            a.medication_class == "car-t" and start.start <= a.start <= at
            for a in facts.administrations
        ):
            return None
    elif start is None and not any(
        _latest_before(facts.of(i.concept), latest) is not None
        for spec in rules.scores
        for i in spec.inputs()
    ):
        return None
    scores: list[RiskScore] = []
    for spec in rules.scores:
        if start is None:
            inputs = tuple(ScoreInput(i.concept, i.unit, "missing") for i in spec.inputs())
            scores.append(RiskScore(spec.score, None, None, inputs, spec))
            continue
        inputs = tuple(_input(facts, i, start.start, rules.max_age) for i in spec.inputs())
        value = compute(spec, inputs)
        shown = round(value, 2) if value is not None else None
        category = _category(spec, value) if value is not None else None
        scores.append(RiskScore(spec.score, shown, category, inputs, spec))
    return RiskAssessment(start, tuple(scores))
