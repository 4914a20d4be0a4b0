"""Tocilizumab dosing: the cap, the 30 kg switch, the tolerance, intervals and counts."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cds.engine import dosing
from cds.engine.dosing import (
    DoseHistory,
    DosingRules,
    dose_history,
    dose_problems,
    recommended_dose,
)
from cds.engine.facts import Facts
from cds.runtime import Runtime
from tests.factories import AT, h
from tests.factories import given as administered

weights = st.floats(min_value=3, max_value=250, allow_nan=False, allow_infinity=False)


@pytest.fixture(scope="module")
def rules(runtime: Runtime) -> DosingRules:
    return runtime.rules.dosing


def test_label_values_are_loaded(rules: DosingRules) -> None:
    assert (rules.weight_threshold_kg, rules.mg_per_kg_at_or_above, rules.mg_per_kg_below) == (
        30,
        8,
        12,
    )
    assert (rules.max_dose_mg, rules.min_interval, rules.max_doses_per_24h) == (
        800,
        timedelta(hours=8),
        3,
    )
    assert rules.max_doses_total == 4
    assert rules.tolerance_fraction == pytest.approx(0.10)


@pytest.mark.parametrize(
    ("weight", "expected_mg", "capped"),
    [
        (29.9, 358.8, False),  # below 30 kg: 12 mg/kg
        (30.0, 240.0, False),  # exactly 30 kg: 8 mg/kg
        (3.0, 36.0, False),
        (70.0, 560.0, False),
        (100.0, 800.0, False),  # exactly the cap
        (100.1, 800.0, True),
        (250.0, 800.0, True),
    ],
)
def test_recommended_dose_boundaries(
    rules: DosingRules, weight: float, expected_mg: float, capped: bool
) -> None:
    dose = recommended_dose(weight, rules)
    assert dose.mg == pytest.approx(expected_mg)
    assert dose.capped is capped


@settings(deadline=None)  # no time limit per example: a loaded machine is slow
@given(weight=weights)
def test_dose_never_exceeds_cap(runtime: Runtime, weight: float) -> None:
    rules = runtime.rules.dosing
    assert recommended_dose(weight, rules).mg <= rules.max_dose_mg


@settings(deadline=None)
@given(weight=weights)
def test_30kg_switch(runtime: Runtime, weight: float) -> None:
    rules = runtime.rules.dosing
    dose = recommended_dose(weight, rules)
    per_kg = 8 if weight >= 30 else 12
    assert dose.mg_per_kg == per_kg
    assert dose.mg == pytest.approx(min(weight * per_kg, 800), abs=1e-3)


@settings(deadline=None)
@given(weight=weights, factor=st.floats(min_value=0.5, max_value=1.5))
def test_tolerance_is_exactly_10_percent(runtime: Runtime, weight: float, factor: float) -> None:
    rules = runtime.rules.dosing
    dose = recommended_dose(weight, rules)
    ordered = dose.mg * factor
    problems = dose_problems(ordered, dose, rules)
    off_by = abs(ordered - dose.mg) / dose.mg
    if ordered > 800 + 1e-6:
        assert dosing.DOSE_ABOVE_CAP in problems
    if off_by <= 0.10 - 1e-9:
        assert dosing.DOSE_NOT_WEIGHT_BASED not in problems
    elif off_by > 0.10 + 1e-9 and not (
        ordered > 800 and abs(ordered - dose.weight_based_mg) <= 0.1 * dose.weight_based_mg
    ):
        assert dosing.DOSE_NOT_WEIGHT_BASED in problems


@settings(deadline=None)
@given(weight=weights)
def test_exact_tolerance_edges_pass(runtime: Runtime, weight: float) -> None:
    rules = runtime.rules.dosing
    dose = recommended_dose(weight, rules)
    for edge in (dose.mg * 0.9, dose.mg * 1.1):
        if edge <= 800:
            assert dose_problems(edge, dose, rules) == []


@pytest.mark.parametrize(
    ("weight", "ordered", "problems"),
    [
        (80, 640, []),
        (80, 800, [dosing.DOSE_NOT_WEIGHT_BASED]),  # 25 % over 640
        (100, 800, []),
        (100, 800.5, [dosing.DOSE_ABOVE_CAP]),
        (120, 960, [dosing.DOSE_ABOVE_CAP]),  # weight-based but above the cap: one problem
        (120, 1200, [dosing.DOSE_ABOVE_CAP, dosing.DOSE_NOT_WEIGHT_BASED]),
        (20, 240, []),  # 12 mg/kg
        (20, 160, [dosing.DOSE_NOT_WEIGHT_BASED]),  # 8 mg/kg given to a child under 30 kg
    ],
)
def test_dose_problem_table(
    rules: DosingRules, weight: float, ordered: float, problems: list[str]
) -> None:
    assert dose_problems(ordered, recommended_dose(weight, rules), rules) == problems


@pytest.mark.parametrize(
    ("ordered", "problems"),
    [
        (None, [dosing.DOSE_UNREADABLE]),  # not readable as mg: compared with nothing
        (0.0, [dosing.DOSE_INVALID]),
        (-100.0, [dosing.DOSE_INVALID]),
        (-1e-9, [dosing.DOSE_INVALID]),
        (float("nan"), [dosing.DOSE_INVALID]),
        (float("inf"), [dosing.DOSE_INVALID]),
    ],
)
def test_unreadable_or_invalid_dose_is_its_own_problem(
    rules: DosingRules, ordered: float | None, problems: list[str]
) -> None:
    for weight in (80, 120):  # under and above the cap
        assert dose_problems(ordered, recommended_dose(weight, rules), rules) == problems
    assert dose_problems(ordered, None, rules) == problems  # no weight on file


def test_rounding_is_an_institution_setting(rules: DosingRules) -> None:
    rounded = replace(rules, rounding_mg=20.0)
    assert recommended_dose(73, rounded).mg == 580  # 584 → nearest 20
    assert recommended_dose(99, rounded).mg == 800  # 792 → 800, not above the cap
    assert recommended_dose(73, rules).mg == 584


def test_rounding_never_takes_a_childs_dose_beyond_the_tolerance(rules: DosingRules) -> None:
    """Rounding to 100 mg must not give a 5 kg child 100 mg for a 60 mg (12 mg/kg) dose:
    at every weight the rounded dose stays within the 10 % tolerance, 60 mg is
    recommended, and 100 mg is flagged not weight-based."""
    rounded = replace(rules, rounding_mg=100.0)
    for weight in (3.0, 5.0, 29.9, 47.0):
        dose = recommended_dose(weight, rounded)
        assert abs(dose.mg - dose.target_mg) <= 0.1 * dose.target_mg + 1e-6
    assert recommended_dose(5.0, rounded).mg == 60  # not 100 mg (20 mg/kg)
    assert dose_problems(100, recommended_dose(5.0, rounded), rounded) == ["dose-not-weight-based"]
    assert dose_problems(60, recommended_dose(5.0, rounded), rounded) == []


def _history(
    rules: DosingRules,
    hours_before: list[float],
    counted_since: datetime | None = None,
    undated: tuple[datetime | None, ...] = (),
) -> DoseHistory:
    admins = [administered("tocilizumab", "tocilizumab", hours) for hours in hours_before]
    return dose_history(Facts.build([], [], admins), AT, counted_since, rules, undated)


@pytest.mark.parametrize(
    ("doses", "problems", "next_allowed_hours"),
    [
        ([], [], None),
        ([7 + 59 / 60], [dosing.INTERVAL_UNDER_8H], 1 / 60),  # 7 h 59 min ago
        ([8], [], None),  # exactly 8 h ago: allowed
        ([16, 8], [], None),  # third dose in 24 h: allowed
        ([23.9, 16, 8], [dosing.OVER_3_IN_24H], 0.1),  # would be the fourth in 24 h
        ([24, 16, 8], [], None),  # a dose exactly 24 h ago no longer counts
        ([40, 30, 20, 10], [dosing.OVER_4_TOTAL], None),  # a fifth dose
        ([30, 20, 10], [], None),  # a fourth dose: allowed
        ([20, 10, 7], [dosing.INTERVAL_UNDER_8H, dosing.OVER_3_IN_24H], 4.0),
    ],
)
def test_interval_and_count_table(
    rules: DosingRules, doses: list[float], problems: list[str], next_allowed_hours: float | None
) -> None:
    history = _history(rules, doses)
    assert history.problems == problems
    if next_allowed_hours is None:
        assert history.next_allowed_at is None
    else:
        assert history.next_allowed_at == AT + timedelta(hours=next_allowed_hours)


def test_doses_before_the_risk_period_do_not_count(rules: DosingRules) -> None:
    history = _history(rules, [200, 190, 180, 170], counted_since=h(100))
    assert (history.doses_total, history.problems) == (0, [])


def test_four_doses_long_ago_in_the_risk_period_forbid_a_fifth(rules: DosingRules) -> None:
    """The label's "maximum total of 4 doses" is not reset by a new CRS episode (no
    source resets it): four doses a week ago, in the same risk period, still count."""
    history = _history(rules, [170, 160, 150, 140], counted_since=h(400))
    assert (history.doses_total, history.problems) == (4, [dosing.OVER_4_TOTAL])
    assert history.next_allowed_at is None


@pytest.mark.parametrize(
    ("undated", "dated", "problems", "total"),
    [
        ((None,), [], [dosing.DOSE_TIME_UNKNOWN], 1),  # no date at all: may be 1 h ago
        ((h(-6),), [], [dosing.DOSE_TIME_UNKNOWN], 1),  # its day may end after now
        ((AT - timedelta(hours=23, minutes=59),), [], [dosing.DOSE_TIME_UNKNOWN], 1),
        ((AT - timedelta(hours=24),), [], [], 1),  # surely 24 h ago: the total only
        ((AT - timedelta(hours=24),), [30, 20, 10], [dosing.OVER_4_TOTAL], 4),
        ((None,), [30, 20, 10], [dosing.DOSE_TIME_UNKNOWN, dosing.OVER_4_TOTAL], 4),
        ((AT - timedelta(hours=500),), [], [], 0),  # before the risk period
    ],
    ids=["any time", "today", "23:59 ago", "24 h ago", "fourth", "fourth, any time", "before"],
)
def test_a_dose_whose_time_cannot_be_read_is_counted_and_blocks_an_unchecked_dose(
    rules: DosingRules,
    undated: tuple[datetime | None, ...],
    dated: list[float],
    problems: list[str],
    total: int,
) -> None:
    """Each undated dose is the latest instant it may have been given (None: any time).
    One that may fall in the last 24 h leaves the interval and the 24-hour count
    uncheckable; every one in the risk period counts in the total."""
    history = _history(rules, dated, counted_since=h(400), undated=undated)
    assert (history.problems, history.doses_total) == (problems, total)
    assert history.next_allowed_at is None


def test_8h_interval_counts_tocilizumab_given_before_the_episode_start(
    rules: DosingRules,
) -> None:
    """With the risk period starting at a teclistamab dose 3.5 h ago, tocilizumab given
    4 h ago still counts for the 8 h interval; the total counts from the risk period's
    start, so it holds none."""
    facts = Facts.build(
        [],
        [],
        [
            administered("teclistamab", "bispecific", 60),
            administered("tocilizumab", "tocilizumab", 4),
            administered("teclistamab", "bispecific", 3.5),
        ],
    )
    history = dose_history(facts, AT, h(3.5), rules)
    assert history.problems == ["interval-under-8h"]
    assert history.doses_total == 0


def test_future_doses_are_ignored(rules: DosingRules) -> None:
    history = _history(rules, [-1])
    assert history.doses_total == 0
