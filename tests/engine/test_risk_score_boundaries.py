"""The pre-infusion risk scores at their boundaries: each published cut-off and
CAR-HEMATOTOX band at its exact value and just past it, a lab at the time point and exactly
at its maximum age, lymphodepletion exactly at the interval before the infusion, and no
division by a platelet count of zero (found unpinned by mutation testing)."""

from __future__ import annotations

from cds.engine.facts import Facts, Measurement
from cds.engine.risk_scores import (
    RiskAssessment,
    RiskScore,
    RiskScoreRules,
    ScoreInput,
    compute,
    risk_scores,
)
from cds.runtime import Runtime
from tests.factories import AT, given, h

# A chart's labs in the units the facts keep them in (canonical units)
UNITS = {
    "ldh": "U/L",
    "creatinine": "mg/dL",
    "platelets": "10*9/L",
    "crp": "mg/L",
    "ferritin": "ng/mL",
    "hemoglobin": "g/dL",
    "anc": "10*9/L",
}
LABS = {
    "ldh": 400.0,
    "creatinine": 1.0,
    "platelets": 150.0,
    "crp": 25.0,
    "ferritin": 800.0,
    "hemoglobin": 9.5,
    "anc": 1.5,
}
# CAR-HEMATOTOX 0 points on every input
NORMAL = {"anc": 2.0, "hemoglobin": 12.0, "platelets": 200.0, "crp": 10.0, "ferritin": 100.0}


def _rules(runtime: Runtime) -> RiskScoreRules:
    rules = runtime.rules.risk_scores
    assert rules is not None
    return rules


def _assessed(
    runtime: Runtime,
    lab_hours: float,
    ld_hours: float,
    infusion_hours: float = 24,
    labs: dict[str, float] | None = None,
) -> RiskAssessment:
    """The scores of a CAR-T patient infused `infusion_hours` before AT, lymphodepleted
    `ld_hours` before AT, with `labs` (default LABS) charted `lab_hours` before AT."""
    at_lab = h(lab_hours)
    measurements = [
        Measurement(concept, value, UNITS[concept], at_lab, f"Observation/{concept}")
        for concept, value in (labs or LABS).items()
    ]
    facts = Facts.build(
        measurements,
        [],
        [
            given("axicabtagene-ciloleucel", "car-t", infusion_hours),
            given("fludarabine", "lymphodepletion", ld_hours),
        ],
    )
    crs = runtime.rules.crs.assess(facts, AT)
    assert crs is not None
    assessed = risk_scores(facts, crs.exposure, AT, _rules(runtime))
    assert assessed is not None
    return assessed


def _score(runtime: Runtime, name: str, labs: dict[str, float]) -> RiskScore:
    """Score `name` of labs charted at the start of lymphodepletion."""
    assessed = _assessed(runtime, 144, 144, labs=labs)
    return next(s for s in assessed.scores if s.score == name)


def _hematotox(runtime: Runtime, **changes: float) -> float | None:
    return _score(runtime, "CAR-HEMATOTOX", {**NORMAL, **changes}).value


def test_easix_is_high_only_above_4_67(runtime: Runtime) -> None:
    at_cutoff = _score(runtime, "EASIX", {"ldh": 467, "creatinine": 1.0, "platelets": 100})
    above = _score(runtime, "EASIX", {"ldh": 467.5, "creatinine": 1.0, "platelets": 100})
    assert (at_cutoff.value, at_cutoff.category) == (4.67, "low")
    assert above.category == "high"


def test_hematotox_anc_band(runtime: Runtime) -> None:
    assert _hematotox(runtime, anc=1.2) == 0 and _hematotox(runtime, anc=1.25) == 0
    assert _hematotox(runtime, anc=1.19) == 1


def test_hematotox_hemoglobin_band(runtime: Runtime) -> None:
    assert _hematotox(runtime, hemoglobin=9.0) == 0 and _hematotox(runtime, hemoglobin=8.95) == 1


def test_hematotox_platelet_bands(runtime: Runtime) -> None:
    assert _hematotox(runtime, platelets=74.5) == 2
    assert _hematotox(runtime, platelets=75) == 1 and _hematotox(runtime, platelets=75.5) == 1
    assert _hematotox(runtime, platelets=175) == 1 and _hematotox(runtime, platelets=175.5) == 0


def test_hematotox_crp_band(runtime: Runtime) -> None:
    # CRP kept in mg/L, the score's cut-off in mg/dL: 30 mg/L = 3.0 mg/dL
    assert _hematotox(runtime, crp=30) == 1 and _hematotox(runtime, crp=29.5) == 0
    assert _hematotox(runtime, crp=30.5) == 1


def test_hematotox_ferritin_bands(runtime: Runtime) -> None:
    assert _hematotox(runtime, ferritin=2000) == 1 and _hematotox(runtime, ferritin=2000.5) == 2
    assert _hematotox(runtime, ferritin=650) == 1 and _hematotox(runtime, ferritin=649.5) == 0


def test_zero_platelets_give_no_easix_not_a_division_by_zero(runtime: Runtime) -> None:
    spec = next(s for s in _rules(runtime).scores if s.score == "EASIX")
    values = {"ldh": 400.0, "creatinine": 1.0, "platelets": 0.0}
    inputs = tuple(ScoreInput(i.concept, i.unit, "used", values[i.concept]) for i in spec.inputs())
    assert compute(spec, inputs) is None


def test_a_lab_at_the_start_of_lymphodepletion_is_used(runtime: Runtime) -> None:
    assert all(s.value is not None for s in _assessed(runtime, 144, 144).scores)


def test_a_lab_exactly_as_old_as_allowed_is_used(runtime: Runtime) -> None:
    max_age_h = _rules(runtime).max_age.total_seconds() / 3600
    assert max_age_h == 7 * 24
    assert all(s.value is not None for s in _assessed(runtime, 144 + max_age_h, 144).scores)
    assert all(s.value is not None for s in _assessed(runtime, 144 + 6.5 * 24, 144).scores)


def test_lymphodepletion_exactly_as_early_as_allowed_is_found(runtime: Runtime) -> None:
    within_h = _rules(runtime).lymphodepletion_within.total_seconds() / 3600
    assert within_h == 14 * 24
    assert _assessed(runtime, 24 + 15 * 24, 24 + within_h).lymphodepletion is not None
    assert _assessed(runtime, 24 + 14.5 * 24, 24 + 13.5 * 24).lymphodepletion is not None
