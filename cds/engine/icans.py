"""ASTCT 2019 ICANS grading from normalised facts. Pure: no clock, I/O or settings.

Each domain gives a grade: the encephalopathy score (ICE from age 12, CAPD for younger
children), the level of consciousness, seizures, motor findings and raised intracranial
pressure / cerebral oedema; the worst domain sets the grade. Of the states (ICE, CAPD,
consciousness) the latest assessment in the look-back counts; of the events (seizure,
motor, ICP) any in the look-back. ICE 0 is grade 3 (awake with global aphasia); an
unarousable patient is grade 4 by the consciousness domain. Whether a finding is
attributable to another cause is the clinician's call: the card says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cds.engine.exposure import Exposure
from cds.engine.facts import Facts, Measurement, NeuroFinding
from cds.engine.grading import Evidence
from cds.formatting import fmt_value

STATE_DOMAINS = ("ice", "capd", "consciousness")
EVENT_DOMAINS = ("seizure", "motor", "icp")
DOMAIN_LABEL = {
    "ice": "ICE score",
    "capd": "CAPD score",
    "consciousness": "Level of consciousness",
    "seizure": "Seizure",
    "motor": "Motor findings",
    "icp": "Raised ICP / cerebral oedema",
}


@dataclass(frozen=True)
class ScoreBand:
    low: int
    high: int
    grade: int


@dataclass(frozen=True)
class IcansParameters:
    """The thresholds of rules/icans.yaml, possibly overridden."""

    ice_bands: tuple[ScoreBand, ...]
    ice_max: int
    capd_below_age: int
    capd_delirium_from: int
    capd_delirium_grade: int
    capd_grade1_from: int
    level_grades: dict[str, dict[str, int]]
    lookback: timedelta


@dataclass(frozen=True)
class DomainFinding:
    """One domain's finding at a time, with the grade it gives."""

    domain: str
    grade: int
    label: str
    value: str
    unit: str
    at: datetime
    source: str
    level: str = ""

    def evidence(self) -> Evidence:
        return Evidence(self.domain, self.label, self.value, self.unit, self.at, self.source)


@dataclass(frozen=True)
class IcansGrading:
    """The result of ICANS grading at `at`."""

    grade: int
    max_grade: int
    max_grade_at: datetime | None
    assessed: bool  # any ICANS assessment or finding since the exposure
    encephalopathy_tool: str | None  # "ICE" | "CAPD" | None
    evidence: list[Evidence] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    drivers: list[str] = field(default_factory=list)  # the domains that set the grade
    domains: dict[str, int] = field(default_factory=dict)  # domain -> its grade now
    seizure: bool = False  # a seizure counts now
    assessed_now: bool = True  # any assessment or finding in the look-back window


def ice_grade(total: float, params: IcansParameters) -> int:
    """The grade of an ICE total (10: none)."""
    for band in params.ice_bands:
        if band.low <= total <= band.high:
            return band.grade
    return 0


def capd_grade(total: float, params: IcansParameters) -> int:
    if total >= params.capd_delirium_from:
        return params.capd_delirium_grade
    return 1 if total >= params.capd_grade1_from else 0


def _in(items: tuple[Measurement, ...], since: datetime, at: datetime) -> list[Measurement]:
    return [m for m in items if since <= m.at <= at]


def _findings(
    facts: Facts, since: datetime, at: datetime, params: IcansParameters
) -> list[DomainFinding]:
    found: list[DomainFinding] = []
    for m in _in(facts.of("ice_score"), since, at):
        grade = ice_grade(m.value, params)
        found.append(
            DomainFinding(
                "ice", grade, "ICE score", fmt_value(m.value), f"/ {params.ice_max}", m.at, m.source
            )
        )
    for m in _in(facts.of("capd_score"), since, at):
        grade = capd_grade(m.value, params)
        found.append(
            DomainFinding("capd", grade, "CAPD score", fmt_value(m.value), "", m.at, m.source)
        )
    for n in facts.neuro:
        if since <= n.at <= at:
            found.append(_neuro(n, params))
    return found


def _neuro(n: NeuroFinding, params: IcansParameters) -> DomainFinding:
    grade = params.level_grades.get(n.domain, {}).get(n.level, 0)
    return DomainFinding(
        n.domain,
        grade,
        DOMAIN_LABEL.get(n.domain, n.domain),
        n.display,
        "",
        n.at,
        n.source,
        n.level,
    )


def grade_icans(
    facts: Facts, exposure: Exposure, at: datetime, params: IcansParameters
) -> IcansGrading:
    """Grade ICANS at `at` (ASTCT 2019) and the highest grade reached since the exposure."""
    since = exposure.risk_period_start
    found = _findings(facts, since, at, params)
    if not found:
        return IcansGrading(0, 0, None, False, None)
    lookback_start = max(at - params.lookback, since)
    now: dict[str, DomainFinding] = {}
    for f in found:  # facts are sorted by time: the latest state wins
        if f.at < lookback_start:
            continue
        if f.domain in STATE_DOMAINS or f.domain not in now or f.grade >= now[f.domain].grade:
            now[f.domain] = f
    warnings: list[str] = []
    consciousness = now.get("consciousness")
    ice = now.get("ice")
    if ice is not None and ice.value == "0":
        if consciousness is not None and consciousness.level == "unarousable":
            now["ice"] = _relabel(ice, "ICE score (unarousable, unable to perform ICE)")
        elif consciousness is not None:
            now["ice"] = _relabel(ice, "ICE score (awake with global aphasia)")
        else:
            warnings.append(
                "ICE score 0 with no level of consciousness charted: graded 3 (awake with "
                "global aphasia); an unarousable patient is grade 4. Chart the level of "
                "consciousness."
            )
    age = facts.age_at(at)
    if ice is not None and age is not None and age < params.capd_below_age:
        warnings.append(
            f"Child aged {age}: ASTCT grades encephalopathy below age {params.capd_below_age} "
            "by the CAPD, not the ICE score (the ICE score charted is graded as given)."
        )
    if now.get("capd") is not None and age is None:
        warnings.append(
            f"Patient age unknown: the CAPD grades ICANS only below age "
            f"{params.capd_below_age}; check the birth date."
        )
    seizure = now.get("seizure")
    if seizure is not None and seizure.level == "unspecified":
        warnings.append(
            "Seizure charted without its course: graded 3; grade 4 if it lasted more than "
            "5 minutes or seizures repeated without return to baseline."
        )
    edema = now.get("icp")
    if edema is not None and edema.level == "edema-unspecified":
        warnings.append(
            "Cerebral oedema charted without its extent: graded 3 (focal/local); grade 4 if "
            "diffuse on neuroimaging."
        )
    grade = max((f.grade for f in now.values()), default=0)
    drivers = [DOMAIN_LABEL[d] for d, f in now.items() if grade > 0 and f.grade == grade]
    max_grade, max_at = 0, None
    for f in found:
        if f.grade > max_grade:
            max_grade, max_at = f.grade, f.at
    if grade > max_grade:
        max_grade, max_at = grade, at
    if not now and max_grade > 0:
        # nothing assessed is not "no finding": ICANS seen before may still be there
        warnings.append(
            f"No ICANS assessment (ICE or CAPD score, neurological finding) charted in the "
            f"look-back window, the latest at {found[-1].at.isoformat()}: ICANS, grade "
            f"{max_grade} since the exposure, cannot be judged now — not a resolution. "
            "Assess the patient."
        )
    order = {d: i for i, d in enumerate((*STATE_DOMAINS, *EVENT_DOMAINS))}
    evidence = [f.evidence() for f in sorted(now.values(), key=lambda f: order.get(f.domain, 9))]
    tool = "CAPD" if "capd" in now else "ICE" if "ice" in now else None
    return IcansGrading(
        grade=grade,
        max_grade=max_grade,
        max_grade_at=max_at,
        assessed=True,
        encephalopathy_tool=tool,
        evidence=evidence,
        warnings=warnings,
        drivers=drivers,
        domains={d: f.grade for d, f in now.items()},
        seizure=seizure is not None and seizure.grade > 0,
        assessed_now=bool(now),
    )


def _relabel(f: DomainFinding, label: str) -> DomainFinding:
    return DomainFinding(f.domain, f.grade, label, f.value, f.unit, f.at, f.source, f.level)
