"""Is the patient inside a CRS risk window after a CAR-T infusion or a T-cell engager dose?"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cds.engine.activity import ActivityRules, activity_spans
from cds.engine.facts import Administration, Facts

EXPOSURE_CLASSES = frozenset({"car-t", "bispecific"})
# An end this far out (e.g. a 9999-12-31 placeholder for "no end") is open-ended.
FAR_FUTURE = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class TherapyWindow:
    """A product's risk window, from rules/therapies.yaml (possibly overridden)."""

    product: str
    display: str
    kind: str
    window_hours: float


@dataclass(frozen=True)
class Exposure:
    """The exposure behind the current risk period.

    `at` is the most recent infusion or dose (what the card counts days from);
    `episode_start` is the first administration of the unbroken run of risk windows that
    leads to it (step-up doses, bag changes), from which CRS findings and the episode's
    tocilizumab doses are counted.
    """

    product: str
    display: str
    kind: str
    at: datetime
    window_ends: datetime
    source: str
    doses: int  # administrations of this product up to `at`
    episode_start: datetime
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
class _Episode:
    start: datetime
    end: datetime
    administrations: list[Administration]


def _episodes(facts: Facts, windows: dict[str, TherapyWindow], at: datetime) -> list[_Episode]:
    """Risk administrations up to `at`, grouped into runs of overlapping windows."""
    episodes: list[_Episode] = []
    for admin in facts.administrations:  # sorted by start
        if admin.medication_class not in EXPOSURE_CLASSES or admin.start > at:
            continue
        window = windows.get(admin.concept)
        if window is None:
            continue
        ends = plus_hours(admin.end_or(at), window.window_hours)
        if episodes and admin.start <= episodes[-1].end:
            episodes[-1].end = max(episodes[-1].end, ends)
            episodes[-1].administrations.append(admin)
        else:
            episodes.append(_Episode(admin.start, ends, [admin]))
    return episodes


def _activity_continues(
    facts: Facts, episode: _Episode, at: datetime, rules: ActivityRules
) -> datetime | None:
    """Until when CRS activity (fever, hypotension, pressors, oxygen, masking therapy),
    starting inside the window and each piece within the look-back of the last, keeps
    the closed window open (None if it does not reach `at`)."""
    open_until = episode.end
    for start, end in activity_spans(facts, episode.start, at, rules):
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
    form one episode. With `continuation`, a window that has closed stays open while CRS
    activity continues (a fever, hypotension, a pressor, oxygen or a masking therapy
    inside the window, then each within the look-back of the last): a patient with
    ongoing CRS never loses the card. Anything after `at` is ignored.
    """
    episodes = _episodes(facts, windows, at)
    if not episodes:
        return None
    episode = episodes[-1]
    extended: datetime | None = None
    if at > episode.end:
        if continuation is None:
            return None
        extended = _activity_continues(facts, episode, at, continuation)
        if extended is None:
            return None
    latest = max(episode.administrations, key=lambda a: a.start)
    window = windows[latest.concept]
    # every dose of the product so far: "dose 6" must not read as a first step-up dose
    doses = sum(1 for a in facts.administrations if a.concept == latest.concept and a.start <= at)
    return Exposure(
        product=latest.concept,
        display=window.display,
        kind=window.kind,
        at=latest.start,
        window_ends=episode.end,
        source=latest.source,
        doses=doses,
        episode_start=episode.start,
        extended_until=extended,
    )
