"""patient-view `crs-monitor`: is the patient in a CRS risk window, and at which grade?"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cds import cards
from cds.engine.exposure import Exposure, find_exposure
from cds.engine.grading import Grading, grade
from cds.fhir.normalise import Normalised, Normaliser
from cds.fhir.reading import ResourceCollector
from cds.protocol import HookRequest, PatientContext
from cds.runtime import Runtime
from cds.services.base import ServiceDefinition, patient_data_prefetch

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
    exposure = find_exposure(normalised.facts, runtime.rules.windows, at)
    grading = (
        grade(normalised.facts, exposure, at, runtime.rules.grading)
        if exposure is not None
        else None
    )
    return MonitorEvaluation(at, normalised, exposure, grading)


def monitor_response(
    runtime: Runtime, collected: ResourceCollector, patient_id: str | None, at: datetime
) -> dict[str, Any]:
    """The CDS Hooks response of the monitor: one card while in a risk window."""
    evaluation = evaluate(runtime, collected, patient_id, at)
    issues = evaluation.normalised.issues
    response: dict[str, Any] = {"cards": []}
    if evaluation.exposure is not None and evaluation.grading is not None:
        response["cards"].append(
            cards.crs_card(
                runtime.knowledge,
                runtime.rules,
                evaluation.exposure,
                evaluation.grading,
                at,
                issues,
            )
        )
    elif issues:
        # No card, but the EHR's integrators must still see what could not be read.
        response["extension"] = {"crs": {"dataIssues": [i.as_json() for i in issues]}}
    return response


async def handle(
    runtime: Runtime, request: HookRequest, collected: ResourceCollector, at: datetime
) -> dict[str, Any]:
    context = PatientContext.model_validate(request.context)
    return monitor_response(runtime, collected, context.patientId, at)


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
        required_prefetch=frozenset({"observations", "medicationAdministrations"}),
        usage_requirements=(
            "Needs the patient's Observations (vital signs, oxygen, labs, weight) and "
            "MedicationAdministrations; sent as prefetch or readable from fhirServer."
        ),
    )
