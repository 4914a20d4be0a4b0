"""patient-view `crs-monitor`: is the patient in a CRS risk window, and at which grade?

Decides one card while the patient is in a risk window: the grade, the evidence, and
from the indication grade a ready, weight-dosed tocilizumab order.
"""

from __future__ import annotations

from cds import cards
from cds.decision import DecidedCard, Decision
from cds.engine.dosing import recommended_dose, tocilizumab_indication
from cds.evaluation import Evaluation
from cds.fhir.prefetch import patient_data_prefetch
from cds.formatting import fmt_mg
from cds.ids import NewId
from cds.protocol import Action, PatientContext, Suggestion
from cds.runtime import Runtime
from cds.services.base import ServiceDefinition
from cds.tocilizumab_order import dose_text, new_order

SERVICE_ID = "crs-monitor"


def plan_tocilizumab(
    runtime: Runtime, evaluation: Evaluation, new_id: NewId
) -> cards.TocilizumabPlan:
    """Whether tocilizumab is indicated now, and the dosed order offered if a dose is
    allowed and a weight is known."""
    grading = evaluation.crs
    assert grading is not None
    rules = runtime.rules.dosing
    indication = tocilizumab_indication(grading, rules)
    weight, history = evaluation.tocilizumab.weight, evaluation.tocilizumab.history
    if indication is None or not history.allowed_now or weight is None:
        return cards.TocilizumabPlan(grading.grade, indication, history, weight, None, None, None)
    dose = recommended_dose(weight.value, rules)
    text = dose_text(dose, rules, weight)
    order = None
    exposure = evaluation.exposure
    if evaluation.patient_id is not None and exposure is not None:
        grade_text = (
            f"possible ASTCT grade {indication.grade} (fever possibly masked by premedication)"
            if indication.possible
            else f"ASTCT grade {grading.grade}"
        )
        resource = new_order(
            runtime.knowledge,
            rules,
            evaluation.patient_id,
            dose,
            weight,
            evaluation.at,
            f"Cytokine release syndrome, {grade_text} after {exposure.display}",
            new_id(),
            evaluation.encounter_id,
        )
        order = Suggestion(
            label=f"Order tocilizumab {fmt_mg(dose.mg)} mg IV over {rules.infusion_minutes} min",
            uuid=new_id(),
            # a possible grade is the clinician's call: offered, not recommended
            isRecommended=not indication.possible,
            actions=(Action(type="create", description=text, resource=resource),),
        )
    return cards.TocilizumabPlan(grading.grade, indication, history, weight, dose, text, order)


def icans_card(runtime: Runtime, evaluation: Evaluation, new_id: NewId) -> DecidedCard | None:
    """The ICANS card, when the patient is in an ICANS window and a neurological
    assessment (ICE, CAPD, consciousness, seizure, motor, ICP) is charted since the
    exposure; None otherwise (no assessment charted: nothing to grade)."""
    assessed = evaluation.icans
    if assessed is None or not assessed.result.assessed:
        return None
    card = cards.icans_card(runtime.knowledge, runtime.rules, evaluation, new_id())
    return DecidedCard(card, "icans", icans_grade=assessed.result.grade)


def decide(runtime: Runtime, evaluation: Evaluation, new_id: NewId) -> Decision:
    """The CRS card while in a CRS risk window, and the ICANS card beside it while in an
    ICANS window with a neurological assessment charted; outside both, none (and the data
    issues in the response's extension), unless data are missing that may hide an
    exposure, or an exposure's administration could not be read."""
    exposure, grading = evaluation.exposure, evaluation.crs
    icans = icans_card(runtime, evaluation, new_id) if evaluation.icans is not None else None
    if exposure is None or grading is None:
        shown: list[DecidedCard] = []
        # First whatever may hide a risk window: data missing, or an exposure whose time
        # could not be read (after lymphodepletion, that infusion is the one expected).
        if not evaluation.data_complete or evaluation.unread_exposures:
            card = cards.incomplete_data_card(runtime.knowledge, evaluation, new_id())
            shown.append(DecidedCard(card, "data-incomplete"))
        if icans is not None:
            shown.append(icans)
        elif evaluation.risk is not None and not evaluation.unread_exposures:
            # after lymphodepletion, before the infusion (not if one may have been given)
            card = cards.pre_infusion_card(runtime.knowledge, evaluation, new_id())
            shown.append(DecidedCard(card, "risk-scores"))
        if shown:
            return Decision(tuple(shown))
        return Decision((), cards.data_only_extension(evaluation))
    plan = plan_tocilizumab(runtime, evaluation, new_id)
    card_id = new_id()
    # the timeline of this evaluation: a signed link naming this card alone (the store maps
    # the card to its record); none without a public base URL
    links = (runtime.links.timeline(card_id, evaluation.at),) if runtime.links else ()
    card = cards.crs_card(runtime.knowledge, runtime.rules, evaluation, plan, card_id, links)
    crs = DecidedCard(
        card,
        "crs",
        grade=grading.grade,
        possible_grade=grading.possible_grade,
        exposure=f"{exposure.product}@{exposure.at.isoformat()}",
        data_missing=grading.data_missing,
    )
    return Decision((crs, icans) if icans is not None else (crs,))


def definition(runtime: Runtime) -> ServiceDefinition:
    return ServiceDefinition(
        id=SERVICE_ID,
        hook="patient-view",
        title="CRS monitor (ASTCT 2019)",
        description=(
            "Within the CRS risk window after a CAR-T or TCR-T infusion or a T-cell-engaging "
            "antibody dose, grades Cytokine Release Syndrome by the ASTCT 2019 consensus "
            "criteria from vital signs, oxygen support and vasopressors, and shows the "
            "evidence."
        ),
        prefetch=patient_data_prefetch(runtime.knowledge, runtime.settings.fhir_page_size),
        context=PatientContext,
        decide=decide,
        usage_requirements=(
            "Needs the patient's Observations (vital signs, oxygen, labs, weight) and "
            "MedicationAdministrations; sent as prefetch or readable from fhirServer."
        ),
    )
