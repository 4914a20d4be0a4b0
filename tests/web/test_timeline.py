"""The timeline's grade band is the engine's: at every instant where it can change (and
between them), the band says what `Crs.assess` says on the full facts; the chart's
values, thresholds and times in the display zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bench.course import crs_course
from cds.engine.facts import Facts
from cds.fhir.normalise import Normaliser
from cds.fhir.reading import ResourceCollector
from cds.runtime import Runtime
from cds.scenarios.library import Scenario, library
from cds.web.census import CensusRow, GradePoint, Reading, ordered
from cds.web.timeline import EPSILON, build, grade_series
from tests.factories import AT

ZURICH = ZoneInfo("Europe/Zurich")


def _facts(runtime: Runtime, prefetch: dict[str, Any], patient: str) -> Facts:
    collected = ResourceCollector()
    collected.add_prefetch(prefetch)
    return Normaliser(runtime.knowledge, patient, None).normalise(collected).facts


def _check_band(runtime: Runtime, facts: Facts, at: datetime) -> int:
    """Every span's grade is the engine's at its start, just before its end and at the
    midpoint; returns how many instants were compared."""
    crs = runtime.rules.crs
    assessed = crs.assess(facts, at)
    assert assessed is not None
    spans = grade_series(crs, facts, assessed.exposure.risk_period_start, at)
    assert spans[0].start == assessed.exposure.risk_period_start and spans[-1].end == at
    compared = 0
    for span in spans:
        for moment in (span.start, span.start + (span.end - span.start) / 2, span.end - EPSILON):
            if moment < span.start:
                continue
            now = crs.assess(facts, moment)
            grade = now.result.grade if now is not None else None
            possible = now.result.possible_grade if now is not None else None
            assert (grade, possible) == (span.grade, span.possible), (moment, span)
            compared += 1
    for before, after in pairwise(spans):
        assert before.end == after.start
        assert (before.grade, before.possible) != (after.grade, after.possible)
    return compared


@pytest.mark.parametrize(
    "scenario",
    [s for s in library().values() if s.service == "crs-monitor"],
    ids=lambda s: s.id,
)
def test_the_band_is_the_engines_grade_for_every_scenario(
    runtime: Runtime, scenario: Scenario
) -> None:
    facts = _facts(runtime, scenario.prefetch(AT), scenario.patient_id)
    if runtime.rules.crs.assess(facts, AT) is None:
        pytest.skip("outside every risk window at the anchor: no timeline")
    assert _check_band(runtime, facts, AT) > 0


@pytest.mark.parametrize("days,severity", [(6, 3), (9, 2), (5, 1)])
def test_the_band_is_the_engines_grade_for_a_dense_course(
    runtime: Runtime, days: int, severity: int
) -> None:
    course = crs_course("p", AT - timedelta(days=days), days=days, crs_day=2, severity=severity)
    facts = _facts(runtime, course.prefetch(), "p")
    assert _check_band(runtime, facts, course.evaluated_at) > 0


def test_the_grade_rises_and_falls_with_the_course(runtime: Runtime) -> None:
    course = crs_course("p", AT - timedelta(days=12), days=12, crs_day=3, severity=3)
    facts = _facts(runtime, course.prefetch(), "p")
    timeline = build(runtime.rules.crs, facts, course.evaluated_at, ZURICH)
    assert timeline is not None
    assert [b.grade for b in timeline.chart.grades] == [0, 1, 2, 3, 2, 1, 0]
    assert timeline.max_grade == 3 and timeline.grade == 0
    kinds = [d.kind for d in timeline.chart.doses]
    assert kinds == ["exposure", "antipyretic", "tocilizumab", "corticosteroid"]
    (pressor,) = timeline.chart.pressors
    assert pressor.label.startswith("norepinephrine") and not pressor.running
    assert timeline.points == course.points


def test_times_are_shown_in_the_zone_with_the_offset(runtime: Runtime) -> None:
    # a course across the end of summer time in Zurich (25 October 2026, 03:00 -> 02:00)
    start = datetime(2026, 10, 22, 6, 0, tzinfo=UTC)
    course = crs_course("p", start, days=5, crs_day=1, severity=2)
    facts = _facts(runtime, course.prefetch(), "p")
    timeline = build(runtime.rules.crs, facts, course.evaluated_at, ZURICH)
    assert timeline is not None
    assert timeline.chart.offsets == "UTC+01:00 / UTC+02:00"
    assert timeline.chart.exposureAt == "2026-10-22 08:00:00"  # 06:00Z in summer time
    assert timeline.grade_rows[0].at == "2026-10-22 08:00 +02:00"
    assert timeline.grade_rows[-1].what.endswith("+01:00")


def _row(patient: str, grade: int, possible: int | None, last_temp: datetime | None) -> CensusRow:
    return CensusRow(
        patient=patient,
        product="axicabtagene ciloleucel",
        exposure_at=AT - timedelta(days=3),
        window_ends=AT + timedelta(days=10),
        evaluated_at=AT,
        grade=grade,
        max_grade=grade,
        possible_grade=possible,
        last_temperature=Reading("37.0 °C", last_temp) if last_temp else None,
        last_systolic=None,
        last_oxygen=None,
        data_gap=False,
        last_notified_at=None,
        history=(GradePoint(AT, grade, possible),),
        record_id=None,
    )


def test_the_watch_list_order_grade_then_possible_grade_then_time_since_temperature() -> None:
    rows = [
        _row("recent-g1", 1, None, AT - timedelta(hours=1)),
        _row("g0-possible-2", 0, 2, AT - timedelta(hours=1)),
        _row("old-g1", 1, None, AT - timedelta(hours=9)),
        _row("g3", 3, None, AT),
        _row("g0", 0, None, AT - timedelta(hours=2)),
        _row("never-g1", 1, None, None),
        _row("g1-possible-3", 1, 3, AT),
    ]
    assert [r.patient for r in ordered(rows)] == [
        "g3",
        "g1-possible-3",
        "never-g1",
        "old-g1",
        "recent-g1",
        "g0-possible-2",
        "g0",
    ]
