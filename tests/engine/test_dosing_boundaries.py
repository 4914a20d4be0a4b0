"""Tocilizumab dosing at its boundaries: the cap after rounding, the latest weight, the
next allowed dose after three in 24 h and none after the fourth, a dose charted at the
evaluation time, and the persistent-fever indication at exactly 72 h (found unpinned by
mutation testing)."""

from __future__ import annotations

from dataclasses import replace

from cds.engine.dosing import (
    Indication,
    dose_history,
    latest_weight,
    recommended_dose,
    tocilizumab_indication,
)
from cds.engine.facts import Facts
from cds.runtime import Runtime
from tests.engine.test_grading import Case
from tests.engine.test_grading_boundaries import exposure_from, g
from tests.factories import AT, given, h, measurement


def test_rounding_never_exceeds_the_cap(runtime: Runtime) -> None:
    rules = replace(runtime.rules.dosing, rounding_mg=120)
    assert recommended_dose(100, rules).mg == 800


def test_latest_weight_is_used(runtime: Runtime) -> None:
    f = Facts.build(
        [measurement("body_weight", 200, 80), measurement("body_weight", 0, 60)], [], []
    )
    weight = latest_weight(f, AT)
    assert weight is not None and weight.value == 60


def test_next_allowed_when_already_over_3_in_24h(runtime: Runtime) -> None:
    f = Facts.build([], [], [given("tocilizumab", "tocilizumab", x) for x in (20, 12, 4, 2)])
    hist = dose_history(f, AT, h(13), runtime.rules.dosing)
    assert hist.next_allowed_at == h(-12)


def test_no_next_dose_once_4_given(runtime: Runtime) -> None:
    f = Facts.build([], [], [given("tocilizumab", "tocilizumab", x) for x in (30, 20, 10, 2)])
    hist = dose_history(f, AT, None, runtime.rules.dosing)
    assert "over-4-total" in hist.problems and hist.next_allowed_at is None


def test_dose_charted_at_the_evaluation_time_counts(runtime: Runtime) -> None:
    f = Facts.build([], [], [given("tocilizumab", "tocilizumab", x) for x in (8, 0)])
    assert "interval-under-8h" in dose_history(f, AT, None, runtime.rules.dosing).problems


def test_persistent_fever_is_more_than_72h(runtime: Runtime) -> None:
    exp = exposure_from(120)

    def indicated(first: float) -> Indication | None:
        c = Case(
            "run",
            temps=[
                (first, 38.5),
                (first - 20, 38.5),
                (first - 40, 38.5),
                (first - 60, 38.5),
                (1, 38.5),
            ],
        )
        return tocilizumab_indication(g(runtime, c, exp), runtime.rules.dosing)

    assert indicated(73) is None  # exactly 72 h
    assert indicated(72.5) is None  # 71.5 h
    assert indicated(73.5) is not None  # 72.5 h
