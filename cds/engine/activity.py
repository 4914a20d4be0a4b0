"""CRS activity over time: when something CRS-like was going on, grouped into episodes.

Activity is a fever, hypotension, a vasopressor running, oxygen support, or a masking
therapy (tocilizumab, corticosteroid, antipyretic). Spans of activity no further apart
than the episode gap (rules/astct.yaml) form one CRS episode. Episodes decide which
fever a masking therapy masks and where the tocilizumab total of an episode starts;
activity also keeps a closed risk window open. Pure: no clock, I/O or settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cds.engine.facts import Facts


@dataclass(frozen=True)
class ActivityRules:
    """What counts as CRS activity (thresholds from rules/astct.yaml)."""

    fever_min_celsius: float
    systolic_below_mmhg: float
    map_below_mmhg: float | None
    masking_classes: frozenset[str]
    lookback: timedelta  # a closed window stays open this long after each activity
    episode_gap: timedelta  # activity further apart than this starts a new episode


@dataclass(frozen=True)
class CrsEpisode:
    """An unbroken run of CRS activity (no gap longer than the episode gap)."""

    start: datetime
    end: datetime


def activity_spans(
    facts: Facts, since: datetime, at: datetime, rules: ActivityRules
) -> list[tuple[datetime, datetime]]:
    """(start, end) of every piece of CRS activity between `since` and `at`, sorted."""
    spans: list[tuple[datetime, datetime]] = []
    for m in facts.of("temperature"):
        if since <= m.at <= at and m.value >= rules.fever_min_celsius:
            spans.append((m.at, m.at))
    for m in facts.of("systolic_bp"):
        if since <= m.at <= at and m.value < rules.systolic_below_mmhg:
            spans.append((m.at, m.at))
    if rules.map_below_mmhg is not None:
        for m in facts.of("mean_arterial_pressure"):
            if since <= m.at <= at and m.value < rules.map_below_mmhg:
                spans.append((m.at, m.at))
    for m in facts.of("oxygen_flow"):
        if since <= m.at <= at and m.value > 0:
            spans.append((m.at, m.at))
    spans.extend((o.at, o.at) for o in facts.oxygen if since <= o.at <= at)
    for a in facts.administrations:
        if a.start > at:
            break
        if a.medication_class == "vasopressor" or a.medication_class in rules.masking_classes:
            end = min(a.end_or(at), at)
            if end >= since:
                spans.append((max(a.start, since), end))
    spans.sort()
    return spans


def crs_episodes(spans: list[tuple[datetime, datetime]], gap: timedelta) -> list[CrsEpisode]:
    """Spans merged into CRS episodes: a span starting within `gap` of the last one joins it."""
    runs: list[CrsEpisode] = []
    for start, end in spans:
        if runs and start <= runs[-1].end + gap:
            if end > runs[-1].end:
                runs[-1] = CrsEpisode(runs[-1].start, end)
        else:
            runs.append(CrsEpisode(start, end))
    return runs
