"""ICANS (ASTCT 2019) as a truth table: every domain x grade, ICE 0 awake vs
unarousable, the CAPD rules for children, and the status and time rules."""

from __future__ import annotations

from datetime import date

import pytest

from cds.engine.facts import Facts, Measurement, NeuroFinding
from cds.engine.icans import IcansGrading
from cds.runtime import Runtime
from tests.factories import AT, given, h

UNIT = "{score}"


def score(concept: str, hours_before: float, value: float) -> Measurement:
    return Measurement(
        concept, value, UNIT, h(hours_before), f"Observation/{concept}-{hours_before}"
    )


def finding(domain: str, level: str, hours_before: float = 1) -> NeuroFinding:
    return NeuroFinding(domain, level, level, h(hours_before), f"Observation/{domain}")


def icans(
    runtime: Runtime,
    measurements: list[Measurement] = (),  # type: ignore[assignment]
    neuro: list[NeuroFinding] = (),  # type: ignore[assignment]
    birth: date | None = date(1960, 1, 1),
    infused_hours_before: float = 72,
) -> IcansGrading:
    car_t = given("axicabtagene-ciloleucel", "car-t", infused_hours_before)
    facts = Facts.build(list(measurements), [], [car_t], birth, list(neuro))
    syndrome = runtime.rules.icans
    assert syndrome is not None
    assessed = syndrome.assess(facts, AT)
    assert assessed is not None
    return assessed.result


# --- every domain x grade --------------------------------------------------------------

ICE = [(10, 0), (9, 1), (7, 1), (6, 2), (3, 2), (2, 3), (1, 3)]


@pytest.mark.parametrize(("total", "expected"), ICE)
def test_ice_total_grades(runtime: Runtime, total: int, expected: int) -> None:
    assert icans(runtime, [score("ice_score", 1, total)]).grade == expected


LEVELS = [
    ("consciousness", "awakens-spontaneously", 1),
    ("consciousness", "awakens-to-voice", 2),
    ("consciousness", "awakens-to-tactile", 3),
    ("consciousness", "unarousable", 4),
    ("seizure", "rapidly-resolving", 3),
    ("seizure", "prolonged", 4),
    ("seizure", "unspecified", 3),
    ("motor", "deep-focal-weakness", 4),
    ("icp", "focal-edema", 3),
    ("icp", "diffuse-edema", 4),
    ("icp", "posturing", 4),
    ("icp", "cranial-nerve-vi-palsy", 4),
    ("icp", "papilledema", 4),
    ("icp", "cushing-triad", 4),
    ("icp", "edema-unspecified", 3),
]


@pytest.mark.parametrize(("domain", "level", "expected"), LEVELS)
def test_each_domain_level_grades(runtime: Runtime, domain: str, level: str, expected: int) -> None:
    result = icans(runtime, [score("ice_score", 1, 10)], [finding(domain, level)])
    assert result.grade == expected
    assert result.domains[domain] == expected


def test_worst_domain_sets_the_grade(runtime: Runtime) -> None:
    # ASTCT's example: ICE 3 with a generalized seizure is grade 3
    result = icans(runtime, [score("ice_score", 1, 3)], [finding("seizure", "rapidly-resolving")])
    assert result.grade == 3 and result.drivers == ["Seizure"]


def test_unspecified_findings_warn(runtime: Runtime) -> None:
    result = icans(
        runtime, [], [finding("seizure", "unspecified"), finding("icp", "edema-unspecified")]
    )
    assert result.grade == 3
    assert any("5 minutes" in w for w in result.warnings)
    assert any("diffuse" in w for w in result.warnings)


# --- ICE 0: awake with global aphasia vs unarousable -----------------------------------


def test_ice_0_awake_is_grade_3(runtime: Runtime) -> None:
    result = icans(
        runtime, [score("ice_score", 1, 0)], [finding("consciousness", "awakens-spontaneously")]
    )
    assert result.grade == 3
    assert "global aphasia" in result.evidence[0].label


def test_ice_0_unarousable_is_grade_4(runtime: Runtime) -> None:
    result = icans(runtime, [score("ice_score", 1, 0)], [finding("consciousness", "unarousable")])
    assert result.grade == 4
    assert "unarousable" in result.evidence[0].label


def test_ice_0_without_consciousness_is_grade_3_and_says_so(runtime: Runtime) -> None:
    result = icans(runtime, [score("ice_score", 1, 0)])
    assert result.grade == 3
    assert any("Chart the level of consciousness" in w for w in result.warnings)


# --- CAPD for children under 12 ----------------------------------------------------------

CHILD = date(2018, 6, 1)  # 8 years old at AT


@pytest.mark.parametrize(("total", "expected"), [(0, 0), (1, 1), (8, 1), (9, 3), (20, 3)])
def test_capd_grades(runtime: Runtime, total: int, expected: int) -> None:
    result = icans(runtime, [score("capd_score", 1, total)], birth=CHILD)
    assert result.grade == expected
    assert result.encephalopathy_tool == "CAPD"


def test_capd_below_9_awakening_to_voice_is_grade_2(runtime: Runtime) -> None:
    result = icans(
        runtime, [score("capd_score", 1, 6)], [finding("consciousness", "awakens-to-voice")], CHILD
    )
    assert result.grade == 2


def test_ice_charted_for_a_child_is_graded_with_a_warning(runtime: Runtime) -> None:
    result = icans(runtime, [score("ice_score", 1, 8)], birth=CHILD)
    assert result.grade == 1
    assert any("CAPD" in w for w in result.warnings)


def test_capd_with_unknown_age_warns(runtime: Runtime) -> None:
    result = icans(runtime, [score("capd_score", 1, 10)], birth=None)
    assert result.grade == 3
    assert any("age unknown" in w for w in result.warnings)


# --- time rules ------------------------------------------------------------------------


def test_latest_state_in_the_lookback_counts_and_max_grade_remembers(runtime: Runtime) -> None:
    result = icans(runtime, [score("ice_score", 20, 2), score("ice_score", 2, 9)])
    assert (result.grade, result.max_grade) == (1, 3)
    assert result.max_grade_at == h(20)


def test_events_count_within_the_lookback_only(runtime: Runtime) -> None:
    recent = icans(runtime, [score("ice_score", 1, 10)], [finding("seizure", "prolonged", 23)])
    old = icans(runtime, [score("ice_score", 1, 10)], [finding("seizure", "prolonged", 30)])
    assert (recent.grade, old.grade, old.max_grade) == (4, 0, 4)


def test_findings_before_the_exposure_or_after_at_are_ignored(runtime: Runtime) -> None:
    result = icans(
        runtime,
        [score("ice_score", 80, 0), score("ice_score", -1, 0)],
        infused_hours_before=72,
    )
    assert result.assessed is False and result.grade == 0 and result.max_grade == 0


def test_outside_the_icans_window_there_is_no_assessment(runtime: Runtime) -> None:
    syndrome = runtime.rules.icans
    assert syndrome is not None
    window = syndrome.windows["axicabtagene-ciloleucel"].window_hours
    car_t = given("axicabtagene-ciloleucel", "car-t", window + 1)
    facts = Facts.build([score("ice_score", 1, 2)], [], [car_t], None, [])
    assert syndrome.assess(facts, AT) is None


def test_icans_windows_differ_from_crs_and_cover_the_label(runtime: Runtime) -> None:
    syndrome = runtime.rules.icans
    assert syndrome is not None
    kymriah = syndrome.windows["tisagenlecleucel"].window_hours
    assert kymriah == 359 * 24  # label: neurological toxicity onset range 1-359 days
    for product, window in syndrome.windows.items():
        assert window.window_hours >= runtime.rules.windows[product].window_hours
