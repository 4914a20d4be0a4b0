"""The syndrome contract: what CRS and ICANS (and a later syndrome) each provide.

A syndrome has a name, the measured concepts it reads, its own parameters and its own
risk window per product, and assesses facts at a time into a result with a grade, the
highest grade since the exposure, the evidence and warnings. Pure: no clock, I/O or
settings. CRS keeps its engine (exposure.find_exposure + grading.grade) unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Protocol, TypeVar

from cds.engine.activity import ActivityRules
from cds.engine.exposure import Exposure, TherapyWindow, find_exposure
from cds.engine.facts import CRS_CONCEPTS, ICANS_CONCEPTS, NEURO_CONCEPTS, Facts
from cds.engine.grading import Evidence, Grading, GradingParameters, grade
from cds.engine.icans import IcansGrading, IcansParameters, grade_icans


class SyndromeResult(Protocol):
    """What every syndrome's result says."""

    @property
    def grade(self) -> int: ...

    @property
    def max_grade(self) -> int: ...

    @property
    def evidence(self) -> list[Evidence]: ...

    @property
    def warnings(self) -> list[str]: ...


R = TypeVar("R", bound=SyndromeResult, covariant=True)


@dataclass(frozen=True)
class Assessment(Generic[R]):
    """A syndrome assessed at a time: the exposure whose window is open, and the result."""

    syndrome: str
    exposure: Exposure
    result: R


class Syndrome(Protocol[R]):
    """A syndrome the engine grades."""

    @property
    def name(self) -> str: ...

    @property
    def concepts(self) -> frozenset[str]: ...

    @property
    def windows(self) -> Mapping[str, TherapyWindow]: ...

    def assess(self, facts: Facts, at: datetime) -> Assessment[R] | None:
        """The assessment at `at`, or None outside every window of this syndrome."""
        ...


@dataclass(frozen=True)
class Crs:
    """Cytokine release syndrome, ASTCT 2019 (engine/grading.py)."""

    parameters: GradingParameters
    windows: dict[str, TherapyWindow]
    continuation: ActivityRules
    name: str = "crs"
    concepts: frozenset[str] = CRS_CONCEPTS

    def assess(self, facts: Facts, at: datetime) -> Assessment[Grading] | None:
        exposure = find_exposure(facts, self.windows, at, self.continuation)
        if exposure is None:
            return None
        return Assessment(self.name, exposure, grade(facts, exposure, at, self.parameters))


@dataclass(frozen=True)
class Icans:
    """Immune effector cell-associated neurotoxicity syndrome, ASTCT 2019 (engine/icans.py).
    Its windows are its own (rules/icans.yaml); a closed window is not kept open by
    activity (the windows cover the labels' neurotoxicity onset ranges)."""

    parameters: IcansParameters
    windows: dict[str, TherapyWindow]
    name: str = "icans"
    concepts: frozenset[str] = ICANS_CONCEPTS | NEURO_CONCEPTS

    def assess(self, facts: Facts, at: datetime) -> Assessment[IcansGrading] | None:
        exposure = find_exposure(facts, self.windows, at)
        if exposure is None:
            return None
        return Assessment(self.name, exposure, grade_icans(facts, exposure, at, self.parameters))
