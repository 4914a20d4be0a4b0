"""order-select `crs-order-select` and order-sign `crs-order-sign`: pharmacist checks of
draft tocilizumab orders against the weight-based dose, the cap, the interval and the
dose counts, and whether CRS criteria are met now. Never suppressed."""

from __future__ import annotations

from cds import cards
from cds.decision import DecidedCard, Decision
from cds.engine import dosing
from cds.engine.dosing import Dose, DosingRules, recommended_dose
from cds.evaluation import Evaluation
from cds.extensions import ResponseExtension
from cds.fhir.orders import DoseProblem, DraftOrder, OrderedDose, ordered_dose
from cds.fhir.prefetch import patient_data_prefetch
from cds.formatting import fmt_mg
from cds.ids import NewId
from cds.protocol import Action, Indicator, OrderContext, Suggestion
from cds.runtime import Runtime
from cds.services.base import ServiceDefinition
from cds.tocilizumab_order import InvalidOrder, corrected_order


def check_order(
    runtime: Runtime, evaluation: Evaluation, draft: DraftOrder, new_id: NewId
) -> cards.OrderCheck:
    """The problems of one draft tocilizumab order, and its correction."""
    rules = runtime.rules.dosing
    weight, history = evaluation.tocilizumab.weight, evaluation.tocilizumab.history
    dose: Dose | None = recommended_dose(weight.value, rules) if weight is not None else None
    ordered = ordered_dose(draft.order, weight)
    problems: list[str] = []
    if weight is None:
        problems.append(dosing.NO_WEIGHT)
    problems.extend(_dose_problems(ordered, dose, rules))
    problems.extend(history.problems)
    crs = evaluation.crs
    # a possible grade (fever possibly masked by premedication) is a presentation the
    # labels say to manage as CRS, and hypotension, hypoxia or a vasopressor with no current
    # temperature is CRS if the patient is febrile: neither is "no CRS evidence"
    if crs is None or (
        crs.grade < 1 and crs.possible_grade is None and crs.unassessed_grade is None
    ):
        problems.append(dosing.NO_CRS_EVIDENCE)
    problems = list(dict.fromkeys(problems))

    correction = None
    notes: list[str] = []
    if not evaluation.data_complete:
        notes.append(cards.incomplete_note(evaluation.truncated) or "")
    if evaluation.issues:
        # (a rejected O2 flow may be the CRS evidence the check finds missing)
        notes.append(
            f"**Data not read:** {len(evaluation.issues)} of the patient's entries could not "
            "be read and were left out (details in the response's extension, `dataIssues`): "
            "the CRS evidence and the dose history may be understated."
        )
    # Only a dose read in mg and found wrong is corrected: an unreadable or invalid dose
    # (what was meant is unknown) is verified by hand, never replaced in one click.
    dose_wrong = {dosing.DOSE_ABOVE_CAP, dosing.DOSE_NOT_WEIGHT_BASED} & set(problems)
    if dose is not None and weight is not None and dose_wrong:
        try:
            fixed = corrected_order(draft.raw.json(), dose, rules, weight)
        except InvalidOrder as exc:  # the draft itself is not valid FHIR R4
            notes.append(
                "No corrected order offered: the draft order is not valid FHIR R4 "
                f"({exc}); correct the dose by hand."
            )
        else:
            correction = Suggestion(
                label=f"Correct the dose to {fmt_mg(dose.mg)} mg",
                uuid=new_id(),
                # a corrected dose is still not to be given while timing forbids a dose
                isRecommended=not history.problems,
                actions=(
                    Action(
                        type="update",
                        description=(
                            f"Set tocilizumab to {fmt_mg(dose.mg)} mg IV over "
                            f"{rules.infusion_minutes} minutes"
                        ),
                        resource=fixed,
                    ),
                ),
            )
    return cards.OrderCheck(
        order=draft.reference,
        ordered=ordered,
        problems=tuple(problems),
        dose=dose,
        weight=weight,
        history=history,
        indicator=_indicator(runtime, problems, evaluation.data_complete),
        correction=correction,
        notes=tuple(notes),
    )


def _dose_problems(ordered: OrderedDose, dose: Dose | None, rules: DosingRules) -> list[str]:
    """The ordered dose against the cap and the weight-based dose; a dose that is no dose
    (zero, negative, not a number) or cannot be read as a mass is a problem of its own,
    and is not compared with anything."""
    if ordered.problem is None:
        return dosing.dose_problems(ordered.mg, dose, rules)
    if ordered.problem.invalid:
        return [dosing.DOSE_INVALID]
    if ordered.problem is DoseProblem.MG_PER_KG_WITHOUT_WEIGHT:
        return []  # `no-weight` says it
    return [dosing.DOSE_UNREADABLE]


def _indicator(runtime: Runtime, problems: list[str], complete: bool) -> Indicator:
    if set(runtime.knowledge.alerting.order_check.critical_problems) & set(problems):
        return "critical"
    # a check on incomplete data (a dose on a missing page?) is never an all-clear
    return "warning" if problems or not complete else "info"


def decide(runtime: Runtime, evaluation: Evaluation, new_id: NewId) -> Decision:
    """A card for every (selected) tocilizumab draft order, and one for the orders that
    may be tocilizumab but could not be read."""
    orders = evaluation.orders
    assert orders is not None
    decided = []
    for draft in orders.tocilizumab:
        check = check_order(runtime, evaluation, draft, new_id)
        card = cards.order_check_card(runtime.knowledge, runtime.rules, check, new_id())
        decided.append(DecidedCard(card, "order-check"))
    if orders.unchecked:
        card = cards.unreadable_order_card(runtime.knowledge, orders.unchecked, new_id())
        decided.append(DecidedCard(card, "unreadable-order"))
    issues = evaluation.issues + orders.issues
    extension = (
        ResponseExtension(
            dataIssues=cards.issue_infos(issues),
            incompleteData=cards.incomplete_data(evaluation.truncated),
        )
        if issues or evaluation.truncated
        else None
    )
    return Decision(tuple(decided), extension)


def _definition(runtime: Runtime, service_id: str, hook: str, what: str) -> ServiceDefinition:
    d = runtime.rules.dosing
    return ServiceDefinition(
        id=service_id,
        hook=hook,
        title=f"Tocilizumab order check ({hook})",
        description=(
            f"Checks {what} tocilizumab draft orders for CRS: weight-based dose "
            f"({d.mg_per_kg_at_or_above:g} mg/kg, {d.mg_per_kg_below:g} mg/kg under "
            f"{d.weight_threshold_kg:g} kg), the {fmt_mg(d.max_dose_mg)} mg cap, at least "
            f"{d.min_interval.total_seconds() / 3600:g} h between doses, at most "
            f"{d.max_doses_per_24h} doses in 24 h and {d.max_doses_total} in all, and whether "
            "CRS criteria are met now."
        ),
        prefetch=patient_data_prefetch(
            runtime.knowledge, runtime.settings.fhir_page_size, icans=False
        ),
        context=OrderContext,
        decide=decide,
        usage_requirements=(
            "Needs the patient's weight and CRS Observations and MedicationAdministrations "
            "(prefetch or fhirServer); draftOrders must hold MedicationRequests."
        ),
    )


def select_definition(runtime: Runtime) -> ServiceDefinition:
    return _definition(runtime, "crs-order-select", "order-select", "the selected")


def sign_definition(runtime: Runtime) -> ServiceDefinition:
    return _definition(runtime, "crs-order-sign", "order-sign", "all")
