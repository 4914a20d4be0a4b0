"""The engine's parameters: the cited rules, with the institution's overrides applied.

Kept apart from the engine so that the engine never reads settings, and apart from
the loader so that the rule files stay exactly as cited.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property

from cds.engine.activity import ActivityRules
from cds.engine.dosing import DosingRules
from cds.engine.exposure import TherapyWindow
from cds.engine.grading import GradeTable, GradingParameters
from cds.engine.icans import IcansParameters, ScoreBand
from cds.engine.risk_scores import InputSpec, RiskScoreRules, ScoreSpec
from cds.engine.syndrome import Crs, Icans
from cds.knowledge import Knowledge, KnowledgeError, RiskScoreRule, ScoreInput
from cds.settings import Settings

DEFAULT_TOLERANCE_PERCENT = 10.0  # issue #3: ±10 %, an institution setting


@dataclass(frozen=True)
class EngineRules:
    """What one evaluation needs: grading thresholds, risk windows, and what differs."""

    grading: GradingParameters
    windows: dict[str, TherapyWindow]
    continuation: ActivityRules
    dosing: DosingRules
    overrides: list[str]  # human text for each setting that replaces a cited default
    version: str
    acknowledgement: timedelta  # how long an acted-on CRS card is shown quietly
    icans: Icans | None = None
    risk_scores: RiskScoreRules | None = None

    @cached_property
    def crs(self) -> Crs:
        """CRS behind the syndrome contract (the same parameters and windows)."""
        return Crs(self.grading, self.windows, self.continuation)


def engine_rules(knowledge: Knowledge, settings: Settings) -> EngineRules:
    """Apply the settings' clinical overrides to the loaded knowledge."""
    a = knowledge.astct
    overrides: list[str] = []

    def pick(name: str, cited: float | None, override: float | None, unit: str) -> float | None:
        if override is None or override == cited:
            return cited
        overrides.append(f"{name} set to {override:g} {unit} (cited default {cited})")
        return override

    systolic = pick(
        "hypotension systolic threshold",
        a.hypotension.systolic_below_mmhg,
        settings.hypotension_systolic_below_mmhg,
        "mmHg",
    )
    map_below = pick(
        "hypotension MAP threshold",
        a.hypotension.map_below_mmhg,
        settings.hypotension_map_below_mmhg,
        "mmHg",
    )
    lookback = pick("look-back window", a.lookback.hours, settings.lookback_hours, "h")
    episode_gap = pick("CRS episode gap", a.episode_gap.hours, settings.episode_gap_hours, "h")
    spo2 = pick(
        "SpO2 warning threshold",
        a.spo2_warning.below_percent,
        settings.spo2_warning_below_percent,
        "%",
    )
    assert systolic is not None and lookback is not None and spo2 is not None
    assert episode_gap is not None
    watch = knowledge.alerting.watch
    temperature_gap = pick(
        "temperature data-gap limit",
        watch.temperature_gap_hours if watch is not None else None,
        settings.watch_temperature_gap_hours,
        "h",
    )

    default_premedication = pick(
        "premedication interval before a dose",
        a.premedication_masking.default_before_dose_hours,
        settings.premedication_hours,
        "h",
    )
    windows: dict[str, TherapyWindow] = {}
    for product, therapy in knowledge.therapies.items():
        hours = float(therapy.window_hours)
        hours = (
            pick(
                f"risk window of {therapy.display}", hours, settings.window_hours.get(product), "h"
            )
            or hours
        )
        # The setting overrides every product; else the label's own timing, else the default.
        premedication = (
            settings.premedication_hours
            or (therapy.premedication.before_dose_hours if therapy.premedication else None)
            or default_premedication
        )
        assert premedication is not None
        windows[product] = TherapyWindow(
            product, therapy.display, therapy.kind, hours, premedication
        )
    unknown = sorted(set(settings.window_hours) - set(knowledge.therapies))
    if unknown:
        raise KnowledgeError(
            f"setting CRS_WINDOW_HOURS: unknown product(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(knowledge.therapies))})"
        )

    grading = GradingParameters(
        grades=GradeTable(
            fever=a.grades.fever,
            hypotension=a.grades.hypotension_without_vasopressors,
            one_vasopressor=a.grades.one_vasopressor,
            multiple_vasopressors=a.grades.multiple_vasopressors,
        ),
        fever_min_celsius=a.fever.min_celsius,
        systolic_below_mmhg=systolic,
        map_below_mmhg=map_below,
        low_flow_max_l_per_min=a.oxygen.low_flow_max_l_per_min,
        grade_by_support={str(k): v for k, v in a.oxygen.grade_by_support.items()},
        vasopressors_not_counted=frozenset(a.vasopressors.not_counted_toward_multiple),
        masking_classes=frozenset(a.fever_masking.masking_classes),
        lookback=timedelta(hours=lookback),
        episode_gap=timedelta(hours=episode_gap),
        spo2_warning_below=spo2,
        room_air_fio2_percent=a.spo2_warning.room_air_fio2_percent,
        premedication_hours={p: w.premedication_hours for p, w in windows.items()},
        adult_from_age_years=a.hypotension.adult_from_age_years,
        adult_citation=a.hypotension.adult_citation,
        temperature_gap=timedelta(hours=temperature_gap) if temperature_gap else None,
    )
    t = knowledge.tocilizumab
    dosing = DosingRules(
        weight_threshold_kg=t.weight_threshold_kg,
        mg_per_kg_at_or_above=t.dose_mg_per_kg_at_or_above,
        mg_per_kg_below=t.dose_mg_per_kg_below,
        max_dose_mg=t.max_dose_mg,
        min_interval=timedelta(hours=t.min_interval_hours),
        max_doses_per_24h=t.max_doses_per_24h,
        max_doses_total=t.max_doses_total,
        infusion_minutes=t.infusion_minutes,
        tolerance_fraction=settings.tocilizumab_dose_tolerance_percent / 100,
        rounding_mg=settings.tocilizumab_rounding_mg,
        indication_min_grade=t.indication_min_grade,
        persistent_fever=timedelta(hours=t.grade1_persistent_fever_hours),
    )
    if settings.tocilizumab_dose_tolerance_percent != DEFAULT_TOLERANCE_PERCENT:
        overrides.append(
            f"tocilizumab dose tolerance ±{settings.tocilizumab_dose_tolerance_percent:g} % "
            f"(default ±{DEFAULT_TOLERANCE_PERCENT:g} %)"
        )
    if settings.tocilizumab_rounding_mg:
        overrides.append(
            f"tocilizumab dose rounded to the nearest {settings.tocilizumab_rounding_mg:g} mg "
            "(default: no rounding)"
        )
    acknowledgement = pick(
        "acknowledgement period",
        knowledge.alerting.acknowledgement.hours,
        settings.acknowledgement_hours,
        "h",
    )
    assert acknowledgement is not None
    continuation = grading.activity()
    icans = _icans(knowledge, settings, windows, pick)
    risk = _risk_scores(knowledge)
    return EngineRules(
        grading,
        windows,
        continuation,
        dosing,
        overrides,
        knowledge.version,
        timedelta(hours=acknowledgement),
        icans,
        risk,
    )


def _icans(
    knowledge: Knowledge,
    settings: Settings,
    crs_windows: dict[str, TherapyWindow],
    pick: Callable[[str, float | None, float | None, str], float | None],
) -> Icans:
    """ICANS parameters and windows (rules/icans.yaml), with the settings' overrides."""
    rules = knowledge.icans
    assert rules is not None
    lookback = pick(
        "ICANS look-back window", rules.lookback.hours, settings.icans_lookback_hours, "h"
    )
    assert lookback is not None
    labelled = {w.product: float(w.window_hours) for w in rules.windows}
    windows: dict[str, TherapyWindow] = {}
    for product, crs in crs_windows.items():
        hours = labelled.get(product)
        if hours is None:
            hours = crs.window_hours
            if crs.kind != "bispecific":
                hours = max(hours, float(rules.default_windows.cell_therapy_min_hours))
        hours = (
            pick(
                f"ICANS window of {crs.display}",
                hours,
                settings.icans_window_hours.get(product),
                "h",
            )
            or hours
        )
        windows[product] = TherapyWindow(
            product, crs.display, crs.kind, hours, crs.premedication_hours
        )
    unknown = sorted(set(settings.icans_window_hours) - set(crs_windows))
    if unknown:
        raise KnowledgeError(
            f"setting CRS_ICANS_WINDOW_HOURS: unknown product(s) {', '.join(unknown)} "
            f"(known: {', '.join(sorted(crs_windows))})"
        )
    parameters = IcansParameters(
        ice_bands=tuple(ScoreBand(b.min, b.max, b.grade) for b in rules.ice.grade_by_total),
        ice_max=rules.ice.max_total,
        capd_below_age=rules.capd.below_age_years,
        capd_delirium_from=rules.capd.delirium_from,
        capd_delirium_grade=rules.capd.delirium_grade,
        capd_grade1_from=rules.capd.grade1_from,
        level_grades={
            "consciousness": dict(rules.levels.consciousness),
            "seizure": dict(rules.levels.seizure),
            "motor": dict(rules.levels.motor),
            "icp": dict(rules.levels.icp),
        },
        lookback=timedelta(hours=lookback),
    )
    return Icans(parameters, windows)


def _spec_input(item: ScoreInput) -> InputSpec:
    bands = tuple((b.op, b.value, b.points) for b in getattr(item, "bands", ()))
    return InputSpec(item.concept, item.unit, item.factor, bands)


def _score_spec(rule: RiskScoreRule) -> ScoreSpec:
    return ScoreSpec(
        score=rule.score,
        kind=rule.kind,
        formula=rule.formula,
        numerator=tuple(_spec_input(i) for i in rule.numerator),
        denominator=_spec_input(rule.denominator) if rule.denominator is not None else None,
        points=tuple(_spec_input(i) for i in rule.points),
        categories=tuple((c.op, c.value, c.category) for c in rule.categories),
        default_category=rule.default_category,
        cutoff=rule.cutoff,
        predicts=rule.predicts,
        cohort=f"{rule.cohort.study}; n = {rule.cohort.n}; AUC {rule.cohort.auc}",
        citation=rule.citation,
        confirmed=rule.verification.status == "confirmed",
    )


def _risk_scores(knowledge: Knowledge) -> RiskScoreRules:
    rules = knowledge.risk_scores
    assert rules is not None
    return RiskScoreRules(
        scores=tuple(_score_spec(r) for r in rules.scores),
        lymphodepletion_within=timedelta(days=rules.time_point.lymphodepletion_within_days),
        max_age=timedelta(days=rules.time_point.max_age_days),
    )
