"""Evaluate: the gathered data of one patient, read and judged at one time.

The one place where the request's data meet the engine: the resources are normalised
into facts, each syndrome (CRS, ICANS) is assessed behind the syndrome contract
(engine/syndrome.py), the pre-infusion risk scores are computed for a CAR-T exposure and
the tocilizumab history counted.
The result, an `Evaluation`, is what every service decides its cards from; nothing
after this step reads FHIR again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cds.engine.dosing import DoseHistory, dose_history, latest_weight
from cds.engine.exposure import Exposure
from cds.engine.facts import Facts, Measurement, UnreadExposure
from cds.engine.grading import Grading
from cds.engine.icans import IcansGrading
from cds.engine.risk_scores import RiskAssessment, risk_scores
from cds.engine.syndrome import Assessment, SyndromeResult
from cds.fhir.normalise import Normaliser
from cds.fhir.orders import DraftOrders, read_draft_orders
from cds.fhir.reading import Issue, ResourceCollector, Truncated
from cds.runtime import Runtime


@dataclass(frozen=True)
class TocilizumabState:
    """What a tocilizumab dose depends on at the evaluation time."""

    weight: Measurement | None  # the most recent body weight
    history: DoseHistory  # doses given, and whether another is allowed now


@dataclass(frozen=True)
class Evaluation:
    """One patient at one time: the facts, what could not be read or was not sent, the
    exposure and the CRS grade (None outside any risk window), the ICANS assessment (None
    outside every ICANS window), the pre-infusion risk scores (CAR-T only), tocilizumab,
    and for the order hooks the draft orders."""

    at: datetime
    patient_id: str | None
    encounter_id: str | None
    facts: Facts
    issues: tuple[Issue, ...]
    truncated: tuple[Truncated, ...]  # prefetch Bundles whose further pages are missing
    exposure: Exposure | None
    crs: Grading | None
    tocilizumab: TocilizumabState
    orders: DraftOrders | None = None
    icans: Assessment[IcansGrading] | None = None
    risk: RiskAssessment | None = None
    # CAR-T, TCR-T or T-cell-engager administrations whose time could not be read
    unread_exposures: tuple[UnreadExposure, ...] = ()
    # tocilizumab given at a time that could not be read
    unread_doses: tuple[UnreadExposure, ...] = ()

    @property
    def syndromes(self) -> dict[str, Assessment[SyndromeResult]]:
        """Every syndrome assessed, by name (those outside their windows left out)."""
        found: dict[str, Assessment[SyndromeResult]] = {}
        if self.exposure is not None and self.crs is not None:
            found["crs"] = Assessment("crs", self.exposure, self.crs)
        if self.icans is not None:
            found["icans"] = self.icans
        return found

    @property
    def data_complete(self) -> bool:
        """False when part of the data was not sent and could not be fetched."""
        return not self.truncated

    @property
    def age(self) -> int | None:
        return self.facts.age_at(self.at)


def risk_data_since(runtime: Runtime, at: datetime) -> datetime:
    """How far back data can matter at `at` (and the FHIR fallback fetches): the longest
    risk window, plus one CRS episode gap (a window that closed during ongoing CRS stays
    open) and the look-back."""
    longest = max((w.window_hours for w in runtime.rules.windows.values()), default=0.0)
    grading = runtime.rules.grading
    return at - timedelta(hours=longest) - grading.episode_gap - grading.lookback


def evaluate(
    runtime: Runtime,
    collected: ResourceCollector,
    patient_id: str | None,
    at: datetime,
    *,
    encounter_id: str | None = None,
    draft_orders: Any = None,
    selections: list[str] | None = None,
) -> Evaluation:
    """Normalise, find the exposure, grade CRS and count tocilizumab at `at`; with
    `draft_orders` (order hooks), also read the (selected) tocilizumab orders."""
    normaliser = Normaliser(runtime.knowledge, patient_id, runtime.settings.assume_tz)
    normalised = normaliser.normalise(collected)
    born = normalised.facts.birth_date
    if born is not None and born > at.date():
        # (the age is then unknown: `Facts.age_at` gives none for a birth in the future)
        normalised.issues.append(
            Issue(
                normaliser.birth_location or "prefetch.patient.birthDate",
                # (the date is not repeated: a birth date identifies a patient, and the
                # cards' data issues are kept in the audit trail)
                "after the evaluation time: the patient's age is not known",
            )
        )
    unread = normalised.unread_exposures
    if unread:
        # (one given too long ago to open a window now, by the date it could be read to,
        # is a data issue only: migrated charts keep old entries without offsets)
        since = risk_data_since(runtime, at)
        unread = tuple(u for u in unread if u.not_after is None or u.not_after >= since)
    orders = (
        read_draft_orders(
            runtime.knowledge, normaliser, draft_orders, selections, normalised.medications
        )
        if draft_orders is not None
        else None
    )
    return judge(
        runtime,
        normalised.facts,
        at,
        patient_id=patient_id,
        encounter_id=encounter_id,
        issues=tuple(normalised.issues),
        truncated=tuple(collected.truncated),
        orders=orders,
        unread_exposures=unread,
        unread_doses=normalised.unread_doses,
    )


def judge(
    runtime: Runtime,
    facts: Facts,
    at: datetime,
    *,
    patient_id: str | None,
    encounter_id: str | None = None,
    issues: tuple[Issue, ...] = (),
    truncated: tuple[Truncated, ...] = (),
    orders: DraftOrders | None = None,
    unread_exposures: tuple[UnreadExposure, ...] = (),
    unread_doses: tuple[UnreadExposure, ...] = (),
) -> Evaluation:
    """The engine's part of an evaluation, on facts already read: the exposure, each
    syndrome, the risk scores and tocilizumab at `at` (also how a recorded decision is
    replayed from its stored facts)."""
    rules = runtime.rules
    assessed = rules.crs.assess(facts, at)
    exposure = assessed.exposure if assessed is not None else None
    crs = assessed.result if assessed is not None else None
    icans = rules.icans.assess(facts, at) if rules.icans is not None else None
    # the scores were built for CAR-T: after a CAR-T infusion, or after lymphodepletion
    # before any risk exposure
    risk = (
        risk_scores(facts, exposure, at, rules.risk_scores)
        if rules.risk_scores is not None and (exposure is None or exposure.kind == "car-t")
        else None
    )
    # the label's total of 4: no source resets it with a new CRS episode or a new risk
    # period (a bispecific's weekly dose after its window closed), so it counts every dose
    # in the reach of the risk data (the longest risk window, an episode gap, the look-back)
    counted_since = risk_data_since(runtime, at)
    undated = tuple(u.not_after for u in unread_doses)
    tocilizumab = TocilizumabState(
        latest_weight(facts, at),
        dose_history(facts, at, counted_since, rules.dosing, undated),
    )
    return Evaluation(
        at=at,
        patient_id=patient_id,
        encounter_id=encounter_id,
        facts=facts,
        issues=issues,
        truncated=truncated,
        exposure=exposure,
        crs=crs,
        tocilizumab=tocilizumab,
        orders=orders,
        icans=icans,
        risk=risk,
        unread_exposures=unread_exposures,
        unread_doses=unread_doses,
    )
