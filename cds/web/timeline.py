"""The CRS timeline of one stored evaluation: the vital signs, oxygen, medications and
the ASTCT grade over time, as the page draws them and as a table says them.

The grade band is the engine's: `Crs.assess` (exposure.find_exposure, then
grading.grade: the same step the service takes for a card) called at every instant where
its inputs change. Pure: the facts, the rules, the display zone and the time in; the
chart's data out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

import msgspec

from cds.engine.activity import activity_spans
from cds.engine.exposure import EXPOSURE_CLASSES, Exposure
from cds.engine.facts import Administration, Facts, Measurement
from cds.engine.syndrome import Crs

# An instant just after another: where a finding leaves the look-back window.
EPSILON = timedelta(microseconds=1)
# How much of the time before the risk period the chart shows (the baseline).
BEFORE_EXPOSURE = timedelta(hours=12)
# The risk window's end is drawn inside the chart when it falls this close after the
# evaluation; further out, the header names it (the course would be squeezed otherwise).
WINDOW_END_SHOWN_WITHIN = timedelta(days=2)

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # what the chart reads: wall-clock time in the zone


@dataclass(frozen=True)
class GradeSpan:
    """The grade from `start` until `end`: the ASTCT grade (None: outside the risk
    window) and the grade possible with fever masked by premedication, if any."""

    start: datetime
    end: datetime
    grade: int | None
    possible: int | None


def grade_series(crs: Crs, facts: Facts, since: datetime, until: datetime) -> list[GradeSpan]:
    """The CRS grade from `since` to `until`, as the engine gives it at each instant.

    The grade at t depends on the CRS activity (engine/activity.py: fever, hypotension,
    oxygen, pressors, masking therapy) before t, on what of it lies within the look-back
    or the episode gap, and on the administrations. It can change only where a piece of
    activity starts or ends, leaves the look-back or the episode gap, or a medication
    starts or stops, or the risk window ends: the engine is asked at those instants
    only, and holds its grade until the next. Measurements taken when there was no
    activity cannot change the grade, so it is asked on the activity's facts alone
    (tests/web compare both on every instant).
    """
    params = crs.parameters
    origin = datetime.min.replace(tzinfo=UTC)
    spans = activity_spans(facts, origin, until, crs.continuation)
    graded = Facts.build(
        _active_measurements(crs, facts, origin, until),
        list(facts.oxygen),
        list(facts.administrations),
        facts.birth_date,
        list(facts.neuro),
    )
    moments = {since, until}
    for start, end in spans:
        moments.add(start)
        if end > start:
            moments.add(end + EPSILON)
        moments.add(end + params.lookback + EPSILON)
        moments.add(end + params.episode_gap + EPSILON)
    for admin in facts.administrations:
        moments.add(admin.start)
        if admin.end is not None:
            moments.add(admin.end + EPSILON)
    assessed = crs.assess(graded, until)
    if assessed is not None:
        moments.add(assessed.exposure.window_ends + EPSILON)
    found: list[GradeSpan] = []
    for moment in sorted(m for m in moments if since <= m <= until):
        now = crs.assess(graded, moment)
        grade = now.result.grade if now is not None else None
        possible = now.result.possible_grade if now is not None else None
        if found and (found[-1].grade, found[-1].possible) == (grade, possible):
            continue
        if found:
            last = found[-1]
            found[-1] = GradeSpan(last.start, moment, last.grade, last.possible)
        found.append(GradeSpan(moment, until, grade, possible))
    return found


def _active_measurements(
    crs: Crs, facts: Facts, since: datetime, until: datetime
) -> list[Measurement]:
    """The measurements that are CRS activity by themselves (a fever, a low pressure, an
    oxygen flow), as the engine's activity rules say: asked per concept, so that a normal
    value charted at the time of another's fever is left out."""
    found: list[Measurement] = []
    for ms in facts.by_concept.values():
        alone = Facts(measurements=ms, by_concept={ms[0].concept: ms})
        active = {start for start, _ in activity_spans(alone, since, until, crs.continuation)}
        found.extend(m for m in ms if m.at in active)
    return found


# --- what the page's script reads (JSON) ----------------------------------------------


class Line(msgspec.Struct, frozen=True):
    """A measured concept over time."""

    label: str
    unit: str
    x: list[str]
    y: list[float]


class Threshold(msgspec.Struct, frozen=True):
    label: str
    value: float


class Marker(msgspec.Struct, frozen=True):
    """A dose, the exposure or an oxygen device, at one time."""

    x: str
    kind: str  # exposure | tocilizumab | corticosteroid | antipyretic | other | device
    label: str


class Bar(msgspec.Struct, frozen=True):
    """A vasopressor over the time it ran (`running`: not stopped by the evaluation)."""

    start: str
    end: str
    label: str
    running: bool


class Band(msgspec.Struct, frozen=True):
    start: str
    end: str
    grade: int | None
    possible: int | None
    label: str


class Chart(msgspec.Struct, frozen=True):
    """Everything the chart draws, times as wall-clock text in the display zone."""

    zone: str
    offsets: str
    start: str
    end: str
    evaluatedAt: str
    exposureAt: str
    windowEnds: str
    windowEndsShown: bool
    fever: Threshold
    systolic: Threshold
    meanArterial: Threshold | None
    lines: dict[str, Line]
    devices: list[Marker]
    pressors: list[Bar]
    doses: list[Marker]
    grades: list[Band]


# --- what the page says in words (template) -------------------------------------------


@dataclass(frozen=True)
class Row:
    """A line of the page's tables: when (with the offset), what, value."""

    at: str
    what: str
    value: str


@dataclass(frozen=True)
class Timeline:
    """The timeline page of one evaluation."""

    chart: Chart
    exposure: Exposure
    evaluated_at: datetime
    grade: int | None
    max_grade: int | None
    possible_grade: int | None
    day: int
    zone: str
    grade_rows: list[Row]
    event_rows: list[Row]
    points: int  # measurements drawn


def local_text(moment: datetime, zone: tzinfo) -> str:
    """`2026-11-05 14:15 +01:00`: the time in the zone, with its offset."""
    local = moment.astimezone(zone)
    return (
        local.strftime("%Y-%m-%d %H:%M ")
        + local.strftime("%z")[:3]
        + ":"
        + local.strftime("%z")[3:]
    )


def grade_text(grade: int | None, possible: int | None) -> str:
    if grade is None:
        return "outside the risk window"
    text = f"grade {grade}"
    if possible is not None:
        text += f" (possible grade {possible}: fever may be masked by premedication)"
    return text


# Which medication classes the chart marks, and how it names them.
DOSE_KINDS = {
    "tocilizumab": "tocilizumab",
    "corticosteroid": "corticosteroid",
    "antipyretic": "antipyretic",
    "cytokine-blocker": "other",
}
LINES = {
    "temperature": ("Temperature", "°C"),
    "systolic_bp": ("Systolic BP", "mmHg"),
    "mean_arterial_pressure": ("MAP", "mmHg"),
    "spo2": ("SpO2", "%"),
    "oxygen_flow": ("O2 flow", "L/min"),
}


def build(crs: Crs, facts: Facts, evaluated_at: datetime, zone: tzinfo) -> Timeline | None:
    """The timeline of the exposure in force at `evaluated_at` (None: outside every risk
    window then)."""
    assessed = crs.assess(facts, evaluated_at)
    if assessed is None:
        return None
    exposure, result = assessed.exposure, assessed.result
    params = crs.parameters
    start = exposure.risk_period_start - BEFORE_EXPOSURE
    end = evaluated_at
    window_shown = exposure.window_ends <= evaluated_at + WINDOW_END_SHOWN_WITHIN
    if window_shown:
        end = max(end, exposure.window_ends)

    def text(moment: datetime) -> str:
        return moment.astimezone(zone).strftime(TIME_FORMAT)

    lines: dict[str, Line] = {}
    points = 0
    for concept, (label, unit) in LINES.items():
        shown = [m for m in facts.of(concept) if start <= m.at <= evaluated_at]
        if concept == "mean_arterial_pressure" and params.map_below_mmhg is None and not shown:
            continue
        points += len(shown)
        lines[concept] = Line(label, unit, [text(m.at) for m in shown], [m.value for m in shown])
    devices = [
        Marker(text(o.at), "device", o.device)
        for o in facts.oxygen
        if start <= o.at <= evaluated_at
    ]
    in_view = [
        a
        for a in facts.administrations
        if a.start <= evaluated_at and a.end_or(evaluated_at) >= start
    ]
    pressors = [
        Bar(
            text(max(a.start, start)),
            text(min(a.end_or(evaluated_at), evaluated_at)),
            a.display,
            a.end is None or a.end > evaluated_at,
        )
        for a in in_view
        if a.medication_class == "vasopressor"
    ]
    doses = [
        Marker(text(a.start), _dose_kind(a), a.display)
        for a in in_view
        if a.start >= start and _dose_kind(a)
    ]
    series = grade_series(crs, facts, exposure.risk_period_start, evaluated_at)
    offsets = sorted(
        {_offset(moment.astimezone(zone)) for moment in (start, end, *(s.start for s in series))}
    )
    chart = Chart(
        zone=str(zone),
        offsets=" / ".join(offsets),
        start=text(start),
        end=text(end),
        evaluatedAt=text(evaluated_at),
        exposureAt=text(exposure.at),
        windowEnds=text(exposure.window_ends),
        windowEndsShown=window_shown,
        fever=Threshold(f"fever ≥ {params.fever_min_celsius:g} °C", params.fever_min_celsius),
        systolic=Threshold(
            f"hypotension: systolic < {params.systolic_below_mmhg:g} mmHg",
            params.systolic_below_mmhg,
        ),
        meanArterial=(
            Threshold(f"hypotension: MAP < {params.map_below_mmhg:g} mmHg", params.map_below_mmhg)
            if params.map_below_mmhg is not None
            else None
        ),
        lines=lines,
        devices=devices,
        pressors=pressors,
        doses=doses,
        grades=[
            Band(text(s.start), text(s.end), s.grade, s.possible, _band_label(s)) for s in series
        ],
    )
    return Timeline(
        chart=chart,
        exposure=exposure,
        evaluated_at=evaluated_at,
        grade=result.grade,
        max_grade=result.max_grade,
        possible_grade=result.possible_grade,
        day=exposure.day(evaluated_at),
        zone=str(zone),
        grade_rows=[
            Row(
                local_text(s.start, zone),
                f"until {local_text(s.end, zone)}",
                grade_text(s.grade, s.possible),
            )
            for s in series
        ],
        event_rows=_event_rows(in_view, facts, start, evaluated_at, zone),
        points=points,
    )


def _dose_kind(admin: Administration) -> str:
    if admin.medication_class in EXPOSURE_CLASSES:
        return "exposure"
    return DOSE_KINDS.get(admin.medication_class, "")


def _band_label(span: GradeSpan) -> str:
    if span.grade is None:
        return "no window"
    if span.possible is not None:
        return f"G{span.grade} (possible G{span.possible})"
    return f"G{span.grade}"


def _offset(local: datetime) -> str:
    raw = local.strftime("%z")
    return f"UTC{raw[:3]}:{raw[3:]}"


def _event_rows(
    admins: list[Administration],
    facts: Facts,
    start: datetime,
    until: datetime,
    zone: tzinfo,
) -> list[Row]:
    rows: list[tuple[datetime, Row]] = []
    for a in admins:
        if a.medication_class == "vasopressor":
            stop = "running" if a.end is None or a.end > until else local_text(a.end, zone)
            value = f"from {local_text(a.start, zone)} until {stop}"
            rows.append(
                (a.start, Row(local_text(a.start, zone), f"vasopressor: {a.display}", value))
            )
        elif _dose_kind(a):
            what = "exposure" if _dose_kind(a) == "exposure" else _dose_kind(a)
            rows.append((a.start, Row(local_text(a.start, zone), f"{what}: {a.display}", "given")))
    for o in facts.oxygen:
        if start <= o.at <= until:
            rows.append((o.at, Row(local_text(o.at, zone), "oxygen device", o.device)))
    rows.sort(key=lambda pair: pair[0])
    return [row for _, row in rows]
