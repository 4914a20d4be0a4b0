"""order-select `crs-order-select` and order-sign `crs-order-sign`: pharmacist checks of
draft tocilizumab orders against the weight-based dose, the cap, the interval and the
dose counts, and whether CRS criteria are met now."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from cds import cards
from cds.engine import dosing
from cds.engine.dosing import Dose, DoseHistory, dose_history, latest_weight, recommended_dose
from cds.engine.facts import Measurement
from cds.fhir import models
from cds.fhir.normalise import MG_PER_KG_UNITS, MG_UNITS, Normaliser
from cds.fhir.reading import Issue, RawResource, ResourceCollector, validation_issues
from cds.protocol import HookRequest, OrderContext, parse_context
from cds.runtime import Runtime
from cds.services import crs_monitor
from cds.services.base import PATIENT_DATA_REQUIRED, ServiceDefinition, patient_data_prefetch
from cds.tocilizumab_order import corrected_order

CRITICAL_PROBLEMS = frozenset({dosing.DOSE_ABOVE_CAP, dosing.INTERVAL_UNDER_8H})
OVERRIDE_SYSTEM = "urn:crs-cds:override-reason"
OVERRIDE_REASONS = [
    {"system": OVERRIDE_SYSTEM, "code": "institution-protocol", "display": "Institution protocol"},
    {"system": OVERRIDE_SYSTEM, "code": "prescriber-confirmed", "display": "Prescriber confirmed"},
    {"system": OVERRIDE_SYSTEM, "code": "weight-outdated", "display": "Weight outdated"},
    {"system": OVERRIDE_SYSTEM, "code": "clinical-judgement", "display": "Clinical judgement"},
]


@dataclass(frozen=True)
class OrderedDose:
    """The dose of a draft order, in mg when it can be known."""

    mg: float | None
    as_written: str
    problem: str | None = None  # why the dose could not be read


def ordered_dose(order: models.MedicationRequest, weight: Measurement | None) -> OrderedDose:
    """Read the dose from dosageInstruction[0].doseAndRate[0].doseQuantity (mg or mg/kg)."""
    quantity = None
    for instruction in order.dosageInstruction:
        for dr in instruction.doseAndRate:
            if dr.doseQuantity is not None:
                quantity = dr.doseQuantity
                break
        if quantity is not None:
            break
    if quantity is None or quantity.value is None:
        return OrderedDose(None, "no dose", "the order has no dose (doseAndRate.doseQuantity)")
    unit = (quantity.code or quantity.unit or "").strip()
    written = f"{quantity.value:g} {unit}".strip()
    u = unit.lower()
    if not math.isfinite(quantity.value) or (
        u in MG_UNITS and not math.isfinite(quantity.value * MG_UNITS[u])
    ):
        return OrderedDose(None, written, "the dose is not a finite number")
    if u in MG_UNITS:
        return OrderedDose(round(quantity.value * MG_UNITS[u], 6), written)
    if u in MG_PER_KG_UNITS:
        if weight is None:
            return OrderedDose(None, written, "dose in mg/kg but no weight on file")
        return OrderedDose(round(quantity.value * weight.value, 6), written)
    return OrderedDose(None, written, f"dose unit {unit!r} not recognised (use mg or mg/kg)")


@dataclass(frozen=True)
class DraftOrder:
    """A draft tocilizumab order found in draftOrders."""

    raw: RawResource
    order: models.MedicationRequest


def _mentions_tocilizumab(runtime: Runtime, data: dict[str, Any]) -> bool:
    """Whether an unreadable order names tocilizumab anywhere (code or name)."""
    text = json.dumps(data).lower()
    toci = runtime.knowledge.medications["tocilizumab"]
    return any(name.lower() in text for name in [toci.display, *toci.names]) or any(
        f'"{code.code}"' in text for code in toci.codes
    )


def _unresolvable(order: models.MedicationRequest, medications: Mapping[str, Any]) -> bool:
    """A medicationReference that leads nowhere and has no display: the drug is unknown
    (a reference to a Medication we have, of another drug, is simply not ours to check)."""
    reference = order.medicationReference
    if reference is None or order.medicationCodeableConcept is not None or reference.display:
        return False
    ref = reference.reference or ""
    if ref.startswith("#"):
        return not any(
            c.get("resourceType") == "Medication" and c.get("id") == ref[1:]
            for c in order.contained
        )
    return ref not in medications


def _draft_orders(
    runtime: Runtime, context: OrderContext, normaliser: Normaliser, collected: ResourceCollector
) -> tuple[list[DraftOrder], list[Issue], list[Issue]]:
    """Tocilizumab orders to check, issues with draftOrders, and orders not checked
    (unreadable, or whose medication cannot be identified) that may be tocilizumab."""
    collector = ResourceCollector()
    collector.add(context.draftOrders, "context.draftOrders")
    medications = normaliser.medication_index(collector, collected)
    selected = set(context.selections or [])
    orders: list[DraftOrder] = []
    unchecked: list[Issue] = []
    issues = list(collector.issues)
    for raw in collector.of_type("MedicationRequest"):
        if selected and raw.reference not in selected:
            continue
        try:
            order = models.MedicationRequest.model_validate(raw.json())
        except ValidationError as exc:
            found = validation_issues(raw.location, exc)
            issues.extend(found)
            if _mentions_tocilizumab(runtime, raw.json()):
                unchecked.extend(found)
            continue
        match = normaliser.medication(
            order.medicationCodeableConcept, order.medicationReference, order.contained, medications
        )
        if match is None and _unresolvable(order, medications):
            issue = Issue(
                f"{raw.location}.medicationReference",
                "the referenced Medication is not in draftOrders or the prefetch and has no "
                "display text: the order could not be identified and was not checked",
            )
            issues.append(issue)
            unchecked.append(issue)
        elif match is not None and match.medication_class == "tocilizumab":
            orders.append(DraftOrder(raw, order))
    return orders, issues, unchecked


def check_order(
    runtime: Runtime,
    draft: DraftOrder,
    weight: Measurement | None,
    history: DoseHistory,
    crs_met: bool,
) -> dict[str, Any]:
    """One card for one draft tocilizumab order."""
    rules = runtime.rules.dosing
    dose: Dose | None = recommended_dose(weight.value, rules) if weight is not None else None
    ordered = ordered_dose(draft.order, weight)
    problems: list[str] = []
    if weight is None:
        problems.append(dosing.NO_WEIGHT)
    if ordered.mg is not None or ordered.problem != "dose in mg/kg but no weight on file":
        problems.extend(dosing.dose_problems(ordered.mg, dose, rules))
    problems.extend(history.problems)
    if not crs_met:
        problems.append(dosing.NO_CRS_EVIDENCE)
    problems = list(dict.fromkeys(problems))

    suggestions: list[dict[str, Any]] = []
    notes: list[str] = []
    dose_wrong = {dosing.DOSE_ABOVE_CAP, dosing.DOSE_NOT_WEIGHT_BASED} & set(problems)
    if dose is not None and weight is not None and dose_wrong:
        try:
            fixed = corrected_order(draft.raw.json(), dose, rules, weight)
        except ValueError as exc:  # the draft itself is not valid FHIR R4
            fixed = None
            notes.append(
                "No corrected order offered: the draft order is not valid FHIR R4 "
                f"({_first_error(exc)}); correct the dose by hand."
            )
        if fixed is not None:
            suggestions.append(
                {
                    "label": f"Correct the dose to {cards.fmt_mg(dose.mg)} mg",
                    "uuid": _uuid(),
                    # a corrected dose is still not to be given while timing forbids a dose
                    "isRecommended": not history.problems,
                    "actions": [
                        {
                            "type": "update",
                            "description": (
                                f"Set tocilizumab to {cards.fmt_mg(dose.mg)} mg IV over "
                                f"{rules.infusion_minutes} minutes"
                            ),
                            "resource": fixed,
                        }
                    ],
                }
            )
    check = {
        "order": draft.raw.reference,
        "problems": problems,
        "orderedDose": ordered.as_written,
        "orderedDoseMg": ordered.mg,
        "recommendedDoseMg": dose.mg if dose else None,
        "weightKg": weight.value if weight else None,
        "weightObservedAt": weight.at.isoformat() if weight else None,
        "dosesLast24h": history.doses_last_24h,
        "dosesTotal": history.doses_total,
        "hoursSinceLastDose": history.hours_since_last,
        "nextDoseAllowedAt": history.next_allowed_at.isoformat()
        if history.next_allowed_at
        else None,
        "ruleSetVersion": runtime.rules.version,
    }
    return cards.order_check_card(
        runtime.knowledge,
        runtime.rules,
        check,
        ordered,
        dose,
        weight,
        history,
        suggestions,
        OVERRIDE_REASONS,
        indicator=_indicator(problems),
        notes=notes,
    )


def _first_error(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        first = validation_issues("MedicationRequest", exc)[0]
        return f"{first.location}: {first.problem}"
    return str(exc).splitlines()[0]


def _indicator(problems: list[str]) -> str:
    if CRITICAL_PROBLEMS & set(problems):
        return "critical"
    return "warning" if problems else "info"


def _uuid() -> str:
    import uuid

    return str(uuid.uuid4())


def order_check_response(
    runtime: Runtime, context: OrderContext, collected: ResourceCollector, at: datetime
) -> dict[str, Any]:
    """Cards for every (selected) tocilizumab draft order."""
    normaliser = Normaliser(runtime.knowledge, context.patientId, runtime.settings.assume_tz)
    orders, order_issues, unreadable = _draft_orders(runtime, context, normaliser, collected)
    evaluation = crs_monitor.evaluate(runtime, collected, context.patientId, at)
    facts = evaluation.normalised.facts
    weight = latest_weight(facts, at)
    grading = evaluation.grading
    episode = (grading.crs_episode_start or at) if grading is not None else None
    history = dose_history(facts, at, episode, runtime.rules.dosing)
    crs_met = evaluation.grading is not None and evaluation.grading.grade >= 1
    response_cards = [check_order(runtime, o, weight, history, crs_met) for o in orders]
    if unreadable:
        response_cards.append(cards.unreadable_order_card(runtime.knowledge, unreadable))
    issues = evaluation.normalised.issues + order_issues
    response: dict[str, Any] = {"cards": response_cards}
    if issues:
        response["extension"] = cards.data_issues_extension(issues)
    return response


async def handle(
    runtime: Runtime, request: HookRequest, collected: ResourceCollector, at: datetime
) -> dict[str, Any]:
    context = parse_context(OrderContext, request.context)
    if request.hook == "order-sign":
        context = context.model_copy(update={"selections": None})
    return order_check_response(runtime, context, collected, at)


def _definition(runtime: Runtime, service_id: str, hook: str, what: str) -> ServiceDefinition:
    return ServiceDefinition(
        id=service_id,
        hook=hook,
        title=f"Tocilizumab order check ({hook})",
        description=(
            f"Checks {what} tocilizumab draft orders for CRS: weight-based dose (8 mg/kg, "
            "12 mg/kg under 30 kg), the 800 mg cap, at least 8 h between doses, at most 3 "
            "doses in 24 h and 4 in all, and whether CRS criteria are met now."
        ),
        prefetch=patient_data_prefetch(runtime.knowledge),
        handler=handle,
        required_prefetch=PATIENT_DATA_REQUIRED,
        usage_requirements=(
            "Needs the patient's weight and CRS Observations and MedicationAdministrations "
            "(prefetch or fhirServer); draftOrders must hold MedicationRequests."
        ),
    )


def select_definition(runtime: Runtime) -> ServiceDefinition:
    return _definition(runtime, "crs-order-select", "order-select", "the selected")


def sign_definition(runtime: Runtime) -> ServiceDefinition:
    return _definition(runtime, "crs-order-sign", "order-sign", "all")
