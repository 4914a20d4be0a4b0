"""patient-view `crs-monitor`: is the patient in a CRS risk window, and at which grade?"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from cds import cards
from cds.engine.dosing import dose_history, latest_weight, recommended_dose
from cds.engine.exposure import Exposure, find_exposure
from cds.engine.grading import Grading, grade
from cds.fhir.normalise import Normalised, Normaliser
from cds.fhir.patient import age_in_years
from cds.fhir.reading import ResourceCollector
from cds.protocol import HookRequest, PatientContext, parse_context
from cds.runtime import Runtime
from cds.services.base import PATIENT_DATA_REQUIRED, ServiceDefinition, patient_data_prefetch
from cds.tocilizumab_order import dose_text, new_order

SERVICE_ID = "crs-monitor"


@dataclass(frozen=True)
class MonitorEvaluation:
    """What the monitor found for one patient at one time."""

    at: datetime
    normalised: Normalised
    exposure: Exposure | None
    grading: Grading | None


def evaluate(
    runtime: Runtime, collected: ResourceCollector, patient_id: str | None, at: datetime
) -> MonitorEvaluation:
    """Normalise the data, find the exposure and grade CRS at `at`."""
    normalised = Normaliser(runtime.knowledge, patient_id, runtime.settings.assume_tz).normalise(
        collected
    )
    exposure = find_exposure(
        normalised.facts, runtime.rules.windows, at, runtime.rules.continuation
    )
    grading = (
        grade(normalised.facts, exposure, at, runtime.rules.grading)
        if exposure is not None
        else None
    )
    hypotension = runtime.knowledge.astct.hypotension
    age = age_in_years(collected, patient_id, at)
    if grading is not None and age is not None and age < hypotension.adult_from_age_years:
        grading = replace(
            grading,
            warnings=[
                *grading.warnings,
                (
                    f"Paediatric patient (age {age}): the hypotension definition in use "
                    f"({runtime.rules.grading.hypotension_definition()}) is an adult threshold; "
                    "judge hypotension by age-specific norms. "
                    f"({hypotension.adult_citation.strip()})"
                ),
            ],
        )
    return MonitorEvaluation(at, normalised, exposure, grading)


@dataclass(frozen=True)
class TocilizumabAdvice:
    """What the physician's card says about tocilizumab, and the order it offers."""

    sections: list[str]
    suggestions: list[dict[str, Any]]
    extension: dict[str, Any]


def tocilizumab_advice(
    runtime: Runtime,
    evaluation: MonitorEvaluation,
    patient_id: str | None,
    encounter_id: str | None = None,
) -> TocilizumabAdvice:
    """From grade 2 (or grade 1 with fever > 72 h): a dosed order, or why there is none."""
    g, exposure, at = evaluation.grading, evaluation.exposure, evaluation.at
    if g is None or exposure is None:
        return TocilizumabAdvice([], [], {})
    tz = runtime.knowledge.tocilizumab
    persistent = timedelta(hours=tz.grade1_persistent_fever_hours)
    long_fever = g.grade == 1 and g.fever_duration is not None and g.fever_duration > persistent
    steroid = cards.steroid_section(runtime.knowledge, g.grade) if g.grade >= 1 else None
    sections = [steroid] if steroid else []
    if not (g.grade >= 2 or long_fever):
        if g.grade == 1:
            sections.insert(
                0,
                f"Tocilizumab: consider if fever lasts more than "
                f"{tz.grade1_persistent_fever_hours:g} h "
                f"({tz.citations['grade1_persistent_fever_hours'].citation}).",
            )
        return TocilizumabAdvice(sections, [], {})
    facts = evaluation.normalised.facts
    rules = runtime.rules.dosing
    why = (
        f"grade {g.grade}"
        if g.grade >= 2
        else f"grade 1 with fever for more than {tz.grade1_persistent_fever_hours:g} h"
    )
    weight = latest_weight(facts, at)
    history = dose_history(facts, at, g.crs_episode_start or at, rules)
    ext: dict[str, Any] = {
        "indicated": True,
        "dosesTotal": history.doses_total,
        "dosesLast24h": history.doses_last_24h,
        "problems": list(history.problems),
    }
    if history.next_allowed_at is not None:
        ext["nextDoseAllowedAt"] = history.next_allowed_at.isoformat()
    head = f"**Tocilizumab ({why}):** "
    if not history.allowed_now:
        reasons = "; ".join(cards.problem_text(p, runtime.rules) for p in history.problems)
        until = (
            f" Next dose allowed from {cards.when(history.next_allowed_at)}."
            if history.next_allowed_at
            else " No further dose is allowed in this CRS episode by the label limits."
        )
        sections.insert(
            0, head + f"no order offered: {reasons}.{until} " + cards.history_line(history)
        )
        return TocilizumabAdvice(sections, [], {"tocilizumab": ext})
    if weight is None:
        ext["problems"] = ["no-weight"]
        sections.insert(
            0,
            head + "a weight is needed to compute the dose; no body weight is on file. "
            "Record the patient's actual body weight.",
        )
        return TocilizumabAdvice(sections, [], {"tocilizumab": ext})
    dose = recommended_dose(weight.value, rules)
    ext.update(
        recommendedDoseMg=dose.mg,
        weightKg=weight.value,
        weightObservedAt=weight.at.isoformat(),
    )
    text = dose_text(dose, rules, weight)
    sections.insert(0, head + text + ". " + cards.history_line(history))
    if patient_id is None:
        return TocilizumabAdvice(sections, [], {"tocilizumab": ext})
    order = new_order(
        runtime.knowledge,
        rules,
        patient_id,
        dose,
        weight,
        at,
        f"Cytokine release syndrome, ASTCT grade {g.grade} after {exposure.display}",
        encounter_id,
    )
    suggestion = {
        "label": (
            f"Order tocilizumab {cards.fmt_mg(dose.mg)} mg IV over {rules.infusion_minutes} min"
        ),
        "uuid": str(uuid.uuid4()),
        "isRecommended": True,
        "actions": [{"type": "create", "description": text, "resource": order}],
    }
    return TocilizumabAdvice(sections, [suggestion], {"tocilizumab": ext})


def monitor_response(
    runtime: Runtime,
    collected: ResourceCollector,
    patient_id: str | None,
    at: datetime,
    encounter_id: str | None = None,
) -> dict[str, Any]:
    """The CDS Hooks response of the monitor: one card while in a risk window."""
    evaluation = evaluate(runtime, collected, patient_id, at)
    issues = evaluation.normalised.issues
    response: dict[str, Any] = {"cards": []}
    if evaluation.exposure is not None and evaluation.grading is not None:
        advice = tocilizumab_advice(runtime, evaluation, patient_id, encounter_id)
        response["cards"].append(
            cards.crs_card(
                runtime.knowledge,
                runtime.rules,
                evaluation.exposure,
                evaluation.grading,
                at,
                issues,
                extra_sections=advice.sections,
                suggestions=advice.suggestions,
                extension_extra=advice.extension,
            )
        )
    elif issues:
        # No card, but the EHR's integrators must still see what could not be read.
        response["extension"] = cards.data_issues_extension(issues)
    return response


async def handle(
    runtime: Runtime, request: HookRequest, collected: ResourceCollector, at: datetime
) -> dict[str, Any]:
    context = parse_context(PatientContext, request.context)
    return monitor_response(runtime, collected, context.patientId, at, context.encounterId)


def definition(runtime: Runtime) -> ServiceDefinition:
    return ServiceDefinition(
        id=SERVICE_ID,
        hook="patient-view",
        title="CRS monitor (ASTCT 2019)",
        description=(
            "Within the CRS risk window after a CAR-T infusion or a T-cell-engaging "
            "antibody dose, grades Cytokine Release Syndrome by the ASTCT 2019 consensus "
            "criteria from vital signs, oxygen support and vasopressors, and shows the "
            "evidence."
        ),
        prefetch=patient_data_prefetch(runtime.knowledge),
        handler=handle,
        required_prefetch=PATIENT_DATA_REQUIRED,
        usage_requirements=(
            "Needs the patient's Observations (vital signs, oxygen, labs, weight) and "
            "MedicationAdministrations; sent as prefetch or readable from fhirServer."
        ),
    )
