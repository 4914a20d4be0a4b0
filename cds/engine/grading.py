"""ASTCT 2019 CRS grading from normalised facts. Pure: no clock, I/O or settings.

The grade at a time t uses the findings recorded in the look-back window [t - L, t]
(and not before the exposure). Fever >= the fever threshold is required, except once a
patient who had CRS fever has received a masking therapy (tocilizumab, corticosteroid,
antipyretic): then hypotension and hypoxia grade on their own. The grade is the more
severe of hypotension and hypoxia, and at least 1 when fever is present.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cds.engine.activity import ActivityRules, activity_spans, crs_episodes
from cds.engine.exposure import Exposure
from cds.engine.facts import Administration, Facts, Measurement, UndatedFinding
from cds.formatting import fmt_value, hours


@dataclass(frozen=True)
class GradeTable:
    """The grades of the ASTCT table's rows (rules/astct.yaml `grades`); oxygen support
    classes have theirs in `GradingParameters.grade_by_support`."""

    fever: int  # fever alone
    hypotension: int  # not requiring vasopressors
    one_vasopressor: int  # with or without vasopressin
    multiple_vasopressors: int  # vasopressin not counted


@dataclass(frozen=True)
class GradingParameters:
    """The thresholds the grade depends on: from rules/astct.yaml, possibly overridden."""

    grades: GradeTable
    fever_min_celsius: float
    systolic_below_mmhg: float
    map_below_mmhg: float | None
    low_flow_max_l_per_min: float
    grade_by_support: dict[str, int]
    vasopressors_not_counted: frozenset[str]
    masking_classes: frozenset[str]
    lookback: timedelta
    episode_gap: timedelta
    spo2_warning_below: float
    room_air_fio2_percent: float
    # product -> hours before a dose within which a masking drug is its premedication
    premedication_hours: dict[str, float] = field(default_factory=dict)
    # the hypotension definition is an adult one: below this age the card says so
    adult_from_age_years: int | None = None
    adult_citation: str = ""
    # no temperature charted for longer than this inside a risk window is a data gap
    # (rules/alerting.yaml `watch.temperature_gap_hours`; None: not checked)
    temperature_gap: timedelta | None = None

    def activity(self) -> ActivityRules:
        """What counts as CRS activity, for episodes and window continuation."""
        return ActivityRules(
            self.fever_min_celsius,
            self.systolic_below_mmhg,
            self.map_below_mmhg,
            self.masking_classes,
            self.lookback,
            self.episode_gap,
        )

    def hypotension_definition(self) -> str:
        """The definition used, as shown on the card."""
        text = f"systolic BP < {self.systolic_below_mmhg:g} mmHg"
        if self.map_below_mmhg is not None:
            text += f" or MAP < {self.map_below_mmhg:g} mmHg"
        return text


@dataclass(frozen=True)
class Evidence:
    """One finding behind the grade, for the card's table and the extension."""

    finding: str  # fever | hypotension | vasopressor | oxygen | spo2-low | lab | masking
    label: str
    value: str
    unit: str
    at: datetime
    source: str

    def as_json(self) -> dict[str, str]:
        """The evidence as the card extension carries it."""
        return {
            "finding": self.finding,
            "label": self.label,
            "value": self.value,
            "unit": self.unit,
            "at": self.at.isoformat(),
            "source": self.source,
        }


@dataclass(frozen=True)
class Grading:
    """The result of grading at `at`."""

    grade: int
    max_grade: int
    max_grade_at: datetime | None
    fever_in_window: bool
    fever_masked_since: datetime | None
    latest_fever_at: datetime | None
    febrile_run_start: datetime | None  # first fever of the current unbroken febrile run
    crs_episode_start: datetime | None  # start of the CRS activity going on now, if any
    evidence: list[Evidence] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    drivers: list[str] = field(default_factory=list)  # what set a grade >= 2
    # Hypotension or hypoxia without fever after premedication (a masking drug before a
    # dose, or in the risk period before any CRS fever): the grade those findings would
    # give, and the drug that may mask the fever. The ASTCT grade itself stays 0.
    possible_grade: int | None = None
    fever_possibly_masked_by: Administration | None = None
    # the latest temperature charted by `at` in the risk period (None: none), and whether
    # none was charted for longer than the data-gap limit
    last_temperature_at: datetime | None = None
    temperature_gap: bool = False
    # a grade hypotension could raise, with no blood pressure (nor vasopressor) recorded
    # in the look-back window
    blood_pressure_unknown: bool = False
    # hypotension, hypoxia or a vasopressor without any temperature in the look-back
    # window: the grade they give if the patient is febrile (fever not assessed)
    unassessed_grade: int | None = None
    # findings (a fever, a low blood pressure, oxygen) charted at a time that could not
    # be read and that may fall in the look-back window: not graded
    undated_findings: int = 0

    @property
    def data_missing(self) -> bool:
        """Whether the grade rests on data not charted (a temperature overdue, none in
        the look-back window with CRS findings, no blood pressure where it would count):
        the card is never `info` and never quieted by an acknowledgement."""
        return (
            self.temperature_gap
            or self.blood_pressure_unknown
            or (self.unassessed_grade is not None)
            or self.undated_findings > 0
        )

    @property
    def fever_duration(self) -> timedelta | None:
        """How long the current fever has lasted: from the first fever of the unbroken
        febrile run (no gap longer than the look-back between fevers) to the latest one,
        if the latest is within the look-back."""
        if self.febrile_run_start is None or self.latest_fever_at is None:
            return None
        if not self.fever_in_window:
            return None
        return self.latest_fever_at - self.febrile_run_start


@dataclass(frozen=True, slots=True)
class _Finding:
    """A hypotension or hypoxia finding: active from start to end, with its grade."""

    start: datetime
    end: datetime
    grade: int
    label: str


def _in(ms: tuple[Measurement, ...], start: datetime, end: datetime) -> list[Measurement]:
    """Measurements with start <= at <= end (input sorted by time)."""
    times = [m.at for m in ms]
    return list(ms[bisect.bisect_left(times, start) : bisect.bisect_right(times, end)])


def _multiple_vasopressor_intervals(
    pressors: list[Administration], not_counted: frozenset[str], at: datetime
) -> list[tuple[datetime, datetime]]:
    """Intervals during which two or more distinct counted vasopressors ran together."""
    events: list[tuple[datetime, int, str]] = []
    for admin in pressors:
        if admin.concept in not_counted:
            continue
        # starts sort before ends at the same instant: touching administrations overlap
        events.append((admin.start, 0, admin.concept))
        events.append((admin.end_or(at), 1, admin.concept))
    events.sort()
    active: dict[str, int] = {}
    intervals: list[tuple[datetime, datetime]] = []
    opened: datetime | None = None
    for when, kind, concept in events:
        if kind == 0:
            active[concept] = active.get(concept, 0) + 1
            if len(active) >= 2 and opened is None:
                opened = when
        else:
            active[concept] -= 1
            if active[concept] == 0:
                del active[concept]
            if len(active) < 2 and opened is not None:
                intervals.append((opened, when))
                opened = None
    return intervals


def _oxygen_grade(support: str, params: GradingParameters) -> int:
    if support == "nasal-cannula":
        return params.grade_by_support["low-flow"]
    return params.grade_by_support[support]


def _findings(
    facts: Facts, exposure: Exposure, at: datetime, params: GradingParameters
) -> tuple[list[_Finding], list[Administration]]:
    """Hypotension and hypoxia findings between the exposure and `at`."""
    found: list[_Finding] = []
    since = exposure.risk_period_start
    for m in _in(facts.of("systolic_bp"), since, at):
        if m.value < params.systolic_below_mmhg:
            found.append(
                _Finding(
                    m.at, m.at, params.grades.hypotension, "hypotension not requiring vasopressors"
                )
            )
    if params.map_below_mmhg is not None:
        for m in _in(facts.of("mean_arterial_pressure"), since, at):
            if m.value < params.map_below_mmhg:
                found.append(
                    _Finding(
                        m.at,
                        m.at,
                        params.grades.hypotension,
                        "hypotension not requiring vasopressors",
                    )
                )
    # The flow threshold is the nasal cannula's (ASTCT): a flow charted at the same time
    # as another device (blow-by, a mask, CPAP) is graded by that device instead.
    devices_at = {o.at for o in facts.oxygen if o.support != "nasal-cannula"}
    for m in _in(facts.of("oxygen_flow"), since, at):
        if m.value <= 0 or m.at in devices_at:
            continue
        support = "low-flow" if m.value <= params.low_flow_max_l_per_min else "high-flow"
        label = (
            f"low-flow oxygen (<= {params.low_flow_max_l_per_min:g} L/min)"
            if support == "low-flow"
            else f"high-flow oxygen (> {params.low_flow_max_l_per_min:g} L/min)"
        )
        found.append(_Finding(m.at, m.at, params.grade_by_support[support], label))
    # Oxygen charted only as an inhaled concentration above room air (no device, no flow
    # at that time) is oxygen support all the same: graded as the least support the table
    # grades (low-flow nasal cannula or blow-by), with a warning that it may be more.
    for m in _undevised_fio2(facts, since, at, params):
        found.append(
            _Finding(
                m.at,
                m.at,
                params.grade_by_support["low-flow"],
                f"oxygen support (FiO2 {fmt_value(m.value)} %, no device charted)",
            )
        )
    for o in facts.oxygen:
        if since <= o.at <= at:
            found.append(
                _Finding(o.at, o.at, _oxygen_grade(o.support, params), f"oxygen by {o.device}")
            )
    pressors = [
        a
        for a in facts.administrations
        if a.medication_class == "vasopressor" and a.start <= at and a.end_or(at) >= since
    ]
    for a in pressors:
        found.append(
            _Finding(
                max(a.start, since),
                min(a.end_or(at), at),
                params.grades.one_vasopressor,
                f"hypotension requiring a vasopressor ({a.display})",
            )
        )
    for start, end in _multiple_vasopressor_intervals(
        pressors, params.vasopressors_not_counted, at
    ):
        found.append(
            _Finding(
                max(start, since),
                min(end, at),
                params.grades.multiple_vasopressors,
                "hypotension requiring multiple vasopressors (vasopressin not counted)",
            )
        )
    return found, pressors


def _masked_since(
    facts: Facts, first_fever: datetime | None, until: datetime, params: GradingParameters
) -> tuple[datetime | None, Administration | None]:
    """When a masking therapy was first given after `first_fever` (up to `until`)."""
    if first_fever is None:
        return None, None
    for a in facts.administrations:  # sorted by start
        if a.start > until:
            break
        # given at the same charted time as the fever counts: charting order is arbitrary
        if a.medication_class in params.masking_classes and a.start >= first_fever:
            return a.start, a
    return None, None


@dataclass(frozen=True)
class _Masking:
    """Per CRS episode: from when fever is no longer required, and by which therapy."""

    start: datetime
    end: datetime
    since: datetime | None
    admin: Administration | None


def _maskings(
    facts: Facts,
    fever_times: list[datetime],
    since: datetime,
    at: datetime,
    params: GradingParameters,
) -> list[_Masking]:
    """Masking is per CRS episode: a fever and the therapy after it mask hypotension and
    hypoxia of the same episode, not of one weeks later after a CRS-free gap."""
    runs = crs_episodes(activity_spans(facts, since, at, params.activity()), params.episode_gap)
    found: list[_Masking] = []
    for run in runs:
        i = bisect.bisect_left(fever_times, run.start)
        first = fever_times[i] if i < len(fever_times) and fever_times[i] <= run.end else None
        masked, admin = _masked_since(facts, first, min(run.end, at), params)
        found.append(_Masking(run.start, run.end, masked, admin))
    return found


def _episode_of(maskings: list[_Masking], moment: datetime) -> _Masking | None:
    for m in maskings:
        if m.start <= moment <= m.end:
            return m
    return None


def grade(facts: Facts, exposure: Exposure, at: datetime, params: GradingParameters) -> Grading:
    """Grade CRS at `at` (ASTCT 2019) and the highest grade reached since the exposure."""
    lookback_start = max(at - params.lookback, exposure.risk_period_start)
    temps = _in(facts.of("temperature"), exposure.risk_period_start, at)
    fevers = [m for m in temps if m.value >= params.fever_min_celsius]
    fever_times = [m.at for m in fevers]
    first_fever = fever_times[0] if fever_times else None
    window_fevers = [m for m in fevers if m.at >= lookback_start]
    maskings = _maskings(facts, fever_times, exposure.risk_period_start, at, params)
    now = maskings[-1] if maskings and maskings[-1].end >= at - params.episode_gap else None
    masked_since, masking_admin = (now.since, now.admin) if now else (None, None)

    findings, pressors = _findings(facts, exposure, at, params)

    # Current grade: findings active within the look-back window.
    current_findings = [f for f in findings if f.end >= lookback_start and f.start <= at]
    severity = max((f.grade for f in current_findings), default=0)
    drivers = list(dict.fromkeys(f.label for f in current_findings if f.grade == severity))
    if window_fevers:
        current = max(params.grades.fever, severity)
    elif masked_since is not None:
        current = severity
    else:
        current = 0

    # Highest grade since exposure: a finding active over [s, e] counts at any t in
    # [s, min(e + L, at)]; it is gated by a fever in [s - L, min(e + L, at)] or by a
    # masking therapy given by then.
    max_grade, max_at = (params.grades.fever, first_fever) if first_fever is not None else (0, None)
    for f in findings:
        if f.grade <= max_grade:
            continue
        last = min(f.end + params.lookback, at)
        i = bisect.bisect_left(fever_times, f.start - params.lookback)
        run = _episode_of(maskings, f.start)
        if i < len(fever_times) and fever_times[i] <= last:
            max_grade, max_at = f.grade, max(f.start, fever_times[i])
        elif run is not None and run.since is not None and run.since <= last:
            max_grade, max_at = f.grade, max(f.start, run.since)
    if current > max_grade:
        max_grade, max_at = current, at

    possible_grade, premedication = (
        _possible_grade(facts, exposure, current_findings, fever_times, at, params)
        if current == 0 and severity > 0
        else (None, None)
    )
    if premedication is not None:
        drivers = list(
            dict.fromkeys(
                f.label
                for f in current_findings
                if f.grade == possible_grade and f.end >= premedication.start
            )
        )

    undevised = _undevised_fio2(facts, lookback_start, at, params)
    evidence = _evidence(
        facts, window_fevers, lookback_start, at, pressors, masking_admin, undevised, params
    )
    warnings = _warnings(facts, lookback_start, at, undevised, params)
    if premedication is not None:
        evidence.append(
            Evidence(
                "premedication",
                f"{premedication.display} (premedication)",
                "may mask fever",
                "",
                premedication.start,
                premedication.source,
            )
        )
    earlier = [m for m in maskings[:-1] if m.since is not None] if now is not None else []
    last_masked = earlier[-1] if earlier else None
    if (
        severity > 0
        and current == 0
        and last_masked is not None
        and last_masked.since is not None
        and last_masked.admin is not None
    ):
        warnings.append(
            f"Hypotension or hypoxia without fever: an earlier CRS fever was treated with "
            f"{last_masked.admin.display} ({last_masked.since.isoformat()}), but more than "
            f"{params.episode_gap.total_seconds() / 3600:g} h passed without CRS findings, so this "
            "is graded as a new episode in which fever is required. Assess clinically."
        )
    last_temperature_at = temps[-1].at if temps else None
    gap = _temperature_gap(last_temperature_at, exposure.risk_period_start, at, params)
    if gap is not None:
        warnings.append(gap)
    # Hypotension, hypoxia or a vasopressor, fever required, and no current temperature
    # (none in the look-back window, or the latest past the data-gap limit): not
    # "afebrile" but unknown; if febrile, the findings' grade.
    none_in_lookback = last_temperature_at is None or last_temperature_at < lookback_start
    unassessed_grade = None
    if (
        severity > 0
        and current == 0
        and masked_since is None
        and possible_grade is None
        and (none_in_lookback or gap is not None)
    ):
        unassessed_grade = max(params.grades.fever, severity)
        found = ", ".join(dict.fromkeys(f.label for f in current_findings if f.grade == severity))
        latest = (
            "none recorded in the look-back window"
            if none_in_lookback or last_temperature_at is None
            else f"the latest {hours_since(last_temperature_at, at)} h ago"
        )
        warnings.append(
            f"No current temperature ({latest}), with {found}: fever, which ASTCT requires, "
            f"cannot be assessed — if the patient is febrile this is CRS grade "
            f"{unassessed_grade}. Check the patient's temperature now."
        )
    # A grade that hypotension could raise (below the hypotension grade: a fever, fever
    # masked, or fever possibly masked by premedication), and no blood pressure in use nor
    # vasopressor in the look-back window: no hypotension recorded is not none present.
    blood_pressure_unknown = (
        current < params.grades.hypotension
        and (
            current > 0
            or masked_since is not None
            or any(_premedications(facts, exposure, fever_times, at, params))
        )
        and not _in(facts.of("systolic_bp"), lookback_start, at)
        and not (
            params.map_below_mmhg is not None
            and _in(facts.of("mean_arterial_pressure"), lookback_start, at)
        )
        and not any(a.end_or(at) >= lookback_start for a in pressors)
    )
    if blood_pressure_unknown:
        warnings.append(
            "No blood pressure recorded in the look-back window: hypotension cannot be "
            "assessed, so the grade may be understated. Check the patient and chart the "
            "blood pressure."
        )
    undated = _undated_findings(facts, lookback_start, params)
    if undated:
        listed = "; ".join(f"{u.shown} ({u.location})" for u in undated[:3])
        more = f" and {len(undated) - 3} more" if len(undated) > 3 else ""
        warnings.append(
            f"Charted at a time that cannot be read (e.g. no time zone), so not graded: "
            f"{listed}{more}. These may fall in the look-back window: the grade may be "
            "understated. Correct the time in the record (or set CRS_ASSUME_TIMEZONE)."
        )
    age = facts.age_at(at)
    if age is not None and params.adult_from_age_years and age < params.adult_from_age_years:
        warnings.append(
            f"Paediatric patient (age {age}): the hypotension definition in use "
            f"({params.hypotension_definition()}) is an adult threshold; judge hypotension by "
            f"age-specific norms. ({params.adult_citation.strip()})"
        )
    return Grading(
        grade=current,
        max_grade=max_grade,
        max_grade_at=max_at,
        fever_in_window=bool(window_fevers),
        fever_masked_since=masked_since,
        latest_fever_at=fever_times[-1] if fever_times else None,
        febrile_run_start=_febrile_run_start(fever_times, params.lookback),
        crs_episode_start=now.start if now else None,
        evidence=evidence,
        warnings=warnings,
        drivers=drivers if current >= 2 or possible_grade is not None else [],
        possible_grade=possible_grade,
        fever_possibly_masked_by=premedication,
        last_temperature_at=last_temperature_at,
        temperature_gap=gap is not None,
        blood_pressure_unknown=blood_pressure_unknown,
        unassessed_grade=unassessed_grade,
        undated_findings=len(undated),
    )


def _undated_findings(
    facts: Facts, lookback_start: datetime, params: GradingParameters
) -> list[UndatedFinding]:
    """Undated charting that would be a CRS finding (a fever, hypotension, oxygen
    support) and may fall in the look-back window (its date unread, or not before it)."""

    def finding(u: UndatedFinding) -> bool:
        value = u.value
        if u.concept in ("oxygen_support", "vasopressor"):
            return True
        if value is None:
            return False
        if u.concept == "temperature":
            return value >= params.fever_min_celsius
        if u.concept == "systolic_bp":
            return value < params.systolic_below_mmhg
        if u.concept == "mean_arterial_pressure":
            return params.map_below_mmhg is not None and value < params.map_below_mmhg
        if u.concept == "oxygen_flow":
            return value > 0
        if u.concept == "inhaled_oxygen_concentration":
            return value > params.room_air_fio2_percent
        return False

    return [
        u
        for u in facts.undated
        if (u.not_after is None or u.not_after >= lookback_start) and finding(u)
    ]


def _temperature_gap(
    last: datetime | None, period_start: datetime, at: datetime, params: GradingParameters
) -> str | None:
    """The warning when no temperature was charted for longer than the data-gap limit,
    counted from the latest temperature of the risk period, or from its start when none
    was charted in it (as the watch counts its data gaps)."""
    limit = params.temperature_gap
    since = last if last is not None else period_start
    if limit is None or at - since <= limit:
        return None
    charted = (
        f"the latest at {last.isoformat()}"
        if last is not None
        else f"none since the risk period began, {period_start.isoformat()}"
    )
    return (
        f"No temperature charted for more than the {hours(limit.total_seconds())} h "
        f"data-gap limit ({charted}, {hours_since(since, at)} h ago): fever, which ASTCT "
        "grading requires, cannot be judged on current data. Check the patient and chart a "
        "temperature."
    )


def hours_since(since: datetime, at: datetime) -> str:
    """The hours from `since` to `at`, to a tenth: "12.3"."""
    return hours(round((at - since).total_seconds() / 360) * 360)


def _is_premedication(
    admin: Administration,
    exposure: Exposure,
    fever_times: list[datetime],
    params: GradingParameters,
) -> bool:
    """A masking drug given within the premedication interval before a dose of the risk
    period, or in the risk period before any CRS fever."""
    for dose in exposure.risk_doses:
        hours = params.premedication_hours.get(dose.concept)
        if hours is not None and dose.start - timedelta(hours=hours) <= admin.start <= dose.start:
            return True
    return admin.start >= exposure.risk_period_start and not (
        fever_times and fever_times[0] <= admin.start
    )


def _premedications(
    facts: Facts,
    exposure: Exposure,
    fever_times: list[datetime],
    at: datetime,
    params: GradingParameters,
) -> Iterator[Administration]:
    """The masking drugs given by `at` that count as premedication (before a dose of the
    risk period, or in it before any CRS fever): the fever ASTCT requires may be masked."""
    earliest = exposure.risk_period_start - timedelta(
        hours=max(params.premedication_hours.values(), default=0.0)
    )
    for admin in facts.administrations:  # sorted by start
        if admin.start > at:
            return
        if (
            admin.medication_class in params.masking_classes
            and admin.start >= earliest
            and _is_premedication(admin, exposure, fever_times, params)
        ):
            yield admin


def _possible_grade(
    facts: Facts,
    exposure: Exposure,
    current: list[_Finding],
    fever_times: list[datetime],
    at: datetime,
    params: GradingParameters,
) -> tuple[int | None, Administration | None]:
    """The grade that hypotension or hypoxia (now, without fever) would give if fever was
    masked by premedication, and the premedication; (None, None) when none was given.
    Findings count from the premedication on; the highest grade wins, then the latest drug.
    """
    best: tuple[int, Administration] | None = None
    for admin in _premedications(facts, exposure, fever_times, at, params):
        grade_after = max((f.grade for f in current if f.end >= admin.start), default=0)
        if grade_after > 0 and (best is None or grade_after >= best[0]):
            best = (grade_after, admin)
    return (best[0], best[1]) if best is not None else (None, None)


def _measurement_evidence(finding: str, label: str, m: Measurement) -> Evidence:
    value = fmt_value(m.value)
    if m.original:
        value = f"{value} ({m.original})"
    return Evidence(finding, label, value, m.unit, m.at, m.source)


def _evidence(
    facts: Facts,
    window_fevers: list[Measurement],
    start: datetime,
    at: datetime,
    pressors: list[Administration],
    masking_admin: Administration | None,
    undevised: list[Measurement],
    params: GradingParameters,
) -> list[Evidence]:
    """The findings behind the current grade, most telling first (`undevised`: FiO2
    readings charted with no device or flow)."""
    items: list[Evidence] = []
    if window_fevers:
        hottest = max(window_fevers, key=lambda m: (m.value, m.at))
        items.append(_measurement_evidence("fever", "Max temperature", hottest))
    else:
        temps = _in(facts.of("temperature"), start, at)
        if temps:
            items.append(_measurement_evidence("temperature", "Latest temperature", temps[-1]))
    sbps = _in(facts.of("systolic_bp"), start, at)
    if sbps:
        lowest = min(sbps, key=lambda m: (m.value, m.at))
        finding = "hypotension" if lowest.value < params.systolic_below_mmhg else "blood-pressure"
        items.append(_measurement_evidence(finding, "Lowest systolic BP", lowest))
    maps = _in(facts.of("mean_arterial_pressure"), start, at)
    if maps and params.map_below_mmhg is not None:
        lowest = min(maps, key=lambda m: (m.value, m.at))
        finding = "hypotension" if lowest.value < params.map_below_mmhg else "blood-pressure"
        items.append(_measurement_evidence(finding, "Lowest MAP", lowest))
    for a in pressors:
        if a.end_or(at) >= start:
            running = "running" if a.end is None else f"until {a.end.isoformat()}"
            items.append(Evidence("vasopressor", a.display, running, "", a.start, a.source))
    flows = _in(facts.of("oxygen_flow"), start, at)
    if flows:
        items.append(
            _measurement_evidence("oxygen", "Max O2 flow", max(flows, key=lambda m: m.value))
        )
    devices = [o for o in facts.oxygen if start <= o.at <= at]
    if devices:
        top = max(devices, key=lambda o: (_oxygen_grade(o.support, params), o.at))
        items.append(Evidence("oxygen", "O2 support", top.device, "", top.at, top.source))
    if undevised:
        items.append(
            _measurement_evidence("oxygen", "Max FiO2", max(undevised, key=lambda m: m.value))
        )
    spo2 = _in(facts.of("spo2"), start, at)
    if spo2:
        lowest = min(spo2, key=lambda m: (m.value, m.at))
        items.append(_measurement_evidence("spo2", "Lowest SpO2", lowest))
    if masking_admin is not None:
        items.append(
            Evidence(
                "masking",
                f"{masking_admin.display} after CRS fever",
                "fever no longer required",
                "",
                masking_admin.start,
                masking_admin.source,
            )
        )
    for concept, label in (("crp", "CRP"), ("ferritin", "Ferritin"), ("il6", "IL-6")):
        labs = _in(facts.of(concept), start, at)
        if labs:
            items.append(_measurement_evidence("lab", label, labs[-1]))
    return items


def _febrile_run_start(fever_times: list[datetime], gap: timedelta) -> datetime | None:
    """The first fever of the latest run of fevers each within `gap` of the previous."""
    if not fever_times:
        return None
    start = fever_times[-1]
    for earlier in reversed(fever_times[:-1]):
        if start - earlier > gap:
            break
        start = earlier
    return start


def _undevised_fio2(
    facts: Facts, since: datetime, at: datetime, params: GradingParameters
) -> list[Measurement]:
    """Inhaled O2 concentrations above room air charted with no device and no flow at
    the same time."""
    above = [
        m
        for m in _in(facts.of("inhaled_oxygen_concentration"), since, at)
        if m.value > params.room_air_fio2_percent
    ]
    if not above:
        return above  # (the usual case: no FiO2 above room air charted)
    charted = {o.at for o in facts.oxygen} | {m.at for m in facts.of("oxygen_flow") if m.value > 0}
    return [m for m in above if m.at not in charted]


def _warnings(
    facts: Facts,
    start: datetime,
    at: datetime,
    undevised: list[Measurement],
    params: GradingParameters,
) -> list[str]:
    """Findings that cannot change the grade but a clinician must see (`undevised`: the
    FiO2 readings in the look-back window charted with no device or flow)."""
    warnings: list[str] = []
    low = [m for m in _in(facts.of("spo2"), start, at) if m.value < params.spo2_warning_below]
    has_support = (
        any(start <= o.at <= at for o in facts.oxygen)
        or any(m.value > 0 for m in _in(facts.of("oxygen_flow"), start, at))
        or any(
            m.value > params.room_air_fio2_percent
            for m in _in(facts.of("inhaled_oxygen_concentration"), start, at)
        )
    )
    if low and not has_support:
        lowest = min(low, key=lambda m: m.value)
        warnings.append(
            f"SpO2 {fmt_value(lowest.value)} % at {lowest.at.isoformat()} with no oxygen support "
            "documented: hypoxia is graded by the support given, so this does not raise the "
            "grade. Check the patient and document any oxygen support."
        )
    high_flow_at = {o.at for o in facts.oxygen if o.support == "high-flow" and start <= o.at <= at}
    slow = (
        [
            m
            for m in _in(facts.of("oxygen_flow"), start, at)
            if m.at in high_flow_at and 0 < m.value <= params.low_flow_max_l_per_min
        ]
        if high_flow_at
        else []
    )
    if slow:
        m = slow[-1]
        warnings.append(
            f"High-flow nasal cannula charted with {fmt_value(m.value)} L/min at "
            f"{m.at.isoformat()}: ASTCT's high flow is > {params.low_flow_max_l_per_min:g} "
            f"L/min (grade {params.grade_by_support['high-flow']}), low flow "
            f"≤ {params.low_flow_max_l_per_min:g} L/min (grade "
            f"{params.grade_by_support['low-flow']}). Graded by the device; check the device "
            "and the flow."
        )
    if undevised:
        top = max(undevised, key=lambda m: m.value)
        low_flow = params.grade_by_support["low-flow"]
        warnings.append(
            f"FiO2 {fmt_value(top.value)} % at {top.at.isoformat()} documents oxygen support "
            f"with no device or flow charted: graded as low-flow oxygen (grade {low_flow}); "
            "a facemask, Venturi mask or high-flow nasal cannula would be grade "
            f"{params.grade_by_support['high-flow']}. Chart the device and flow."
        )
    return warnings
