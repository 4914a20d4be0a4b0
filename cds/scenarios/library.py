"""The scenario library: synthetic CRS patients as data (scenarios.yaml), built into FHIR.

Each scenario is a patient timeline in hours relative to an anchor time, a one-line
description and the outcome the service should give at the anchor. `Scenario.resources`
builds valid FHIR R4 resources with fixed ids (so loading twice is idempotent);
`transaction` wraps them in a PUT transaction for a FHIR server; `draft_orders` gives a
pharmacist case's draft tocilizumab order as order-sign `draftOrders`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cds import fhirbuild as fb
from cds.fhir.systems import RXNORM

LIBRARY_FILE = Path(__file__).with_name("scenarios.yaml")
TOCILIZUMAB_RXNORM = "612865"

Resource = dict[str, Any]


class ScenarioError(Exception):
    """The scenario file is invalid, or a scenario id is unknown."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Give(_Strict):
    """A medication given: instant, over `hours`, or still running."""

    text: str
    rxnorm: str | None = None
    dose: tuple[float, str] | None = None
    hours: float | None = Field(default=None, gt=0)
    running: bool = False
    reference: bool = False  # medicationReference to a Medication resource


class Local(_Strict):
    """An observation with a local code and text only."""

    text: str
    value: float
    unit: str


LabName = Literal["crp", "ferritin", "il6", "ldh", "creatinine", "platelets", "hemoglobin", "anc"]
LABS: dict[str, tuple[str, str, str]] = {
    "crp": ("1988-5", "C reactive protein [Mass/volume] in Serum or Plasma", "mg/L"),
    "ferritin": ("2276-4", "Ferritin [Mass/volume] in Serum or Plasma", "ng/mL"),
    "il6": ("26881-3", "Interleukin 6 [Mass/volume] in Serum or Plasma", "pg/mL"),
    "ldh": (
        "2532-0",
        "Lactate dehydrogenase [Enzymatic activity/volume] in Serum or Plasma",
        "U/L",
    ),
    "creatinine": ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL"),
    "platelets": ("777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL"),
    "hemoglobin": ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL"),
    "anc": ("751-8", "Neutrophils [#/volume] in Blood by Automated count", "10*3/uL"),
}


class Neuro(_Strict):
    """A coded neurological finding (rules/icans.yaml levels)."""

    domain: Literal["consciousness", "seizure", "motor", "icp"]
    level: str


class Event(_Strict):
    """What happened at `h` hours from the anchor (negative: before it)."""

    h: float
    temp: float | None = None
    temp_f: float | None = None
    bp: tuple[float, float] | None = None
    sbp: float | None = None
    hr: float | None = None
    rr: float | None = None
    spo2: float | None = None
    o2_flow: float | None = None
    device: tuple[str, str] | None = None
    weight: float | None = None
    weight_lb: float | None = None
    labs: dict[LabName, float] = Field(default_factory=dict)
    local: Local | None = None
    give: Give | None = None
    ice: int | None = None  # ICE score total (valueInteger)
    ice_items: tuple[int, int, int, int, int] | None = None  # with the total, as components
    capd: int | None = None
    neuro: Neuro | None = None

    @model_validator(mode="after")
    def _says_something(self) -> Event:
        if not self.model_fields_set - {"h"}:
            raise ValueError("an event needs at least one finding or medication")
        return self


class Order(_Strict):
    """A draft tocilizumab order (order-sign draftOrders)."""

    dose: tuple[float, Literal["mg", "g", "ug", "mg/kg", "mL"]]


class Expect(_Strict):
    """The outcome at the anchor: a monitor grade, no card, or the order's problems."""

    service: Literal["crs-monitor", "crs-order-sign"]
    grade: int | None = Field(default=None, ge=0, le=4)
    maxGrade: int | None = Field(default=None, ge=0, le=4)
    card: bool = True
    problems: list[str] | None = None
    icansGrade: int | None = Field(default=None, ge=0, le=4)
    icansMaxGrade: int | None = Field(default=None, ge=0, le=4)
    riskScores: dict[str, str | None] | None = None  # score -> category on the CRS card

    def as_json(self) -> dict[str, Any]:
        """Only the fields that were given, e.g. `{"service": …, "grade": 2, "maxGrade": 2}`."""
        return self.model_dump(exclude_unset=True)


class PatientInfo(_Strict):
    gender: Literal["female", "male", "other", "unknown"]
    birthDate: str


ScenarioId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,40}$")]


class ScenarioSpec(_Strict):
    id: ScenarioId
    description: str = Field(max_length=120)
    expect: Expect
    patient: PatientInfo
    events: list[Event] = Field(min_length=1)
    order: Order | None = None
    searchable: bool = True


class LibraryFile(_Strict):
    version: str
    scenarios: list[ScenarioSpec]


@dataclass(frozen=True)
class Scenario:
    """One synthetic patient: description, expected outcome, and its FHIR resources."""

    spec: ScenarioSpec

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def patient_id(self) -> str:
        """The Patient id on the FHIR server (fixed, the scenario id)."""
        return self.spec.id

    @property
    def description(self) -> str:
        return self.spec.description

    @property
    def expect(self) -> dict[str, Any]:
        """The expected outcome, e.g. `{"service": "crs-monitor", "grade": 2, "maxGrade": 2}`."""
        return self.spec.expect.as_json()

    @property
    def service(self) -> str:
        return self.spec.expect.service

    @property
    def searchable(self) -> bool:
        """False when a FHIR search by code (the prefetch templates) cannot find its data
        (local codes with text only); the service's own fallback also searches by name."""
        return self.spec.searchable

    def resources(self, anchor: datetime) -> list[Resource]:
        """The patient and everything recorded, timed from `anchor` (aware), fixed ids."""
        if anchor.tzinfo is None:
            raise ValueError("anchor must be timezone-aware")
        return list(_build(self.spec, anchor))

    def transaction(self, anchor: datetime) -> Resource:
        """A transaction Bundle that PUTs every resource at its id (idempotent reloads)."""
        return fb.transaction(self.resources(anchor))

    def collection(self, anchor: datetime) -> Resource:
        """A collection Bundle of the resources (for `crs-cds evaluate`)."""
        return fb.collection(self.resources(anchor))

    def prefetch(self, anchor: datetime) -> dict[str, Resource]:
        """The prefetch an EHR would send for this patient (every Observation included)."""
        resources = self.resources(anchor)
        by_type: dict[str, list[Resource]] = {}
        for r in resources:
            by_type.setdefault(r["resourceType"], []).append(r)
        observations = by_type.get("Observation", [])
        return {
            "patient": by_type["Patient"][0],
            "observations": fb.searchset(
                [o for o in observations if "valueCodeableConcept" not in o]
            ),
            "oxygenDevices": fb.searchset([o for o in observations if "valueCodeableConcept" in o]),
            "medicationAdministrations": fb.searchset(
                by_type.get("MedicationAdministration", []) + by_type.get("Medication", [])
            ),
            "conditions": fb.searchset(by_type.get("Condition", [])),
            "assessments": fb.searchset(by_type.get("QuestionnaireResponse", [])),
        }

    def draft_order(self, anchor: datetime) -> Resource | None:
        """The draft tocilizumab MedicationRequest of a pharmacist case, else None."""
        if self.spec.order is None:
            return None
        value, unit = self.spec.order.dose
        pid = self.patient_id
        return {
            "resourceType": "MedicationRequest",
            "id": f"{pid}-draft-toci",
            "status": "draft",
            "intent": "order",
            "medicationCodeableConcept": {
                "coding": [
                    {"system": RXNORM, "code": TOCILIZUMAB_RXNORM, "display": "tocilizumab"}
                ],
                "text": "tocilizumab",
            },
            "subject": {"reference": f"Patient/{pid}"},
            "authoredOn": fb.iso(anchor),
            "dosageInstruction": [
                {
                    "text": f"tocilizumab {value:g} {unit} IV over 60 minutes",
                    "route": {"text": "intravenous"},
                    "doseAndRate": [{"doseQuantity": fb.quantity(value, unit)}],
                }
            ],
        }

    def draft_orders(self, anchor: datetime) -> Resource | None:
        """order-sign `context.draftOrders`: a Bundle holding the draft order, or None."""
        order = self.draft_order(anchor)
        return fb.collection([order]) if order is not None else None


def _build(spec: ScenarioSpec, anchor: datetime) -> Iterator[Resource]:
    pid = spec.id
    patient = fb.patient(pid, spec.patient.birthDate, spec.patient.gender)
    patient["name"] = [{"family": "Synthetic", "given": [spec.id]}]
    yield patient
    n = 0

    def ident(resource: Resource, kind: str) -> Resource:
        nonlocal n
        n += 1
        resource["id"] = f"{pid}-{kind}-{n}"
        return resource

    for event in spec.events:
        at = anchor + timedelta(hours=event.h)
        if event.temp is not None:
            yield ident(fb.temperature(pid, at, event.temp), "obs")
        if event.temp_f is not None:
            yield ident(fb.temperature_f(pid, at, event.temp_f), "obs")
        if event.bp is not None:
            yield ident(fb.blood_pressure(pid, at, *event.bp), "obs")
        if event.sbp is not None:
            yield ident(fb.systolic(pid, at, event.sbp), "obs")
        if event.hr is not None:
            yield ident(fb.heart_rate(pid, at, event.hr), "obs")
        if event.rr is not None:
            yield ident(fb.respiratory_rate(pid, at, event.rr), "obs")
        if event.spo2 is not None:
            yield ident(fb.spo2(pid, at, event.spo2), "obs")
        if event.o2_flow is not None:
            yield ident(fb.oxygen_flow(pid, at, event.o2_flow), "obs")
        if event.device is not None:
            yield ident(fb.oxygen_device(pid, at, *event.device), "obs")
        if event.weight is not None:
            yield ident(fb.weight(pid, at, event.weight), "obs")
        if event.weight_lb is not None:
            yield ident(fb.weight(pid, at, event.weight_lb, "lb"), "obs")
        for lab, value in event.labs.items():
            code, display, unit = LABS[lab]
            yield ident(fb.lab(pid, at, code, display, value, unit), "obs")
        if event.local is not None:
            local = event.local
            yield ident(fb.observation(pid, at, None, local.text, local.value, local.unit), "obs")
        if event.ice is not None:
            yield ident(fb.ice_score(pid, at, event.ice, event.ice_items), "obs")
        if event.capd is not None:
            yield ident(fb.capd_score(pid, at, event.capd), "obs")
        if event.neuro is not None:
            yield ident(fb.neuro_finding(pid, at, event.neuro.domain, event.neuro.level), "obs")
        if event.give is not None:
            yield from _administration(pid, at, event.give, ident)


def _administration(
    pid: str, at: datetime, give: Give, ident: Callable[[Resource, str], Resource]
) -> Iterator[Resource]:
    end = at + timedelta(hours=give.hours) if give.hours else None
    medication_reference = None
    if give.reference:
        med = ident(fb.medication("", give.text, give.rxnorm), "med")
        medication_reference = f"Medication/{med['id']}"
        yield med
    admin = fb.administration(
        pid,
        at,
        rxnorm=None if give.reference else give.rxnorm,
        text=give.text,
        end=end,
        period=give.running,
        status="in-progress" if give.running else "completed",
        dose=give.dose,
        medication_reference=medication_reference,
    )
    yield ident(admin, "ma")


@cache
def library(path: Path = LIBRARY_FILE) -> dict[str, Scenario]:
    """Every scenario by id, in file order; raises ScenarioError naming file and field."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        parsed = LibraryFile.model_validate(data)
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"field {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ScenarioError(f"{path}: {problems}") from exc
    scenarios: dict[str, Scenario] = {}
    for spec in parsed.scenarios:
        if spec.id in scenarios:
            raise ScenarioError(f"{path}: scenario id {spec.id!r} appears more than once")
        if (spec.order is not None) != (spec.expect.service == "crs-order-sign"):
            raise ScenarioError(
                f"{path}: scenario {spec.id}: an order-sign case needs `order`, and only it"
            )
        scenarios[spec.id] = Scenario(spec)
    return scenarios


def get(scenario_id: str) -> Scenario:
    """One scenario by id; ScenarioError lists the known ids when it is not found."""
    scenarios = library()
    try:
        return scenarios[scenario_id]
    except KeyError:
        raise ScenarioError(f"no scenario {scenario_id!r}; known: {', '.join(scenarios)}") from None
