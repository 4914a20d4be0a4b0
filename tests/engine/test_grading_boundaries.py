"""The CRS grading at its boundaries, each pinned by an input just at it: what counts as
oxygen or a vasopressor and when, what masks a fever and what is premedication, the
episode and the febrile run, the paediatric and hypoxaemia warnings (found unpinned by
mutation testing: a mutant of each survived the suite)."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, datetime, timedelta

from cds.engine.exposure import Exposure, find_exposure
from cds.engine.facts import Facts
from cds.engine.grading import Grading, grade
from cds.runtime import Runtime
from tests.engine.test_grading import EXPOSURE, Case, facts_of
from tests.factories import AT, given, h, measurement, systolic, temperature


def exposure_from(hours_before: float) -> Exposure:
    """The test exposure, infused `hours_before` AT, its window open long after."""
    return replace(
        EXPOSURE,
        at=h(hours_before),
        risk_period_start=h(hours_before),
        window_ends=h(hours_before) + timedelta(days=60),
    )


def exposed(runtime: Runtime, facts: Facts) -> Exposure:
    """The exposure the product windows find in `facts` at AT (there must be one)."""
    exposure = find_exposure(facts, runtime.rules.windows, AT)
    assert exposure is not None
    return exposure


def g(runtime: Runtime, case: Case, exposure: Exposure = EXPOSURE, at: datetime = AT) -> Grading:
    return grade(facts_of(case), exposure, at, runtime.rules.grading)


def test_zero_flow_is_not_oxygen(runtime: Runtime) -> None:
    assert g(runtime, Case("f0", temps=[(1, 38.5)], flow=[(1, 0.0)])).grade == 1


def test_device_before_the_infusion_does_not_grade(runtime: Runtime) -> None:
    r = g(runtime, Case("pre", temps=[(70, 38.5)], devices=[(73, "positive-pressure")]))
    assert r.max_grade == 1


def test_pressor_started_at_the_evaluation_time(runtime: Runtime) -> None:
    assert (
        g(runtime, Case("p", temps=[(1, 38.5)], pressors=[("norepinephrine", 0, None)])).grade == 3
    )


def test_multiple_pressor_interval_closes_when_one_stops(runtime: Runtime) -> None:
    c = Case(
        "m", temps=[(1, 38.5)], pressors=[("norepinephrine", 30, None), ("phenylephrine", 30, 28)]
    )
    assert g(runtime, c).grade == 3


def test_masking_drug_after_the_evaluation_time_does_not_mask(runtime: Runtime) -> None:
    c = Case(
        "future toci", temps=[(30, 38.5)], sbp=[(1, 85)], meds=[("tocilizumab", "tocilizumab", -1)]
    )
    assert g(runtime, c).grade == 0


def test_fever_masked_at_the_same_instant_is_reported(runtime: Runtime) -> None:
    c = Case("p", temps=[(1, 38.5)], meds=[("acetaminophen", "antipyretic", 1)])
    assert g(runtime, c).fever_masked_since == h(1)


def test_no_current_episode_after_a_long_crs_free_gap(runtime: Runtime) -> None:
    c = Case("old", temps=[(100, 38.5)], meds=[("tocilizumab", "tocilizumab", 99)])
    r = g(runtime, c, exposure_from(150))
    assert r.crs_episode_start is None and r.fever_masked_since is None


def test_max_grade_counts_masked_afebrile_hypotension(runtime: Runtime) -> None:
    c = Case("mx", temps=[(60, 38.5)], meds=[("tocilizumab", "tocilizumab", 58)], sbp=[(30, 85)])
    r = g(runtime, c)
    assert (r.grade, r.max_grade) == (0, 2)


def test_grade_2_lists_its_driver(runtime: Runtime) -> None:
    r = g(runtime, Case("d", temps=[(1, 38.5)], sbp=[(1, 85)]))
    assert r.drivers == ["hypotension not requiring vasopressors"]


def test_drug_at_the_first_fever_of_an_old_episode_is_not_premedication(runtime: Runtime) -> None:
    c = Case(
        "old", temps=[(150, 38.5)], meds=[("acetaminophen", "antipyretic", 150)], sbp=[(1, 85)]
    )
    r = g(runtime, c, exposure_from(200))
    assert r.grade == 0 and r.possible_grade is None


def test_latest_premedication_is_named(runtime: Runtime) -> None:
    facts = Facts.build(
        [systolic(1, 84)],
        [],
        [
            given("dexamethasone", "corticosteroid", 12),
            given("acetaminophen", "antipyretic", 11),
            given("teclistamab", "bispecific", 10),
        ],
    )
    r = grade(facts, exposed(runtime, facts), AT, runtime.rules.grading)
    assert r.possible_grade == 2
    assert r.fever_possibly_masked_by is not None
    assert r.fever_possibly_masked_by.concept == "acetaminophen"


def test_paediatric_warning_below_18_only(runtime: Runtime) -> None:
    def warned(birth: date) -> bool:
        f = Facts.build([temperature(1, 38.5)], [], [], birth)
        return any(
            "Paediatric" in w for w in grade(f, EXPOSURE, AT, runtime.rules.grading).warnings
        )

    assert AT.date() == date(2026, 11, 20)
    assert not warned(date(2008, 11, 20))  # 18 today
    assert warned(date(2008, 11, 21))  # 17


def test_febrile_run_with_fevers_exactly_24h_apart_is_unbroken(runtime: Runtime) -> None:
    c = Case("run", temps=[(97, 38.5), (73, 38.5), (49, 38.5), (25, 38.5), (1, 38.5)])
    assert g(runtime, c, exposure_from(120)).fever_duration == timedelta(hours=96)


def test_zero_flow_does_not_hide_low_spo2(runtime: Runtime) -> None:
    r = g(runtime, Case("s", temps=[(1, 38.3)], spo2=[(1, 88)], flow=[(1, 0.0)]))
    assert any("SpO2" in w for w in r.warnings)


def test_drug_outside_the_products_premedication_interval(runtime: Runtime) -> None:
    assert runtime.rules.windows["blinatumomab"].premedication_hours == 1
    facts = Facts.build(
        [systolic(1, 84)],
        [],
        [
            given("dexamethasone", "corticosteroid", 12),  # 2 h before the dose
            given("blinatumomab", "bispecific", 10, None),
        ],
    )
    assert grade(facts, exposed(runtime, facts), AT, runtime.rules.grading).possible_grade is None


def test_default_premedication_interval_is_3h(runtime: Runtime) -> None:
    facts = Facts.build(
        [systolic(1, 84)],
        [],
        [given("dexamethasone", "corticosteroid", 12.5), given("elranatamab", "bispecific", 10)],
    )
    assert grade(facts, exposed(runtime, facts), AT, runtime.rules.grading).possible_grade == 2


def test_spo2_93_without_support_warns(runtime: Runtime) -> None:
    r = g(runtime, Case("s", temps=[(1, 38.3)], spo2=[(1, 93.5)]))
    assert any("SpO2" in w for w in r.warnings)


def test_fio2_22_documents_support(runtime: Runtime) -> None:
    f = Facts.build(
        [
            temperature(1, 38.3),
            measurement("spo2", 1, 88),
            measurement("inhaled_oxygen_concentration", 1, 21.5),
        ],
        [],
        [],
    )
    assert not any("SpO2" in w for w in grade(f, EXPOSURE, AT, runtime.rules.grading).warnings)


def test_a_point_inside_a_long_pressor_does_not_end_the_episode(runtime: Runtime) -> None:
    c = Case(
        "week on pressor",
        temps=[(150, 38.5)],
        meds=[("tocilizumab", "tocilizumab", 149)],
        pressors=[("norepinephrine", 200, None)],
    )
    assert g(runtime, c, exposure_from(250)).grade == 3


def test_masking_drug_exactly_at_the_infusion_starts_the_episode(runtime: Runtime) -> None:
    c = Case("d", temps=[(70, 38.5)], meds=[("dexamethasone", "corticosteroid", 72)])
    assert g(runtime, c).crs_episode_start == h(72)
