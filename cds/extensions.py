"""The machine-readable `extension` of cards and responses, typed.

Field names are the JSON names (camelCase, as CDS Hooks and FHIR write them). Optional
fields default to None or () and are left out when so; a field without a default is
always written, so an empty list there says "none" (`problems: []`: no problem).
"""

from __future__ import annotations

from msgspec import Struct


class _Ext(Struct, frozen=True, omit_defaults=True):
    """Part of an extension."""


class IssueInfo(_Ext, frozen=True):
    """Data that could not be read: where, and what is wrong."""

    location: str
    problem: str


class IncompleteData(_Ext, frozen=True):
    """A prefetch Bundle whose further pages were neither sent nor fetched."""

    location: str
    entriesRead: int
    total: int | None = None


class EvidenceInfo(_Ext, frozen=True):
    finding: str
    label: str
    value: str
    unit: str
    at: str
    source: str


class ExposureInfo(_Ext, frozen=True):
    product: str
    display: str
    kind: str
    at: str
    windowEnds: str
    source: str
    extendedUntil: str | None = None


class MaskingDrug(_Ext, frozen=True):
    """The premedication that may mask a fever."""

    drug: str
    at: str
    source: str


class Acknowledged(_Ext, frozen=True):
    """A card shown quietly: a clinician already acted on this grade."""

    outcome: str  # accepted | overridden
    at: str  # when the clinician acted
    grade: int  # the grade then acknowledged
    until: str  # full alerts again after this time (or at a higher grade)


class TocilizumabAdvice(_Ext, frozen=True):
    """What the physician's CRS card says about tocilizumab."""

    indicated: bool
    dosesTotal: int
    dosesLast24h: int
    problems: tuple[str, ...]
    nextDoseAllowedAt: str | None = None
    recommendedDoseMg: float | None = None
    weightKg: float | None = None
    weightObservedAt: str | None = None


class RiskInput(_Ext, frozen=True):
    """One input of a pre-infusion risk score, in the score's unit (no value: missing)."""

    concept: str
    unit: str
    status: str  # used | missing | stale
    value: float | None = None
    at: str | None = None
    source: str | None = None


class RiskScoreInfo(_Ext, frozen=True):
    """`extension.crs.riskScores[]`: a pre-infusion score (information, never a grade)."""

    score: str
    inputs: tuple[RiskInput, ...]
    cutoff: str
    source: str
    predicts: str
    cohort: str
    verification: str  # confirmed | unconfirmed
    value: float | None = None
    category: str | None = None
    missing: tuple[str, ...] = ()
    stale: tuple[str, ...] = ()
    timePoint: str | None = None


class CrsInfo(_Ext, frozen=True):
    """`extension.crs` of the CRS card."""

    grade: int
    maxGrade: int
    gradingSystem: str
    exposure: ExposureInfo
    evidence: tuple[EvidenceInfo, ...]
    feverRequired: bool
    hypotensionDefinition: str
    lookbackHours: float
    warnings: tuple[str, ...]
    ruleSetVersion: str
    evaluatedAt: str
    dataComplete: bool
    maxGradeAt: str | None = None
    possibleGrade: int | None = None
    feverPossiblyMaskedBy: MaskingDrug | None = None
    # hypotension, hypoxia or a vasopressor with no current temperature: the grade if febrile
    gradeIfFebrile: int | None = None
    tocilizumab: TocilizumabAdvice | None = None
    acknowledged: Acknowledged | None = None
    riskScores: tuple[RiskScoreInfo, ...] = ()


class IcansInfo(_Ext, frozen=True):
    """`extension.icans` of the ICANS card."""

    grade: int
    maxGrade: int
    gradingSystem: str
    exposure: ExposureInfo
    evidence: tuple[EvidenceInfo, ...]
    warnings: tuple[str, ...]
    lookbackHours: float
    concurrentCrsGrade: int
    ruleSetVersion: str
    evaluatedAt: str
    dataComplete: bool
    maxGradeAt: str | None = None
    encephalopathyTool: str | None = None


class TocilizumabCheck(_Ext, frozen=True):
    """`extension.tocilizumabCheck` of a pharmacist's card."""

    order: str
    problems: tuple[str, ...]
    orderedDose: str
    dosesLast24h: int
    dosesTotal: int
    ruleSetVersion: str
    orderedDoseMg: float | None = None
    recommendedDoseMg: float | None = None
    weightKg: float | None = None
    weightObservedAt: str | None = None
    hoursSinceLastDose: float | None = None
    nextDoseAllowedAt: str | None = None


class CardExtension(_Ext, frozen=True):
    """A card's `extension`: its finding, and the data it could not read."""

    crs: CrsInfo | None = None
    icans: IcansInfo | None = None
    tocilizumabCheck: TocilizumabCheck | None = None
    dataIssues: tuple[IssueInfo, ...] = ()
    incompleteData: tuple[IncompleteData, ...] = ()
    riskScores: tuple[RiskScoreInfo, ...] = ()  # the pre-infusion card (before any exposure)


class ResponseExtension(_Ext, frozen=True):
    """The response's own `extension`, when no card carries what the integrators must
    see: data that could not be read, or were not sent."""

    dataIssues: tuple[IssueInfo, ...] = ()
    incompleteData: tuple[IncompleteData, ...] = ()
