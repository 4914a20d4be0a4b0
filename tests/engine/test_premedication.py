"""Fever possibly masked by premedication (issue #9.3): hypotension or hypoxia without
fever after a corticosteroid, an antipyretic or tocilizumab given as premedication keeps
the ASTCT grade at 0 but gives a possible grade and the drug that may mask the fever."""

from __future__ import annotations

import pytest

from cds.engine.exposure import find_exposure
from cds.engine.facts import Administration, Facts, Measurement, OxygenSupport
from cds.engine.grading import Grading, grade
from cds.runtime import Runtime
from tests.factories import AT, device, given, systolic, temperature

DOSE = 10.0  # teclistamab step-up dose 10 h before AT


def graded(
    runtime: Runtime,
    findings: list[Measurement | OxygenSupport],
    administrations: list[Administration],
) -> Grading:
    """The grade at AT, DOSE hours after a teclistamab dose."""
    facts = Facts.build(
        [f for f in findings if isinstance(f, Measurement)],
        [f for f in findings if isinstance(f, OxygenSupport)],
        [given("teclistamab", "bispecific", DOSE), *administrations],
    )
    exposure = find_exposure(facts, runtime.rules.windows, AT)
    assert exposure is not None
    return grade(facts, exposure, AT, runtime.rules.grading)


def premedication_hours(runtime: Runtime) -> float:
    return runtime.rules.windows["teclistamab"].premedication_hours


def test_dexamethasone_before_the_dose_then_hypotension_gives_possible_grade_2(
    runtime: Runtime,
) -> None:
    g = graded(
        runtime,
        [systolic(2, 84), temperature(2, 37.2)],
        [given("dexamethasone", "corticosteroid", DOSE + 1)],
    )
    assert g.grade == 0
    assert g.possible_grade == 2
    assert g.fever_possibly_masked_by is not None
    assert g.fever_possibly_masked_by.concept == "dexamethasone"
    assert any(e.finding == "premedication" for e in g.evidence)


@pytest.mark.parametrize(
    ("offset_hours", "masked"),
    [(0.0, True), (-1 / 60, False)],
    ids=["exactly-at-the-interval", "one-minute-earlier"],
)
def test_premedication_interval_boundary(
    runtime: Runtime, offset_hours: float, masked: bool
) -> None:
    before = DOSE + premedication_hours(runtime) - offset_hours
    g = graded(runtime, [systolic(2, 84)], [given("dexamethasone", "corticosteroid", before)])
    assert g.grade == 0
    assert (g.possible_grade == 2) is masked
    assert (g.fever_possibly_masked_by is not None) is masked


def test_antipyretic_during_the_window_before_any_fever_then_a_pressor_gives_possible_3(
    runtime: Runtime,
) -> None:
    g = graded(
        runtime,
        [temperature(6, 37.4)],
        [
            given("acetaminophen", "antipyretic", 8),
            given("norepinephrine", "vasopressor", 3, None),
        ],
    )
    assert (g.grade, g.possible_grade) == (0, 3)
    assert g.fever_possibly_masked_by is not None
    assert g.fever_possibly_masked_by.concept == "acetaminophen"


def test_positive_pressure_after_premedication_gives_possible_4(runtime: Runtime) -> None:
    g = graded(
        runtime,
        [device(1, "positive-pressure")],
        [given("dexamethasone", "corticosteroid", DOSE + 0.5)],
    )
    assert (g.grade, g.possible_grade) == (0, 4)


def test_fever_then_masking_drug_is_the_astct_rule_not_a_possible_grade(
    runtime: Runtime,
) -> None:
    g = graded(
        runtime,
        [temperature(8, 38.5), systolic(2, 84)],
        [given("acetaminophen", "antipyretic", 7)],
    )
    assert (g.grade, g.possible_grade) == (2, None)
    assert g.fever_possibly_masked_by is None


def test_fever_present_grades_as_usual(runtime: Runtime) -> None:
    g = graded(
        runtime,
        [temperature(1, 38.2), systolic(2, 84)],
        [given("dexamethasone", "corticosteroid", DOSE + 1)],
    )
    assert (g.grade, g.possible_grade) == (2, None)


def test_premedication_without_hypotension_or_hypoxia_changes_nothing(runtime: Runtime) -> None:
    g = graded(runtime, [systolic(2, 120)], [given("dexamethasone", "corticosteroid", DOSE + 1)])
    assert (g.grade, g.possible_grade, g.fever_possibly_masked_by) == (0, None, None)


def test_hypotension_before_a_drug_given_in_the_window_is_not_masked_by_it(
    runtime: Runtime,
) -> None:
    g = graded(runtime, [systolic(6, 84)], [given("acetaminophen", "antipyretic", 5)])
    assert (g.grade, g.possible_grade) == (0, None)


def test_no_premedication_no_possible_grade(runtime: Runtime) -> None:
    g = graded(runtime, [systolic(2, 84)], [])
    assert (g.grade, g.possible_grade, g.fever_possibly_masked_by) == (0, None, None)


def test_drug_of_another_class_is_not_premedication(runtime: Runtime) -> None:
    g = graded(runtime, [systolic(2, 84)], [given("diphenhydramine", "antihistamine", DOSE + 1)])
    assert g.possible_grade is None
