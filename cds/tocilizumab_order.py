"""The tocilizumab MedicationRequest the service proposes or corrects.

Resources the service writes into suggestions must be complete FHIR R4: each one is
validated with the fhir.resources R4B model (R4-compatible for MedicationRequest)
before it leaves the service.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from fhir.resources.R4B.medicationrequest import MedicationRequest as FhirMedicationRequest

from cds.engine.dosing import Dose, DosingRules
from cds.engine.facts import Measurement
from cds.fhir.systems import RXNORM, SNOMED, UCUM
from cds.formatting import fmt_mg
from cds.knowledge import Knowledge

INTRAVENOUS = {"system": SNOMED, "code": "47625008", "display": "Intravenous route"}


def tocilizumab_coding(knowledge: Knowledge) -> dict[str, str]:
    """The RxNorm ingredient coding of tocilizumab, from fhir_mappings/."""
    med = knowledge.medications["tocilizumab"]
    code = next(c for c in med.codes if c.system == RXNORM and c.tty == "IN")
    return {"system": RXNORM, "code": code.code, "display": code.display}


def dose_text(dose: Dose, rules: DosingRules, weight: Measurement) -> str:
    """ "tocilizumab 640 mg IV over 60 minutes (8 mg/kg × 80 kg, weighed 2026-11-19)"."""
    basis = f"{dose.mg_per_kg:g} mg/kg × {dose.weight_kg:g} kg"
    if dose.capped:
        basis += f" = {fmt_mg(dose.weight_based_mg)} mg, capped at {rules.max_dose_mg:g} mg"
    elif rules.rounding_mg and dose.mg != dose.weight_based_mg:
        basis += f" = {fmt_mg(dose.weight_based_mg)} mg, rounded to {rules.rounding_mg:g} mg"
    return (
        f"tocilizumab {fmt_mg(dose.mg)} mg IV over {rules.infusion_minutes} minutes "
        f"({basis}; weight recorded {weight.at.date().isoformat()})"
    )


def weight_note(weight: Measurement) -> str:
    recorded = f" (recorded as {weight.original})" if weight.original else ""
    return (
        f"Dose computed from actual body weight {weight.value:g} kg{recorded}, "
        f"observed {weight.at.isoformat()} ({weight.source})."
    )


def _dosage(dose: Dose, rules: DosingRules, weight: Measurement) -> dict[str, Any]:
    return {
        "text": dose_text(dose, rules, weight),
        "route": {"coding": [INTRAVENOUS], "text": "intravenous"},
        "doseAndRate": [
            {"doseQuantity": {"value": dose.mg, "unit": "mg", "system": UCUM, "code": "mg"}}
        ],
        "additionalInstruction": [
            {"text": f"Infuse over {rules.infusion_minutes} minutes."},
        ],
    }


class InvalidOrder(ValueError):
    """The order would not be valid FHIR R4; the message says where."""


# A MedicationRequest is a dozen levels deep (extensions nest, but not by hundreds). A
# client's order nested deeper is refused before the FHIR model (recursive) walks it,
# and so never reaches the response (whose encoder recurses too).
MAX_ORDER_DEPTH = 64
CONTAINERS = (dict, list, tuple)


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether a JSON value nests objects and arrays more than `limit` levels deep
    (iterative: safe at any depth)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        inner: Iterable[Any]
        if isinstance(item, dict):
            inner = item.values()
        elif isinstance(item, list | tuple):
            inner = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in inner if isinstance(child, CONTAINERS))
    return False


def validated(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource, after checking it is valid FHIR (InvalidOrder if not)."""
    if nested_deeper_than(resource, MAX_ORDER_DEPTH):
        raise InvalidOrder(f"the order is nested more than {MAX_ORDER_DEPTH} levels deep")
    try:
        FhirMedicationRequest.model_validate(resource)
    except RecursionError as exc:
        raise InvalidOrder("the order is nested too deeply to be valid FHIR") from exc
    except ValueError as exc:  # pydantic's ValidationError among them
        raise InvalidOrder(_first_error(exc)) from exc
    return resource


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        found = errors(include_url=False, include_input=False)
        if found:
            first = found[0]
            path = ".".join(str(p) for p in first["loc"])
            return f"MedicationRequest.{path}: {first['msg']}" if path else first["msg"]
    return str(exc).splitlines()[0]


def new_order(
    knowledge: Knowledge,
    rules: DosingRules,
    patient_id: str,
    dose: Dose,
    weight: Measurement,
    at: datetime,
    reason: str,
    order_id: str,
    encounter_id: str | None = None,
) -> dict[str, Any]:
    """A draft tocilizumab order for the physician's card (a `create` action)."""
    coding = tocilizumab_coding(knowledge)
    order: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": order_id,
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {"coding": [coding], "text": "tocilizumab"},
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": at.isoformat(timespec="seconds"),
        "reasonCode": [{"text": reason}],
        "note": [{"text": weight_note(weight)}],
        "dosageInstruction": [_dosage(dose, rules, weight)],
    }
    if encounter_id:
        order["encounter"] = {"reference": f"Encounter/{encounter_id}"}
    return validated(order)


def corrected_order(
    original: dict[str, Any], dose: Dose, rules: DosingRules, weight: Measurement
) -> dict[str, Any]:
    """The draft order with its dose replaced by `dose` (same id): an `update` action.

    Only what changes is copied (the top level, the first dosage instruction): the rest
    of the client's order is shared, never walked, whatever its size or nesting."""
    order = dict(original)
    order.setdefault("status", "draft")
    order.setdefault("intent", "order")
    dosage = _dosage(dose, rules, weight)
    instructions = order.get("dosageInstruction")
    if isinstance(instructions, list) and instructions and isinstance(instructions[0], dict):
        first = {
            **instructions[0],
            "text": dosage["text"],
            "doseAndRate": dosage["doseAndRate"],
        }
        first.setdefault("route", dosage["route"])
        order["dosageInstruction"] = [first, *instructions[1:]]
    else:
        order["dosageInstruction"] = [dosage]
    notes = order.get("note")
    order["note"] = [*(notes if isinstance(notes, list) else []), {"text": weight_note(weight)}]
    return validated(order)
