"""Draft orders (order-select, order-sign): which are tocilizumab, and their doses.

Read leniently, order by order, as real clients send them (the CDS Hooks Sandbox omits
`intent`): an order that cannot be read is reported with its location, and when it may
be tocilizumab it is listed as not checked, so that the pharmacist is told.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from fractions import Fraction
from typing import Any

from pydantic import ValidationError

from cds.engine.facts import Measurement
from cds.fhir import models
from cds.fhir.normalise import Normaliser
from cds.fhir.reading import (
    MENTION_SCAN_LIMIT,
    Issue,
    RawResource,
    ResourceCollector,
    json_strings,
    validation_issues,
)
from cds.fhir.structs import Resource
from cds.knowledge import Knowledge

# The mass units a dose is read in, and how many mg one of each is: UCUM, The Unified
# Code for Units of Measure (Regenstrief Institute, https://ucum.org; ucum-essence.xml):
# the gram `g` is the base unit of mass, prefixes k = 10^3, m = 10^-3, u = 10^-6 (print
# symbol µ), n = 10^-9. "mcg" and the spelt-out names are not UCUM codes but what order
# entry displays. Exact ratios, so that 960000 ug is 960 mg exactly. Matched ignoring
# case, as `unit` is free text ("MG"). Every dose unit the service reads is here or in
# MG_PER_KG_UNITS: any other unit is reported unreadable, never guessed.
MG_PER_MASS_UNIT: Mapping[str, Fraction] = {
    **dict.fromkeys(("kg", "kilogram", "kilograms"), Fraction(1_000_000)),
    **dict.fromkeys(("g", "gram", "grams"), Fraction(1000)),
    **dict.fromkeys(("mg", "milligram", "milligrams"), Fraction(1)),
    # micro: UCUM `u`, the micro sign U+00B5 and the Greek mu U+03BC, and "mcg"
    **dict.fromkeys(
        ("ug", "\u00b5g", "\u03bcg", "mcg", "microgram", "micrograms"), Fraction(1, 1000)
    ),
    **dict.fromkeys(("ng", "nanogram", "nanograms"), Fraction(1, 1_000_000)),
}
MG_PER_KG_UNITS = frozenset({"mg/kg", "mg/kg/dose", "mg/kg{dose}"})
# Volumes (UCUM `L` with its prefixes): named as such on the card, since the mg they hold
# depend on a concentration the order does not carry.
VOLUME_UNITS = frozenset({"l", "dl", "cl", "ml", "ul", "\u00b5l", "\u03bcl", "cc"})


class DoseProblem(Enum):
    """Why the dose of a draft order could not be read in mg, or is no dose at all."""

    NO_DOSE = "the order has no dose (doseAndRate.doseQuantity)"
    NO_VALUE = "the dose (doseAndRate.doseQuantity) has no value"
    BOUND = "the dose has a comparator: it is a bound, not a dose"
    NOT_FINITE = "the dose is not a finite number (of mg)"
    NOT_POSITIVE = "the dose is zero or negative"
    NO_UNIT = "the dose has no unit: it cannot be read as a mass"
    VOLUME_UNIT = "the dose is a volume, not a mass"
    UNKNOWN_UNIT = "dose unit not recognised (use mg, g, µg or mg/kg)"
    MG_PER_KG_WITHOUT_WEIGHT = "dose in mg/kg but no weight on file"

    @property
    def invalid(self) -> bool:
        """The value is no dose at all (zero, negative, not a number), whatever its unit;
        the other problems are of reading it (no dose, no value, a unit that is not a mass)."""
        return self in (DoseProblem.NOT_FINITE, DoseProblem.NOT_POSITIVE)


@dataclass(frozen=True)
class OrderedDose:
    """The dose of a draft order: in mg when it can be known, else why not."""

    mg: float | None
    as_written: str
    problem: DoseProblem | None = None
    unit: str = ""  # the unit as written (doseQuantity.code, else .unit)

    def problem_text(self) -> str | None:
        """Why the dose could not be read, or is no dose, as the card says it."""
        if self.problem is DoseProblem.UNKNOWN_UNIT:
            return (
                f"dose unit {self.unit!r} is not a mass unit the service reads (mg, g, µg or mg/kg)"
            )
        if self.problem is DoseProblem.VOLUME_UNIT:
            return (
                f"dose unit {self.unit!r} is a volume, not a mass: the mg it holds depend on "
                "the concentration, which the order does not give"
            )
        return self.problem.value if self.problem is not None else None


def ordered_dose(order: models.MedicationRequest, weight: Measurement | None) -> OrderedDose:
    """Read the dose from dosageInstruction[].doseAndRate[].doseQuantity: a mass
    (MG_PER_MASS_UNIT, converted exactly) or mg/kg (times the weight on file).

    The value is checked before the unit: zero, negative or not a number is no dose in
    any unit."""
    quantity = next(
        (
            dr.doseQuantity
            for instruction in order.dosageInstruction
            for dr in instruction.doseAndRate
            if dr.doseQuantity is not None
        ),
        None,
    )
    if quantity is None:
        return OrderedDose(None, "no dose", DoseProblem.NO_DOSE)
    unit = _dose_unit(quantity.code, quantity.unit)
    value = quantity.value
    if value is None:
        return OrderedDose(None, f"no value {unit}".strip(), DoseProblem.NO_VALUE, unit)
    written = f"{value:g} {unit}".strip()
    if quantity.comparator is not None:
        written = f"{quantity.comparator}{written}"
        return OrderedDose(None, written, DoseProblem.BOUND, unit)
    if not math.isfinite(value):
        return OrderedDose(None, written, DoseProblem.NOT_FINITE, unit)
    if value <= 0:
        return OrderedDose(None, written, DoseProblem.NOT_POSITIVE, unit)
    u = unit.lower()
    if not u:
        return OrderedDose(None, written, DoseProblem.NO_UNIT, unit)
    if u in MG_PER_MASS_UNIT:
        mg = _finite_float(Fraction(value) * MG_PER_MASS_UNIT[u])
    elif u in MG_PER_KG_UNITS:
        if weight is None:
            return OrderedDose(None, written, DoseProblem.MG_PER_KG_WITHOUT_WEIGHT, unit)
        mg = _finite_float(Fraction(value) * Fraction(weight.value))
    elif u in VOLUME_UNITS:
        return OrderedDose(None, written, DoseProblem.VOLUME_UNIT, unit)
    else:
        return OrderedDose(None, written, DoseProblem.UNKNOWN_UNIT, unit)
    if mg is None:  # e.g. 1e308 g: more mg than a float holds
        return OrderedDose(None, written, DoseProblem.NOT_FINITE, unit)
    rounded = round(mg, 6)  # to the ng: no float noise in what the card shows
    return OrderedDose(rounded if rounded > 0 else mg, written, unit=unit)


def _dose_unit(code: str | None, unit: str | None) -> str:
    """The unit a dose is read in: its code, unless the code is not one the service reads
    and the human-readable unit is (a SNOMED CT or dm+d unit code, 258684004, with unit
    "mg"); else the code, or the unit, as written."""
    code, unit = (code or "").strip(), (unit or "").strip()
    if code and unit and not _readable_unit(code) and _readable_unit(unit):
        return unit
    return code or unit


def _readable_unit(unit: str) -> bool:
    u = unit.lower()
    return u in MG_PER_MASS_UNIT or u in MG_PER_KG_UNITS or u in VOLUME_UNITS


def _finite_float(exact: Fraction) -> float | None:
    """The nearest float, or None when it is too large for one."""
    try:
        return float(exact)
    except OverflowError:
        return None


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


def _selected(selections: list[str], drafts: list[RawResource], issues: list[Issue]) -> set[str]:
    """The selections that name a resource of draftOrders (by `Type/id` or fullUrl: a
    ServiceRequest selected is no tocilizumab order to check); one that names none is
    reported. When none does, every order is checked: the user selected an order, and
    checking none would say nothing about it."""
    named = {r.reference for r in drafts} | {r.full_url for r in drafts if r.full_url}
    found = {s for s in selections if s in named}
    for i, selection in enumerate(selections):
        if selection not in named:
            issues.append(
                Issue(
                    f"context.selections[{i}]",
                    "names no resource of context.draftOrders"
                    + ("" if found else "; every draft order is checked instead"),
                )
            )
    return found


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
    requests = list(collector.of_type("MedicationRequest"))
    orders: list[DraftOrder] = []
    unchecked: list[Issue] = []
    issues = list(collector.issues)
    selected = _selected(selections or [], collector.resources, issues)
    for raw in requests:
        if selected and raw.reference not in selected and raw.full_url not in selected:
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
            subject = order.subject.reference if order.subject is not None else None
            if normaliser.is_hook_patient(subject):
                orders.append(DraftOrder(raw, order))
            else:
                # checked against this patient's weight and doses it would say nothing true
                issue = Issue(
                    f"{raw.location}.subject.reference",
                    "the order is for another patient than context.patientId: not checked",
                )
                issues.append(issue)
                unchecked.append(issue)
    return DraftOrders(tuple(orders), tuple(issues), tuple(unchecked))


def mentions_tocilizumab(knowledge: Knowledge, data: Any) -> bool:
    """Whether an unreadable order names tocilizumab anywhere (a name in any text, or one
    of its codes as a value). Iterative and bounded: safe on any nesting or size."""
    toci = knowledge.medications["tocilizumab"]
    names = [name.lower() for name in [toci.display, *toci.names]]
    codes = {code.code for code in toci.codes}
    for text in json_strings(data, MENTION_SCAN_LIMIT):
        lowered = text.lower()
        if text in codes or any(name in lowered for name in names):
            return True
    return False


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
