"""The engine's parameters: the cited rules, with the institution's overrides applied.

Kept apart from the engine so that the engine never reads settings, and apart from
the loader so that the rule files stay exactly as cited.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from cds.engine.activity import ActivityRules
from cds.engine.dosing import DosingRules
from cds.engine.exposure import TherapyWindow
from cds.engine.grading import GradeTable, GradingParameters
from cds.knowledge import Knowledge, KnowledgeError
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
    return EngineRules(
        grading,
        windows,
        continuation,
        dosing,
        overrides,
        knowledge.version,
        timedelta(hours=acknowledgement),
    )
