"""Pre-infusion risk scores against hand calculations, in both unit systems, with
missing and stale inputs (rules/risk_scores.yaml)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cds import fhirbuild as b
from cds.engine.facts import Facts
from cds.engine.risk_scores import RiskAssessment, risk_scores
from cds.evaluation import evaluate
from cds.fhir.reading import ResourceCollector
from cds.runtime import Runtime
from tests.factories import AT, given, h

P = "pat-risk"
INFUSION_H = 24  # infusion 24 h before AT
LD_H = 24 + 120  # lymphodepletion 5 days before the infusion


def labs_si(hours_before: float) -> list[dict[str, object]]:
    """Labs in SI-style units: CRP mg/L, creatinine umol/L, Hb g/L, counts /uL."""
    t = h(hours_before)
    return [
        b.lab(P, t, "2532-0", "LDH", 400, "U/L"),
        b.lab(P, t, "14682-9", "Creatinine", 88.4, "umol/L"),
        b.lab(P, t, "777-3", "Platelets", 150000, "/uL"),
        b.lab(P, t, "1988-5", "CRP", 25, "mg/L"),
        b.lab(P, t, "2276-4", "Ferritin", 800, "ng/mL"),
        b.lab(P, t, "718-7", "Hemoglobin", 95, "g/L"),
        b.lab(P, t, "751-8", "Neutrophils", 1500, "/uL"),
    ]


def labs_us(hours_before: float) -> list[dict[str, object]]:
    """CRP mg/dL, creatinine mg/dL, Hb g/dL, counts 10*3/uL."""
    t = h(hours_before)
    return [
        b.lab(P, t, "2532-0", "LDH", 400, "U/L"),
        b.lab(P, t, "2160-0", "Creatinine", 1.0, "mg/dL"),
        b.lab(P, t, "777-3", "Platelets", 150, "10*3/uL"),
        b.lab(P, t, "1988-5", "CRP", 2.5, "mg/dL"),
        b.lab(P, t, "2276-4", "Ferritin", 800, "ng/mL"),
        b.lab(P, t, "718-7", "Hemoglobin", 9.5, "g/dL"),
        b.lab(P, t, "751-8", "Neutrophils", 1.5, "10*3/uL"),
    ]


def assess(runtime: Runtime, resources: list[dict[str, object]], ld: bool = True) -> RiskAssessment:
    meds = [b.administration(P, h(INFUSION_H), text="Yescarta (axicabtagene ciloleucel)")]
    if ld:
        meds.append(b.administration(P, h(LD_H), text="fludarabine 30 mg/m2"))
    collected = ResourceCollector()
    collected.add_prefetch({"observations": b.searchset(resources + meds)})
    evaluation = evaluate(runtime, collected, P, AT)
    assert not evaluation.issues, evaluation.issues
    assert evaluation.risk is not None
    return evaluation.risk


def by_score(risk: RiskAssessment) -> dict[str, tuple[float | None, str | None]]:
    return {s.score: (s.value, s.category) for s in risk.scores}


# creatinine 88.4 umol/L = 88.4 x 113.12 / 10,000 = 0.99998 mg/dL (1 mg/dL = 88.40 umol/L)
@pytest.mark.parametrize(
    ("labs", "easix_f"), [(labs_si, 2133.29), (labs_us, 2133.33)], ids=["SI units", "US units"]
)
def test_hand_calculations_in_both_unit_systems(
    runtime: Runtime, labs: object, easix_f: float
) -> None:
    assert callable(labs)
    risk = assess(runtime, labs(LD_H + 48))
    scores = by_score(risk)
    # EASIX = 400 x 1.0 / 150 = 2.67 (<= 4.67: low)
    assert scores["EASIX"] == (2.67, "low")
    # m-EASIX = 400 x 2.5 (mg/dL) / 150 = 6.67 (no cut-off encoded)
    assert scores["m-EASIX"] == (6.67, None)
    # EASIX-F = 400 x creatinine x 800 / 150: 2133.33 (mg/dL), 2133.29 (from 88.4 umol/L)
    assert scores["EASIX-F"] == (easix_f, None)
    # CAR-HEMATOTOX: ANC 1.5 -> 0; Hb 9.5 -> 0; platelets 150 -> 1; CRP 2.5 -> 0;
    # ferritin 800 -> 1: 2 = high
    assert scores["CAR-HEMATOTOX"] == (2.0, "high")
    assert risk.time_point == h(LD_H)


def test_high_easix_and_hematotox(runtime: Runtime) -> None:
    t = h(LD_H + 10)
    labs = [
        b.lab(P, t, "2532-0", "LDH", 620, "U/L"),
        b.lab(P, t, "2160-0", "Creatinine", 1.1, "mg/dL"),
        b.lab(P, t, "777-3", "Platelets", 60, "10*3/uL"),
        b.lab(P, t, "1988-5", "CRP", 85, "mg/L"),
        b.lab(P, t, "2276-4", "Ferritin", 2400, "ng/mL"),
        b.lab(P, t, "718-7", "Hemoglobin", 8.6, "g/dL"),
        b.lab(P, t, "751-8", "Neutrophils", 1.0, "10*3/uL"),
    ]
    scores = by_score(assess(runtime, labs))
    assert scores["EASIX"] == (11.37, "high")  # 620 x 1.1 / 60
    assert scores["m-EASIX"] == (87.83, None)  # 620 x 8.5 / 60
    assert scores["CAR-HEMATOTOX"] == (7.0, "high")  # 1 + 1 + 2 + 1 + 2


def test_a_missing_input_leaves_no_value_and_names_it(runtime: Runtime) -> None:
    labs = [r for r in labs_us(LD_H + 48) if r["code"]["coding"][0]["code"] != "2532-0"]  # type: ignore[index]
    risk = assess(runtime, labs)
    easix = next(s for s in risk.scores if s.score == "EASIX")
    assert easix.value is None and easix.category is None and easix.missing == ["ldh"]
    hematotox = next(s for s in risk.scores if s.score == "CAR-HEMATOTOX")
    assert hematotox.value is not None  # does not read LDH


def test_a_stale_input_is_not_used(runtime: Runtime) -> None:
    max_age = runtime.rules.risk_scores.max_age  # type: ignore[union-attr]
    old = LD_H + max_age / timedelta(hours=1) + 24
    risk = assess(runtime, labs_us(old))
    assert all(s.value is None for s in risk.scores)
    assert all(s.stale for s in risk.scores)


def test_labs_after_lymphodepletion_are_not_the_baseline(runtime: Runtime) -> None:
    risk = assess(runtime, labs_us(LD_H - 24))
    assert all(s.value is None and s.missing for s in risk.scores)


def test_without_lymphodepletion_no_score_is_computed(runtime: Runtime) -> None:
    risk = assess(runtime, labs_us(LD_H + 48), ld=False)
    assert risk.lymphodepletion is None
    assert all(s.value is None for s in risk.scores)


def test_nothing_to_show_without_lymphodepletion_or_labs(runtime: Runtime) -> None:
    rules = runtime.rules.risk_scores
    assert rules is not None
    car_t = given("axicabtagene-ciloleucel", "car-t", INFUSION_H)
    facts = Facts.build([], [], [car_t])
    exposure = runtime.rules.crs.assess(facts, AT)
    assert exposure is not None
    assert risk_scores(facts, exposure.exposure, AT, rules) is None


def test_the_card_section_and_extension(runtime: Runtime) -> None:
    from tests.factories import monitor_json

    meds = [
        b.administration(P, h(INFUSION_H), text="Yescarta (axicabtagene ciloleucel)"),
        b.administration(P, h(LD_H), text="cyclophosphamide 500 mg/m2"),
    ]
    collected = ResourceCollector()
    afebrile = [b.temperature(P, h(1), 37.0)]  # charted: no data gap to warn of
    collected.add_prefetch({"observations": b.searchset(labs_si(LD_H + 48) + meds + afebrile)})
    (card,) = monitor_json(runtime, collected, P, AT)["cards"]
    assert "Pre-infusion risk scores" in card["detail"] and "never a grade" in card["detail"]
    assert card["indicator"] == "info"  # never an alarm
    risk = {r["score"]: r for r in card["extension"]["crs"]["riskScores"]}
    assert risk["EASIX"]["value"] == 2.67 and risk["EASIX"]["cutoff"].startswith("> 4.67")
    ldh = next(i for i in risk["EASIX"]["inputs"] if i["concept"] == "ldh")
    assert ldh == {
        "concept": "ldh",
        "unit": "U/L",
        "status": "used",
        "value": 400.0,
        "at": h(LD_H + 48).isoformat(),
        "source": ldh["source"],
    }
    assert risk["CAR-HEMATOTOX"]["verification"] == "unconfirmed"


def test_pre_infusion_card_after_lymphodepletion(runtime: Runtime) -> None:
    from tests.factories import monitor_json

    collected = ResourceCollector()
    ld = b.administration(P, h(48), text="fludarabine 30 mg/m2")
    collected.add_prefetch({"observations": b.searchset([*labs_us(72), ld])})
    (card,) = monitor_json(runtime, collected, P, AT)["cards"]
    assert card["indicator"] == "info"
    assert card["summary"].startswith("Pre-infusion risk scores after lymphodepletion: EASIX 2.67")
    assert {r["score"] for r in card["extension"]["riskScores"]} == {
        "EASIX",
        "m-EASIX",
        "EASIX-F",
        "CAR-HEMATOTOX",
    }
    # once the CAR-T is given, the scores move to the CRS card
    infused = b.administration(P, h(2), text="Yescarta (axicabtagene ciloleucel)")
    collected = ResourceCollector()
    collected.add_prefetch({"observations": b.searchset([*labs_us(72), ld, infused])})
    (card,) = monitor_json(runtime, collected, P, AT)["cards"]
    assert card["extension"]["crs"]["riskScores"]
