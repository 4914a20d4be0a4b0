"""Is the patient inside a CRS risk window after a CAR-T infusion or a T-cell engager dose?"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cds.engine.facts import Administration, Facts

EXPOSURE_CLASSES = frozenset({"car-t", "bispecific"})


@dataclass(frozen=True)
class TherapyWindow:
    """A product's risk window, from rules/therapies.yaml (possibly overridden)."""

    product: str
    display: str
    kind: str
    window_hours: float


@dataclass(frozen=True)
class Exposure:
    """The administration that opened the current risk window."""

    product: str
    display: str
    kind: str
    at: datetime
    window_ends: datetime
    source: str
    doses: int  # administrations of this product up to `at` (step-up doses for bispecifics)

    def day(self, at: datetime) -> int:
        """Whole days elapsed since the exposure (day 0 = the day of infusion/dose)."""
        return int((at - self.at) // timedelta(days=1))


def find_exposure(facts: Facts, windows: dict[str, TherapyWindow], at: datetime) -> Exposure | None:
    """The most recent CAR-T infusion or antibody dose whose window contains `at`.

    A window runs from the start of the administration to `window_hours` after its end
    (a running infusion has not ended). Administrations after `at` are ignored.
    """
    best: Administration | None = None
    best_end: datetime | None = None
    for admin in facts.administrations:
        if admin.medication_class not in EXPOSURE_CLASSES or admin.start > at:
            continue
        window = windows.get(admin.concept)
        if window is None:
            continue
        ends = admin.end_or(at) + timedelta(hours=window.window_hours)
        if admin.start <= at <= ends and (best is None or admin.start >= best.start):
            best, best_end = admin, ends
    if best is None or best_end is None:
        return None
    window = windows[best.concept]
    doses = sum(1 for a in facts.administrations if a.concept == best.concept and a.start <= at)
    return Exposure(
        product=best.concept,
        display=window.display,
        kind=window.kind,
        at=best.start,
        window_ends=best_end,
        source=best.source,
        doses=doses,
    )
