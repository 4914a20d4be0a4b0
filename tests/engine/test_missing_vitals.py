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
from tests.factories import AT, given, h, monitor_json, settings, temperature

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
        "No temperature charted for more than the 8 h data-gap limit (the latest at "
        f"{h(8 + SECOND).isoformat()}, 8 h ago)"
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
    # on norepinephrine, SBP 82, no temperature: if febrile this is grade 3
    c = card(runtime, [b.systolic(P, h(1), 82)])
    crs = c["extension"]["crs"]
    assert crs["grade"] == 0 and crs["gradeIfFebrile"] == 3
    assert c["indicator"] == "critical"  # as grade 3 would be
    assert c["summary"].startswith("CRS grade 3 if febrile — no temperature for 30 h: day 1")
    assert "No temperature recorded in the look-back window" in c["detail"]
    assert "No fever" not in c["detail"]
    assert any(w.startswith(GAP_WARNING) for w in crs["warnings"])
    assert any(
        w.startswith("No current temperature (none recorded in the look-back window), with ")
        and "if the patient is febrile this is CRS grade 3" in w
        for w in crs["warnings"]
    )


def test_an_overdue_temperature_with_crs_findings_is_the_grade_if_febrile(
    runtime: Runtime,
) -> None:
    c = card(runtime, [b.systolic(P, h(1), 82), b.temperature(P, h(10), 37.2)])
    assert c["indicator"] == "critical"
    assert c["summary"].startswith("CRS grade 3 if febrile — no temperature for 10 h: ")
    assert "but the latest temperature is 10 h old: CRS cannot be excluded now" in c["detail"]
    assert "No current temperature (the latest 10 h ago), with " in c["detail"]
    assert f"**Warning:** {GAP_WARNING} more than the 8 h" in c["detail"]


def test_an_overdue_temperature_alone_prefixes_the_grade_0_card(runtime: Runtime) -> None:
    infusion = b.administration(P, h(30), text="Yescarta (axicabtagene ciloleucel)")
    collected = ResourceCollector()
    collected.add_prefetch(
        {
            "observations": b.searchset(
                [b.temperature(P, h(10), 37.2), b.systolic(P, h(1), 120), infusion]
            )
        }
    )
    (c,) = monitor_json(runtime, collected, P, AT)["cards"]
    assert c["indicator"] == "warning"
    assert c["summary"].startswith("NO TEMPERATURE for 10 h — CRS watch: day 1")


def test_within_the_first_8_hours_findings_without_temperature_still_alert(
    runtime: Runtime,
) -> None:
    # (the gap is not yet due, but the vasopressor is: the review's first case)
    infusion = b.administration(P, h(6), text="Yescarta (axicabtagene ciloleucel)")
    pressor = b.administration(P, h(2), period=True, rxnorm="7512", text="norepinephrine")
    collected = ResourceCollector()
    collected.add_prefetch(
        {"observations": b.searchset([b.systolic(P, h(1), 82), infusion, pressor])}
    )
    (c,) = monitor_json(runtime, collected, P, AT)["cards"]
    assert c["indicator"] == "critical"
    assert c["summary"].startswith("CRS grade 3 if febrile — no temperature for 6 h: day 0")


def test_a_temperature_charted_in_time_keeps_the_card_quiet(runtime: Runtime) -> None:
    c = card(runtime, [b.systolic(P, h(1), 82), b.temperature(P, h(8), 37.2)])
    assert c["indicator"] == "info"
    assert c["summary"].startswith("CRS watch: day 1")
    assert "gradeIfFebrile" not in c["extension"]["crs"]
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


def test_a_map_counts_only_where_the_rules_grade_by_map(runtime: Runtime, tmp_path: Path) -> None:
    # the cited default grades by systolic only (map_below_mmhg: null): a MAP alone says
    # nothing of the hypotension graded, so the blood pressure is still unknown
    febrile_map = Case("MAP", temps=[(1, 38.6)], maps=[(2, 55)])
    assert runtime.rules.grading.map_below_mmhg is None
    assert bp_graded(runtime, febrile_map).blood_pressure_unknown
    by_map = Runtime.load(settings(data_dir=tmp_path, hypotension_map_below_mmhg=65))
    g = grade(facts_of(febrile_map), EXPOSURE, AT, by_map.rules.grading)
    assert not g.blood_pressure_unknown and g.grade == 2


def test_a_running_vasopressor_is_enough(runtime: Runtime) -> None:
    pressor = Case("pressor", temps=[(1, 38.6)], pressors=[("norepinephrine", 30, None)])
    g = bp_graded(runtime, pressor)
    assert g.grade == 3 and not g.blood_pressure_unknown


def test_from_the_hypotension_grade_up_a_blood_pressure_cannot_raise_it(runtime: Runtime) -> None:
    g = bp_graded(runtime, Case("high flow", temps=[(1, 38.6)], devices=[(1, "high-flow")]))
    assert g.grade >= runtime.rules.grading.grades.hypotension
    assert not g.blood_pressure_unknown and not bp_warned(g)


def test_premedication_without_blood_pressure_is_a_warning(runtime: Runtime) -> None:
    # teclistamab with dexamethasone before it, afebrile, no BP: with SBP 82 this would be
    # a possible grade 2, so a missing BP hides it (the review's third case)
    tec = given("teclistamab", "bispecific", 6)
    dex = given("dexamethasone", "corticosteroid", 7)
    facts = Facts.build([temperature(1, 37.0)], [], [dex, tec])
    exposure = runtime.rules.crs.assess(facts, AT)
    assert exposure is not None
    g = grade(facts, exposure.exposure, AT, runtime.rules.grading)
    assert g.grade == 0 and g.blood_pressure_unknown and bp_warned(g)


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


# --- ICANS: no assessment is not "no finding" ----------------------------------------


def test_icans_seen_before_and_not_assessed_since_is_no_all_clear(runtime: Runtime) -> None:
    from tests.engine.test_icans import icans, score

    lookback = runtime.rules.icans.parameters.lookback / timedelta(hours=1)  # type: ignore[union-attr]
    stale = icans(runtime, [score("ice_score", lookback + SECOND, 7)])  # grade 1, then nothing
    assert stale.grade == 0 and stale.max_grade == 1 and not stale.assessed_now
    (warning,) = stale.warnings
    assert warning.startswith("No ICANS assessment (ICE or CAPD score, neurological finding)")
    assert "not a resolution" in warning
    edge = icans(runtime, [score("ice_score", lookback, 7)])  # at the look-back's edge
    assert edge.grade == 1 and edge.assessed_now and edge.warnings == []
    normal = icans(runtime, [score("ice_score", lookback + SECOND, 10)])  # never ICANS
    assert not normal.assessed_now and normal.warnings == []


def test_the_icans_card_says_not_assessed_and_warns(runtime: Runtime) -> None:
    infusion = b.administration(P, h(72), text="Yescarta (axicabtagene ciloleucel)")
    ice = b.ice_score(P, h(30), 7)
    temp = b.temperature(P, h(1), 37.0)
    collected = ResourceCollector()
    collected.add_prefetch({"observations": b.searchset([ice, temp, infusion])})
    cards = monitor_json(runtime, collected, P, AT)["cards"]
    (c,) = [c for c in cards if "icans" in c["extension"]]
    assert c["indicator"] == "warning"
    assert c["summary"].startswith("ICANS: not assessed in the look-back: day 3")
    assert "(max grade 1 since exposure)" in c["summary"]
    assert "No ICANS assessment charted in the look-back window" in c["detail"]
