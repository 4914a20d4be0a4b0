"""Nothing recorded is not nothing present. No temperature is not "no fever": a patient
in a risk window with no temperature charted for longer than the data-gap limit
(rules/alerting.yaml `watch.temperature_gap_hours`, 8 h; CRS_WATCH_TEMPERATURE_GAP_HOURS)
gets a warning on the grade and a CRS card that is never `info`; with no temperature in
the look-back window the card says fever cannot be assessed instead of "No fever". (A
new user's check found a patient on norepinephrine with no temperature on record shown
as "No fever ≥ 38.0 °C: CRS criteria not met now", `info`.) No blood pressure is not "no
hypotension": where hypotension would raise the grade (a fever, or fever masked), no
blood pressure nor vasopressor in the look-back window is a warning that the grade may
be understated."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cds import fhirbuild as b
from cds.engine.facts import Facts
from cds.engine.grading import Grading, grade
from cds.fhir.reading import ResourceCollector
from cds.runtime import Runtime
from tests.engine.test_grading import EXPOSURE, Case, facts_of
from tests.engine.test_grading_boundaries import exposure_from
from tests.factories import AT, h, monitor_json, settings, temperature

SECOND = 1 / 3600  # in hours
GAP_WARNING = "No temperature charted for"


def graded(runtime: Runtime, temps: list[tuple[float, float]], infused: float = 30) -> Grading:
    facts = Facts.build([temperature(t, c) for t, c in temps], [], [])
    return grade(facts, exposure_from(infused), AT, runtime.rules.grading)


def gap_warnings(g: Grading) -> list[str]:
    return [w for w in g.warnings if w.startswith(GAP_WARNING)]


def test_the_limit_is_the_cited_8_hours(runtime: Runtime) -> None:
    assert runtime.knowledge.alerting.watch is not None
    assert runtime.knowledge.alerting.watch.temperature_gap_hours == 8
    assert runtime.rules.grading.temperature_gap == timedelta(hours=8)


def test_the_latest_temperature_exactly_8_hours_ago_is_no_gap(runtime: Runtime) -> None:
    g = graded(runtime, [(20, 37.0), (8, 37.1)])
    assert not g.temperature_gap and gap_warnings(g) == []
    assert g.last_temperature_at == h(8)


def test_a_second_past_8_hours_is_a_gap(runtime: Runtime) -> None:
    g = graded(runtime, [(20, 37.0), (8 + SECOND, 37.1)])
    assert g.temperature_gap
    (warning,) = gap_warnings(g)
    assert warning.startswith(
        f"No temperature charted for 8 h (the latest at {h(8 + SECOND).isoformat()}), "
        "longer than the 8 h data-gap limit"
    )
    assert "cannot be judged on current data" in warning


def test_without_any_temperature_the_gap_counts_from_the_risk_period(runtime: Runtime) -> None:
    assert not graded(runtime, [], infused=8).temperature_gap  # just infused: not yet a gap
    g = graded(runtime, [], infused=8 + SECOND)
    assert g.temperature_gap and g.last_temperature_at is None
    (warning,) = gap_warnings(g)
    assert f"none since the risk period began, {h(8 + SECOND).isoformat()}" in warning


def test_a_temperature_before_the_risk_period_does_not_count(runtime: Runtime) -> None:
    g = graded(runtime, [(40, 37.0)], infused=30)
    assert g.temperature_gap and g.last_temperature_at is None


def test_a_gap_does_not_change_the_grade(runtime: Runtime) -> None:
    g = graded(runtime, [(12, 38.6)])  # a fever 12 h ago, nothing charted since
    assert g.grade == 1 and g.temperature_gap


def test_the_limit_is_an_institution_setting_shown_as_an_override(tmp_path: Path) -> None:
    rt = Runtime.load(settings(data_dir=tmp_path, watch_temperature_gap_hours=4))
    assert rt.rules.grading.temperature_gap == timedelta(hours=4)
    assert any(o.startswith("temperature data-gap limit set to 4 h") for o in rt.rules.overrides)
    facts = Facts.build([temperature(4 + SECOND, 37.0)], [], [])
    assert grade(facts, exposure_from(30), AT, rt.rules.grading).temperature_gap


# --- the card ----------------------------------------------------------------------

P = "pat-gap"


def card(runtime: Runtime, observations: list[dict[str, Any]], at: datetime = AT) -> Any:
    infusion = b.administration(P, h(30), text="Yescarta (axicabtagene ciloleucel)")
    pressor = b.administration(P, h(2), period=True, rxnorm="7512", text="norepinephrine")
    collected = ResourceCollector()
    collected.add_prefetch({"observations": b.searchset([*observations, infusion, pressor])})
    (found,) = monitor_json(runtime, collected, P, at)["cards"]
    return found


def test_no_temperature_at_all_is_a_warning_card_that_says_so(runtime: Runtime) -> None:
    c = card(runtime, [b.systolic(P, h(1), 82)])  # on norepinephrine, SBP 82, no temperature
    assert c["extension"]["crs"]["grade"] == 0
    assert c["indicator"] == "warning"
    assert c["summary"].startswith("NO TEMPERATURE for 30 h — CRS watch: day 1")
    assert "No temperature recorded in the look-back window" in c["detail"]
    assert "No fever" not in c["detail"]
    assert any(w.startswith(GAP_WARNING) for w in c["extension"]["crs"]["warnings"])


def test_a_gap_within_the_look_back_window_says_no_fever_and_warns(runtime: Runtime) -> None:
    c = card(runtime, [b.systolic(P, h(1), 82), b.temperature(P, h(10), 37.2)])
    assert c["indicator"] == "warning"
    assert c["summary"].startswith("NO TEMPERATURE for 10 h — ")
    assert "No fever ≥ 38.0 °C in the look-back window" in c["detail"]
    assert f"**Warning:** {GAP_WARNING} 10 h" in c["detail"]


def test_a_temperature_charted_in_time_keeps_the_card_quiet(runtime: Runtime) -> None:
    c = card(runtime, [b.systolic(P, h(1), 82), b.temperature(P, h(8), 37.2)])
    assert c["indicator"] == "info"
    assert c["summary"].startswith("CRS watch: day 1")
    assert GAP_WARNING not in c["detail"]
    assert c["extension"]["crs"]["warnings"] == []


# --- blood pressure ----------------------------------------------------------------

BP_WARNING = "No blood pressure recorded in the look-back window"


def bp_graded(runtime: Runtime, case: Case) -> Grading:
    return grade(facts_of(case), EXPOSURE, AT, runtime.rules.grading)


def bp_warned(g: Grading) -> bool:
    return any(w.startswith(BP_WARNING) for w in g.warnings)


def test_a_fever_without_any_blood_pressure_may_understate_the_grade(runtime: Runtime) -> None:
    g = bp_graded(runtime, Case("febrile, no BP", temps=[(1, 38.6)]))
    assert g.grade == 1 and g.blood_pressure_unknown and bp_warned(g)
    assert "the grade may be understated" in g.warnings[0]


def test_a_blood_pressure_at_the_start_of_the_look_back_counts(runtime: Runtime) -> None:
    lookback = runtime.rules.grading.lookback / timedelta(hours=1)
    at_start = Case("BP at the edge", temps=[(1, 38.6)], sbp=[(lookback, 120)])
    assert not bp_graded(runtime, at_start).blood_pressure_unknown
    before = Case("BP just before", temps=[(1, 38.6)], sbp=[(lookback + SECOND, 120)])
    assert bp_graded(runtime, before).blood_pressure_unknown


def test_a_map_or_a_running_vasopressor_is_enough(runtime: Runtime) -> None:
    assert not bp_graded(
        runtime, Case("MAP", temps=[(1, 38.6)], maps=[(2, 70)])
    ).blood_pressure_unknown
    pressor = Case("pressor", temps=[(1, 38.6)], pressors=[("norepinephrine", 30, None)])
    g = bp_graded(runtime, pressor)
    assert g.grade == 3 and not g.blood_pressure_unknown


def test_without_fever_a_missing_blood_pressure_cannot_change_the_grade(runtime: Runtime) -> None:
    g = bp_graded(runtime, Case("afebrile, no BP", temps=[(1, 37.0)]))
    assert g.grade == 0 and not g.blood_pressure_unknown and not bp_warned(g)


def test_fever_masked_without_blood_pressure_is_a_warning_card(runtime: Runtime) -> None:
    masked = Case(
        "masked, no BP",
        temps=[(30, 38.9), (2, 37.0)],  # the fever before the 24 h look-back
        meds=[("tocilizumab", "tocilizumab", 28)],
    )
    g = bp_graded(runtime, masked)
    assert g.grade == 0 and g.fever_masked_since is not None and g.blood_pressure_unknown
    infusion = b.administration(P, h(48), text="Yescarta (axicabtagene ciloleucel)")
    toci = b.administration(P, h(28), text="tocilizumab", dose=(560, "mg"))
    temps = [b.temperature(P, h(30), 38.9), b.temperature(P, h(2), 37.0)]
    collected = ResourceCollector()
    collected.add_prefetch({"observations": b.searchset([*temps, infusion, toci])})
    (c,) = monitor_json(runtime, collected, P, AT)["cards"]
    assert c["extension"]["crs"]["grade"] == 0
    assert c["indicator"] == "warning"
    assert (
        "No blood pressure recorded (hypotension cannot be assessed) and no hypoxia" in c["detail"]
    )
    with_bp = ResourceCollector()
    with_bp.add_prefetch(
        {"observations": b.searchset([*temps, b.systolic(P, h(2), 118), infusion, toci])}
    )
    (quiet,) = monitor_json(runtime, with_bp, P, AT)["cards"]
    assert quiet["indicator"] == "info"
    assert "No hypotension or hypoxia in the look-back window" in quiet["detail"]
