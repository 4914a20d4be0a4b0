"""Draft orders (order-select, order-sign): which are tocilizumab, and their doses.

Read leniently, order by order, as real clients send them (the CDS Hooks Sandbox omits
`intent`): an order that cannot be read is reported with its location, and when it may
be tocilizumab it is listed as not checked, so that the pharmacist is told.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pydantic import ValidationError

from cds.engine.facts import Measurement
from cds.fhir import models
from cds.fhir.normalise import Normaliser
from cds.fhir.reading import Issue, RawResource, ResourceCollector, validation_issues
from cds.fhir.structs import Resource
from cds.knowledge import Knowledge

MG_UNITS = {"mg": 1.0, "milligram": 1.0, "milligrams": 1.0, "g": 1000.0, "gram": 1000.0}
MG_PER_KG_UNITS = frozenset({"mg/kg", "mg/kg/dose", "mg/kg{dose}"})
# An unreadable order is searched for tocilizumab's names and codes: at most this many
# JSON values (a hostile order may be huge or nested thousands deep).
MENTION_SCAN_LIMIT = 20_000


class DoseProblem(Enum):
    """Why the dose of a draft order could not be read in mg."""

    NO_DOSE = "the order has no dose (doseAndRate.doseQuantity)"
    NOT_FINITE = "the dose is not a finite number"
    MG_PER_KG_WITHOUT_WEIGHT = "dose in mg/kg but no weight on file"
    UNKNOWN_UNIT = "dose unit not recognised (use mg or mg/kg)"


@dataclass(frozen=True)
class OrderedDose:
    """The dose of a draft order, in mg when it can be known."""

    mg: float | None
    as_written: str
    problem: DoseProblem | None = None

    def problem_text(self) -> str | None:
        """Why the dose could not be read, as the card says it."""
        if self.problem is DoseProblem.UNKNOWN_UNIT:
            unit = self.as_written.split(" ", 1)[1] if " " in self.as_written else ""
            return f"dose unit {unit!r} not recognised (use mg or mg/kg)"
        return self.problem.value if self.problem is not None else None


def ordered_dose(order: models.MedicationRequest, weight: Measurement | None) -> OrderedDose:
    """Read the dose from dosageInstruction[].doseAndRate[].doseQuantity (mg, g or mg/kg)."""
    quantity = next(
        (
            dr.doseQuantity
            for instruction in order.dosageInstruction
            for dr in instruction.doseAndRate
            if dr.doseQuantity is not None
        ),
        None,
    )
    if quantity is None or quantity.value is None:
        return OrderedDose(None, "no dose", DoseProblem.NO_DOSE)
    unit = (quantity.code or quantity.unit or "").strip()
    written = f"{quantity.value:g} {unit}".strip()
    u = unit.lower()
    if not math.isfinite(quantity.value) or (
        u in MG_UNITS and not math.isfinite(quantity.value * MG_UNITS[u])
    ):
        return OrderedDose(None, written, DoseProblem.NOT_FINITE)
    if u in MG_UNITS:
        return OrderedDose(round(quantity.value * MG_UNITS[u], 6), written)
    if u in MG_PER_KG_UNITS:
        if weight is None:
            return OrderedDose(None, written, DoseProblem.MG_PER_KG_WITHOUT_WEIGHT)
        return OrderedDose(round(quantity.value * weight.value, 6), written)
    return OrderedDose(None, written, DoseProblem.UNKNOWN_UNIT)


@dataclass(frozen=True)
class DraftOrder:
    """A draft tocilizumab order found in draftOrders."""

    raw: RawResource
    order: models.MedicationRequest

    @property
    def reference(self) -> str:
        return self.raw.reference


@dataclass(frozen=True)
class DraftOrders:
    """What draftOrders held: the tocilizumab orders to check, what could not be read,
    and, of that, what may be tocilizumab and so was not checked."""

    tocilizumab: tuple[DraftOrder, ...] = ()
    issues: tuple[Issue, ...] = ()
    unchecked: tuple[Issue, ...] = ()


def read_draft_orders(
    knowledge: Knowledge,
    normaliser: Normaliser,
    draft_orders: Any,
    selections: list[str] | None,
    medications: Mapping[str, Resource],
) -> DraftOrders:
    """The (selected) tocilizumab orders of a draftOrders Bundle; `medications` are the
    Medication resources already read (the prefetch), draftOrders' own are added."""
    collector = ResourceCollector()
    collector.add(draft_orders, "context.draftOrders")
    known = {**medications, **normaliser.medication_index(collector)}
    selected = set(selections or [])
    orders: list[DraftOrder] = []
    unchecked: list[Issue] = []
    issues = list(collector.issues)
    for raw in collector.of_type("MedicationRequest"):
        if selected and raw.reference not in selected:
            continue
        try:
            order = models.MedicationRequest.model_validate(raw.json())
        except (ValidationError, RecursionError) as exc:
            found = (
                validation_issues(raw.location, exc)
                if isinstance(exc, ValidationError)
                else [Issue(raw.location, "the order is nested too deeply to be read")]
            )
            issues.extend(found)
            if mentions_tocilizumab(knowledge, raw.json()):
                unchecked.extend(found)
            continue
        match = normaliser.medication(
            order.medicationCodeableConcept, order.medicationReference, order.contained, known
        )
        if match is None and _unresolvable(order, known):
            issue = Issue(
                f"{raw.location}.medicationReference",
                "the referenced Medication is not in draftOrders or the prefetch and has no "
                "display text: the order could not be identified and was not checked",
            )
            issues.append(issue)
            unchecked.append(issue)
        elif match is not None and match.medication_class == "tocilizumab":
            orders.append(DraftOrder(raw, order))
    return DraftOrders(tuple(orders), tuple(issues), tuple(unchecked))


def mentions_tocilizumab(knowledge: Knowledge, data: Any) -> bool:
    """Whether an unreadable order names tocilizumab anywhere (a name in any text, or one
    of its codes as a value). Iterative and bounded: safe on any nesting or size."""
    toci = knowledge.medications["tocilizumab"]
    names = [name.lower() for name in [toci.display, *toci.names]]
    codes = {code.code for code in toci.codes}
    for text in _strings(data, MENTION_SCAN_LIMIT):
        lowered = text.lower()
        if text in codes or any(name in lowered for name in names):
            return True
    return False


def _strings(value: Any, limit: int) -> Iterator[str]:
    """The strings (keys and values) of a JSON value, depth-first, at most `limit` values."""
    stack = [value]
    seen = 0
    while stack and seen < limit:
        item = stack.pop()
        seen += 1
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            for key, inner in item.items():
                yield str(key)
                stack.append(inner)
        elif isinstance(item, list):
            stack.extend(item)


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
