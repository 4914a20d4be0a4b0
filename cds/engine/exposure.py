"""Is the patient inside a CRS risk window after a CAR-T infusion or a T-cell engager dose?"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cds.engine.activity import ActivityRules, activity_spans
from cds.engine.facts import Administration, Facts

EXPOSURE_CLASSES = frozenset({"car-t", "tcr-t", "bispecific"})
# An end this far out (e.g. a 9999-12-31 placeholder for "no end") is open-ended.
FAR_FUTURE = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class TherapyWindow:
    """A product's risk window, from rules/therapies.yaml (possibly overridden), and how
    long before a dose a masking drug counts as its premedication."""

    product: str
    display: str
    kind: str
    window_hours: float
    premedication_hours: float


@dataclass(frozen=True)
class Exposure:
    """The exposure behind the current risk period.

    `at` is the most recent infusion or dose (what the card counts days from). The risk
    period is the unbroken run of overlapping risk windows that leads to it (step-up
    doses, bag changes): it starts at `risk_period_start`, its first administration, from
    which CRS findings are counted; `risk_doses` are its administrations.
    """

    product: str
    display: str
    kind: str
    at: datetime
    window_ends: datetime
    source: str
    doses: int  # administrations of this product up to `at`
    risk_period_start: datetime
    risk_doses: tuple[Administration, ...] = ()
    extended_until: datetime | None = None  # window closed, CRS activity goes on

    def day(self, at: datetime) -> int:
        """Whole days elapsed since the exposure (day 0 = the day of infusion/dose)."""
        return int((at - self.at) // timedelta(days=1))


def plus_hours(moment: datetime, hours: float) -> datetime:
    """`moment + hours`, saturating at FAR_FUTURE instead of overflowing."""
    try:
        return moment + timedelta(hours=hours)
    except OverflowError:
        return FAR_FUTURE


@dataclass
class _RiskPeriod:
    """Administrations whose risk windows overlap, and when the last window ends."""

    start: datetime
    end: datetime
    administrations: list[Administration]


def _risk_periods(
    facts: Facts, windows: dict[str, TherapyWindow], at: datetime
) -> list[_RiskPeriod]:
    """Risk administrations up to `at`, grouped into runs of overlapping windows."""
    periods: list[_RiskPeriod] = []
    for admin in facts.administrations:  # sorted by start
        if admin.medication_class not in EXPOSURE_CLASSES or admin.start > at:
            continue
        window = windows.get(admin.concept)
        if window is None:
            continue
        ends = plus_hours(admin.end_or(at), window.window_hours)
        if periods and admin.start <= periods[-1].end:
            periods[-1].end = max(periods[-1].end, ends)
            periods[-1].administrations.append(admin)
        else:
            periods.append(_RiskPeriod(admin.start, ends, [admin]))
    return periods


def _activity_continues(
    facts: Facts, period: _RiskPeriod, at: datetime, rules: ActivityRules
) -> datetime | None:
    """Until when CRS activity (fever, hypotension, pressors, oxygen, masking therapy),
    starting inside the window and each piece within the look-back of the last, keeps
    the closed window open (None if it does not reach `at`)."""
    open_until = period.end
    for start, end in activity_spans(facts, period.start, at, rules):
        if start > open_until:
            break
        open_until = max(open_until, plus_hours(end, rules.lookback.total_seconds() / 3600))
    return open_until if at <= open_until else None


def find_exposure(
    facts: Facts,
    windows: dict[str, TherapyWindow],
    at: datetime,
    continuation: ActivityRules | None = None,
) -> Exposure | None:
    """The exposure whose risk window contains `at`, or None.

    A product's window runs from the start of an administration to `window_hours` after
    its end (a running infusion has not ended). Administrations whose windows overlap
    form one risk period. With `continuation`, a window that has closed stays open while CRS
    activity continues (a fever, hypotension, a pressor, oxygen or a masking therapy
    inside the window, then each within the look-back of the last): a patient with
    ongoing CRS never loses the card. Anything after `at` is ignored.
    """
    periods = _risk_periods(facts, windows, at)
    if not periods:
        return None
    period = periods[-1]
    extended: datetime | None = None
    if at > period.end:
        if continuation is None:
            return None
        extended = _activity_continues(facts, period, at, continuation)
        if extended is None:
            return None
    latest = max(period.administrations, key=lambda a: a.start)
    window = windows[latest.concept]
    # every dose of the product so far: "dose 6" must not read as a first step-up dose
    doses = sum(1 for a in facts.administrations if a.concept == latest.concept and a.start <= at)
    return Exposure(
        product=latest.concept,
        display=window.display,
        kind=window.kind,
        at=latest.start,
        window_ends=period.end,
        source=latest.source,
        doses=doses,
        risk_period_start=period.start,
        risk_doses=tuple(period.administrations),
        extended_until=extended,
    )
