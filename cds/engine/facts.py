"""Normalised clinical facts: what the engine sees instead of FHIR.

Values are in the concept's canonical unit (°C, kg, mm[Hg], L/min, %), times are
timezone-aware instants, and each fact names the FHIR resource it came from.

The facts a chart yields number in thousands, so they are msgspec structs: immutable
like frozen dataclasses, built several times faster, and not tracked by the garbage
collector (they hold no cycles).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from operator import attrgetter

from msgspec import Struct

# The measured concepts the rules read (engine/ and the cards), per reader: each
# syndrome names its own (engine/syndrome.py), dosing reads the weight, the pre-infusion
# risk scores their labs. fhir_mappings/ recognises more (heart rate, respiratory rate,
# diastolic pressure: recognised, so never mistaken for something else); the normaliser
# makes facts of these only, so the rest of a chart's vital signs cost no conversion.
# `Facts.of` refuses any other concept.
CRS_CONCEPTS = frozenset(
    {
        "temperature",
        "systolic_bp",
        "mean_arterial_pressure",
        "oxygen_flow",
        "spo2",
        "inhaled_oxygen_concentration",
        "crp",
        "ferritin",
        "il6",
    }
)
ICE_ITEM_CONCEPTS = frozenset(
    {"ice_orientation", "ice_naming", "ice_commands", "ice_writing", "ice_attention"}
)
ICANS_CONCEPTS = frozenset({"ice_score", "capd_score"}) | ICE_ITEM_CONCEPTS
# Coded neurological findings (level of consciousness, seizure, motor, raised ICP): the
# normaliser makes `NeuroFinding`s of these, not measurements.
NEURO_CONCEPTS = frozenset({"neuro_consciousness", "neuro_seizure", "neuro_motor", "neuro_icp"})
DOSING_CONCEPTS = frozenset({"body_weight"})
RISK_SCORE_CONCEPTS = frozenset(
    {"ldh", "creatinine", "platelets", "hemoglobin", "anc", "crp", "ferritin"}
)
CONCEPTS_READ = (
    CRS_CONCEPTS | ICANS_CONCEPTS | NEURO_CONCEPTS | DOSING_CONCEPTS | RISK_SCORE_CONCEPTS
)


class Measurement(Struct, frozen=True, gc=False):
    """A numeric observation, e.g. temperature 38.4 Cel at 2026-11-20T08:00Z."""

    concept: str
    value: float
    unit: str
    at: datetime
    source: str
    original: str | None = None  # as recorded, when it differs ("101.1 [degF]")


class OxygenSupport(Struct, frozen=True, gc=False):
    """Documented oxygen support (device or therapy), with its ASTCT support class."""

    support: str  # nasal-cannula | low-flow | high-flow | facemask | ... | positive-pressure
    device: str
    at: datetime
    source: str


class NeuroFinding(Struct, frozen=True, gc=False):
    """A charted neurological finding that grades ICANS: its domain (consciousness,
    seizure, motor, icp) and level (rules/icans.yaml `levels`), e.g. consciousness
    awakens-to-voice, from an Observation's coded value, a Condition or a
    QuestionnaireResponse."""

    domain: str
    level: str
    display: str
    at: datetime
    source: str


def age_on(born: date | None, at: datetime) -> int | None:
    """Whole years of age at `at` of someone born on `born`; None when the birth date is
    unknown, or after `at` (an error in the data: no age)."""
    today = at.date()
    if born is None or born > today:
        return None
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


class UnreadExposure(Struct, frozen=True, gc=False):
    """An administration recognised but not read (its time could not be): a CAR-T, TCR-T
    or T-cell engager (a risk window may be open that the rules cannot place), or
    tocilizumab (a dose the interval and the counts must know of)."""

    display: str
    location: str  # where in the request (e.g. prefetch.medicationAdministrations.entry[2])
    # the latest it can have been given, when its date could be read (None: any time)
    not_after: datetime | None = None


class UndatedFinding(Struct, frozen=True, gc=False):
    """A vital sign or an oxygen device charted at a time that could not be read (no time
    zone and no CRS_ASSUME_TIMEZONE, an impossible date): not graded, but it may fall in
    the look-back window — the grade may be understated."""

    concept: str  # a measurement concept, "oxygen_support" (a device) or "vasopressor"
    value: float | None  # in the concept's canonical unit (None: a device)
    shown: str  # what was charted, e.g. "38.9 Cel", "Venturi mask"
    location: str  # where in the request
    # the latest instant it can have been charted, when its date could be read
    not_after: datetime | None = None


class Administration(Struct, frozen=True, gc=False):
    """A medication given: instant (start == end) or a period; end None = still running."""

    concept: str
    medication_class: str
    display: str
    start: datetime
    end: datetime | None
    source: str

    def end_or(self, at: datetime) -> datetime:
        """The end of the administration, or `at` when it is still running."""
        return self.end if self.end is not None else at


@dataclass(frozen=True)
class Facts:
    """Everything known about one patient, normalised; sorted by time."""

    measurements: tuple[Measurement, ...] = ()
    oxygen: tuple[OxygenSupport, ...] = ()
    administrations: tuple[Administration, ...] = ()
    by_concept: dict[str, tuple[Measurement, ...]] = field(default_factory=dict, compare=False)
    birth_date: date | None = None  # Patient.birthDate, when a full date is known
    neuro: tuple[NeuroFinding, ...] = ()
    undated: tuple[UndatedFinding, ...] = ()  # charted at a time that could not be read

    @classmethod
    def build(
        cls,
        measurements: list[Measurement],
        oxygen: list[OxygenSupport],
        administrations: list[Administration],
        birth_date: date | None = None,
        neuro: list[NeuroFinding] | None = None,
        undated: list[UndatedFinding] | None = None,
    ) -> Facts:
        """Facts sorted by time, with measurements indexed by concept."""
        measurements = sorted(measurements, key=_AT)
        index: dict[str, list[Measurement]] = {}
        for m in measurements:
            concept = m.concept
            if concept in index:
                index[concept].append(m)
            else:
                index[concept] = [m]
        return cls(
            measurements=tuple(measurements),
            oxygen=tuple(sorted(oxygen, key=_AT)),
            administrations=tuple(sorted(administrations, key=_START)),
            by_concept={concept: tuple(items) for concept, items in index.items()},
            birth_date=birth_date,
            neuro=tuple(sorted(neuro or (), key=_AT)),
            undated=tuple(undated or ()),
        )

    def age_at(self, at: datetime) -> int | None:
        """Whole years of age at `at`, when the birth date is known."""
        return age_on(self.birth_date, at)

    def of(self, concept: str) -> tuple[Measurement, ...]:
        """Measurements of one concept, oldest first."""
        if concept not in CONCEPTS_READ:
            raise KeyError(f"{concept!r} is not in CONCEPTS_READ: no facts are made of it")
        return self.by_concept.get(concept, ())


_AT = attrgetter("at")
_START = attrgetter("start")
