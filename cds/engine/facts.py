"""Normalised clinical facts: what the engine sees instead of FHIR.

Values are in the concept's canonical unit (°C, kg, mm[Hg], L/min, %), times are
timezone-aware instants, and each fact names the FHIR resource it came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Measurement:
    """A numeric observation, e.g. temperature 38.4 Cel at 2026-11-20T08:00Z."""

    concept: str
    value: float
    unit: str
    at: datetime
    source: str
    original: str | None = None  # as recorded, when it differs ("101.1 [degF]")


@dataclass(frozen=True, slots=True)
class OxygenSupport:
    """Documented oxygen support (device or therapy), with its ASTCT support class."""

    support: str  # nasal-cannula | low-flow | high-flow | facemask | ... | positive-pressure
    device: str
    at: datetime
    source: str


@dataclass(frozen=True, slots=True)
class Administration:
    """A medication given: instant (start == end) or a period; end None = still running."""

    concept: str
    medication_class: str
    display: str
    start: datetime
    end: datetime | None
    source: str
    dose_mg: float | None = None
    dose_mg_per_kg: float | None = None

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

    @classmethod
    def build(
        cls,
        measurements: list[Measurement],
        oxygen: list[OxygenSupport],
        administrations: list[Administration],
    ) -> Facts:
        """Facts sorted by time, with measurements indexed by concept."""
        measurements = sorted(measurements, key=lambda m: m.at)
        index: dict[str, list[Measurement]] = {}
        for m in measurements:
            index.setdefault(m.concept, []).append(m)
        return cls(
            measurements=tuple(measurements),
            oxygen=tuple(sorted(oxygen, key=lambda o: o.at)),
            administrations=tuple(sorted(administrations, key=lambda a: a.start)),
            by_concept={concept: tuple(items) for concept, items in index.items()},
        )

    def of(self, concept: str) -> tuple[Measurement, ...]:
        """Measurements of one concept, oldest first."""
        return self.by_concept.get(concept, ())
