"""Load and validate the clinical knowledge: `rules/` and `fhir_mappings/`.

Every file is validated by a pydantic model at start-up. A file that does not validate
stops start-up with a `KnowledgeError` naming the file and the field. The loaded
`Knowledge` holds the cited rules, lookup indexes built from the mappings, and the
rule-set version that every card names.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from cds.questionnaires import items_by_url

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def bundled_dir(name: str) -> Path:
    """The bundled knowledge directory `name` (`rules` or `fhir_mappings`).

    In a checkout or an editable install it is the repository's own directory, so an edit
    takes effect at the next start; an installed wheel carries a copy as package data,
    `cds/_bundled/<name>` (put there by setup.py), found through importlib.resources.
    """
    checkout = PROJECT_ROOT / name
    if (PROJECT_ROOT / "pyproject.toml").is_file() and checkout.is_dir():
        return checkout
    # A wheel is installed unpacked, so the resource is a directory on disk.
    return Path(str(resources.files("cds") / "_bundled" / name))


DEFAULT_RULES_DIR = bundled_dir("rules")
DEFAULT_MAPPINGS_DIR = bundled_dir("fhir_mappings")


_M = TypeVar("_M", bound=BaseModel)


class KnowledgeError(Exception):
    """A rule or mapping file is missing or invalid; the message names file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Verification(_Strict):
    """Whether a cited value was checked against its source: `confirmed` names what was
    read (`source`) and when (`read`); `unconfirmed` says `why` not. Start-up logs every
    unconfirmed value, and /healthz counts them."""

    status: Literal["confirmed", "unconfirmed"]
    source: str | None = None
    read: date | None = None
    why: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> Verification:
        if self.status == "confirmed" and not (self.source and self.read):
            raise ValueError("a confirmed value needs `source` (what was read) and `read` (when)")
        if self.status == "unconfirmed" and not self.why:
            raise ValueError("an unconfirmed value needs `why` it could not be confirmed")
        return self


class Source(_Strict):
    """A citation shared by several entries of a mapping file (referred to by key)."""

    text: str
    verification: Verification


@dataclass(frozen=True)
class UnconfirmedValue:
    """A cited value not (yet) confirmed against its source: where it is, and why."""

    file: str
    path: str
    why: str

    def as_json(self) -> dict[str, str]:
        return {"file": self.file, "path": self.path, "why": self.why}


def _verifications(value: Any, path: str) -> Iterator[tuple[str, Verification]]:
    """Every Verification inside a loaded model, with its dotted path."""
    if isinstance(value, Verification):
        yield path, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _verifications(getattr(value, name), f"{path}.{name}" if path else name)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _verifications(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _verifications(item, f"{path}[{_item_name(item, i)}]")


def _item_name(item: Any, index: int) -> str:
    """How a path names a list item: by its identifying field where it has one."""
    for name in ("product", "concept", "code", "grade"):
        key = getattr(item, name, None)
        if key is not None:
            return f"{name}={key}"
    return str(index)


# --- rules/ruleset.yaml ------------------------------------------------------------


class RuleSetFile(_Strict):
    name: str
    version: str


# --- rules/astct.yaml ----------------------------------------------------------------

SupportClass = Literal[
    "low-flow", "high-flow", "facemask", "non-rebreather", "venturi", "positive-pressure"
]
# The kinds of product that open a CRS risk window: CAR-T and TCR-T cell therapies, and
# T-cell-engaging antibodies (bispecific, or monovalent like tebentafusp).
TherapyKind = Literal["car-t", "tcr-t", "bispecific"]
MedicationClass = Literal[
    "car-t",
    "tcr-t",
    "bispecific",
    "tocilizumab",
    "corticosteroid",
    "antipyretic",
    "vasopressor",
    "cytokine-blocker",
    "lymphodepletion",
]


class FeverRule(_Strict):
    min_celsius: float = Field(gt=35, lt=42)
    citation: str
    verification: Verification


class GradesRule(_Strict):
    """The grade each row of the ASTCT table gives (oxygen classes: `oxygen`)."""

    fever: int = Field(ge=1, le=4)
    hypotension_without_vasopressors: int = Field(ge=1, le=4)
    one_vasopressor: int = Field(ge=1, le=4)
    multiple_vasopressors: int = Field(ge=1, le=4)
    citation: str
    verification: Verification


class HypotensionRule(_Strict):
    systolic_below_mmhg: float = Field(gt=0, lt=200)
    map_below_mmhg: float | None = Field(default=None, gt=0, lt=150)
    citation: str
    url: str | None = None
    verification: Verification
    adult_from_age_years: int = Field(ge=1, le=25)
    adult_citation: str
    adult_verification: Verification


class RouteCode(_Strict):
    system: str
    code: str
    display: str


class Routes(_Strict):
    codes: list[RouteCode]
    names: list[str]


class VasopressorRule(_Strict):
    not_counted_toward_multiple: list[str]
    non_intravenous_routes: Routes
    citation: str
    verification: Verification


class OxygenRule(_Strict):
    low_flow_max_l_per_min: float = Field(gt=0)
    grade_by_support: dict[SupportClass, int]
    citation: str
    verification: Verification

    @field_validator("grade_by_support")
    @classmethod
    def _grades_in_range(cls, value: dict[str, int]) -> dict[str, int]:
        for support, grade in value.items():
            if not 1 <= grade <= 4:
                raise ValueError(f"grade for {support} must be 1-4, got {grade}")
        return value


class Spo2WarningRule(_Strict):
    below_percent: float = Field(gt=50, le=100)
    room_air_fio2_percent: float = Field(ge=20, le=22)
    citation: str
    verification: Verification
    url: str | None = None


class LookbackRule(_Strict):
    hours: float = Field(gt=0, le=24 * 14)
    citation: str
    verification: Verification


class EpisodeGapRule(_Strict):
    hours: float = Field(gt=0, le=24 * 14)
    citation: str
    verification: Verification


class FeverMaskingRule(_Strict):
    masking_classes: list[MedicationClass]
    citation: str
    verification: Verification


class PremedicationMaskingRule(_Strict):
    """Fever possibly masked by premedication: how long before a dose a masking drug counts
    as premedication, for products whose label states no timing (see therapies.yaml)."""

    default_before_dose_hours: float = Field(gt=0, le=72)
    citation: str
    verification: Verification


class RuleOutRule(_Strict):
    text: str
    citation: str
    verification: Verification


class AstctFile(_Strict):
    version: str
    grading_system: str
    citation: str
    url: str
    verification: Verification
    grades: GradesRule
    fever: FeverRule
    hypotension: HypotensionRule
    vasopressors: VasopressorRule
    oxygen: OxygenRule
    spo2_warning: Spo2WarningRule
    lookback: LookbackRule
    episode_gap: EpisodeGapRule
    fever_masking: FeverMaskingRule
    premedication_masking: PremedicationMaskingRule
    rule_out: RuleOutRule


# --- rules/therapies.yaml ------------------------------------------------------------


class Premedication(_Strict):
    """The label's premedication before a dose: how long before it may be given."""

    before_dose_hours: float = Field(gt=0, le=72)
    drugs: str  # as the label lists them, e.g. "dexamethasone, acetaminophen, an antihistamine"
    citation: str
    verification: Verification


class Therapy(_Strict):
    product: str
    display: str
    brand: str
    kind: TherapyKind
    target: str
    anchor: Literal["infusion", "latest-dose"]
    window_hours: int = Field(gt=0)
    onset: str
    monitoring: str
    citation: str
    verification: Verification
    url: str
    note: str | None = None
    premedication: Premedication | None = None  # None: the default of rules/astct.yaml


class TherapiesFile(_Strict):
    version: str
    window_rule: str
    products: list[Therapy]


# --- rules/tocilizumab.yaml ----------------------------------------------------------


class Citation(_Strict):
    citation: str
    verification: Verification
    url: str | None = None
    quote: str | None = None


class TocilizumabFile(_Strict):
    version: str
    drug: Literal["tocilizumab"]
    short_citation: str
    route: str
    infusion_minutes: int = Field(gt=0)
    weight_threshold_kg: float = Field(gt=0)
    dose_mg_per_kg_at_or_above: float = Field(gt=0)
    dose_mg_per_kg_below: float = Field(gt=0)
    max_dose_mg: float = Field(gt=0)
    min_interval_hours: float = Field(gt=0)
    max_doses_per_24h: int = Field(gt=0)
    max_doses_total: int = Field(gt=0)
    indication_min_grade: int = Field(ge=1, le=4)
    grade1_persistent_fever_hours: float = Field(gt=0)
    citations: dict[str, Citation]

    @field_validator("citations")
    @classmethod
    def _every_value_cited(cls, value: dict[str, Citation]) -> dict[str, Citation]:
        required = {
            "infusion_minutes",
            "weight_threshold_kg",
            "dose_mg_per_kg_at_or_above",
            "dose_mg_per_kg_below",
            "max_dose_mg",
            "min_interval_hours",
            "max_doses_per_24h",
            "max_doses_total",
            "indication_min_grade",
            "grade1_persistent_fever_hours",
        }
        missing = sorted(required - value.keys())
        if missing:
            raise ValueError(f"no citation for {', '.join(missing)}")
        return value


# --- rules/corticosteroids.yaml ------------------------------------------------------


class SteroidGuidance(_Strict):
    grade: int = Field(ge=1, le=4)
    guidance: str
    short_citation: str  # as shown on the card
    citation: str  # full provenance
    verification: Verification
    url: str | None = None


class CorticosteroidsFile(_Strict):
    version: str
    institution_adjustable: bool
    by_grade: list[SteroidGuidance]


# --- rules/alerting.yaml -------------------------------------------------------------

IndicatorName = Literal["info", "warning", "critical"]


class IndicatorRule(_Strict):
    by_grade: dict[int, IndicatorName]
    citation: str
    verification: Verification

    @field_validator("by_grade")
    @classmethod
    def _every_grade(cls, value: dict[int, str]) -> dict[int, str]:
        missing = sorted(set(range(5)) - value.keys())
        if missing:
            raise ValueError(f"no indicator for grade(s) {missing}")
        return value


class OverrideReason(_Strict):
    code: str
    display: str


class OrderCheckRule(_Strict):
    critical_problems: list[
        Literal[
            "dose-above-cap",
            "dose-not-weight-based",
            "dose-unreadable",
            "dose-invalid",
            "interval-under-8h",
            "over-3-in-24h",
            "over-4-total",
            "dose-time-unknown",
            "no-weight",
            "no-crs-evidence",
        ]
    ]
    override_reasons: list[OverrideReason] = Field(min_length=1)
    override_system: str
    citation: str
    verification: Verification


class AcknowledgementRule(_Strict):
    hours: float = Field(gt=0, le=24 * 14)
    citation: str
    verification: Verification


class WatchRule(_Strict):
    """What the watch (issue #12) notifies besides a higher grade: a possible grade from
    `possible_grade_from`, and a data gap (no temperature charted for longer than
    `temperature_gap_hours` inside a risk window)."""

    possible_grade_from: int = Field(ge=1, le=4)
    temperature_gap_hours: float = Field(gt=0, le=168)
    citation: str
    verification: Verification


class AlertingFile(_Strict):
    version: str
    crs_indicator_by_grade: IndicatorRule
    order_check: OrderCheckRule
    acknowledgement: AcknowledgementRule
    watch: WatchRule | None = None  # None: an institution rule set from before the watch


# --- rules/icans.yaml ---------------------------------------------------------------

NeuroDomain = Literal["consciousness", "seizure", "motor", "icp"]


class IceItem(_Strict):
    item: Literal["orientation", "naming", "commands", "writing", "attention"]
    max: int = Field(ge=1, le=10)
    text: str


class ScoreBand(_Strict):
    min: int = Field(ge=0)
    max: int = Field(ge=0)
    grade: int = Field(ge=1, le=4)


class IceRule(_Strict):
    max_total: int = Field(ge=1)
    items: list[IceItem]
    grade_by_total: list[ScoreBand]
    citation: str
    verification: Verification

    @model_validator(mode="after")
    def _items_add_up(self) -> IceRule:
        if sum(i.max for i in self.items) != self.max_total:
            raise ValueError("the items' maxima must add up to max_total")
        return self


class CapdRule(_Strict):
    below_age_years: int = Field(ge=1, le=25)
    max_total: int = Field(ge=1)
    delirium_from: int = Field(ge=1)
    delirium_grade: int = Field(ge=1, le=4)
    grade1_from: int = Field(ge=0)
    citation: str
    verification: Verification


class LevelsRule(_Strict):
    consciousness: dict[str, int]
    seizure: dict[str, int]
    motor: dict[str, int]
    icp: dict[str, int]
    citation: str
    verification: Verification

    def grade_of(self, domain: str, level: str) -> int | None:
        table: dict[str, int] = getattr(self, domain)
        return table.get(level)


class FootnotesRule(_Strict):
    not_attributable: str
    citation: str
    verification: Verification


class DefaultWindowsRule(_Strict):
    cell_therapy_min_hours: int = Field(gt=0)
    citation: str
    verification: Verification


class IcansWindow(_Strict):
    product: str
    window_hours: int = Field(gt=0)
    onset: str
    citation: str
    verification: Verification
    url: str | None = None


class IcansManagementRow(_Strict):
    grade: int = Field(ge=1, le=4)
    no_concurrent_crs: str
    concurrent_crs: str
    citation: str
    verification: Verification


class IcansManagement(_Strict):
    institution_adjustable: bool
    all_grades: str
    all_grades_citation: str
    all_grades_verification: Verification
    no_tocilizumab_for_isolated_icans: str
    no_tocilizumab_citation: str
    no_tocilizumab_verification: Verification
    seizures: str
    seizures_citation: str
    seizures_verification: Verification
    by_grade: list[IcansManagementRow]


class IcansFile(_Strict):
    version: str
    grading_system: str
    citation: str
    verification: Verification
    url: str
    ice: IceRule
    capd: CapdRule
    levels: LevelsRule
    footnotes: FootnotesRule
    lookback: LookbackRule
    default_windows: DefaultWindowsRule
    windows: list[IcansWindow]
    management: IcansManagement


# --- rules/risk_scores.yaml ----------------------------------------------------------

Comparison = Literal["<", "<=", ">", ">="]


class ScoreInput(_Strict):
    concept: str
    unit: str
    factor: float = Field(gt=0)


class PointBand(_Strict):
    op: Comparison
    value: float
    points: int = Field(ge=0)


class PointsInput(ScoreInput):
    bands: list[PointBand] = Field(min_length=1)


class CategoryRule(_Strict):
    op: Comparison
    value: float
    category: str


class Cohort(_Strict):
    study: str
    n: str
    auc: str


class RiskScoreRule(_Strict):
    score: Literal["EASIX", "m-EASIX", "EASIX-F", "CAR-HEMATOTOX"]
    kind: Literal["ratio", "points"]
    formula: str
    numerator: list[ScoreInput] = Field(default_factory=list)
    denominator: ScoreInput | None = None
    points: list[PointsInput] = Field(default_factory=list)
    categories: list[CategoryRule]
    default_category: str | None
    cutoff: str
    predicts: str
    cohort: Cohort
    citation: str
    verification: Verification
    url: str

    @model_validator(mode="after")
    def _complete(self) -> RiskScoreRule:
        if self.kind == "ratio" and (not self.numerator or self.denominator is None):
            raise ValueError("a ratio score needs `numerator` and `denominator`")
        if self.kind == "points" and not self.points:
            raise ValueError("a points score needs `points`")
        return self

    def inputs(self) -> list[ScoreInput]:
        """Every input, in the order the card lists them."""
        if self.kind == "points":
            return list(self.points)
        assert self.denominator is not None
        return [*self.numerator, self.denominator]


class TimePointRule(_Strict):
    lymphodepletion_within_days: float = Field(gt=0, le=60)
    max_age_days: float = Field(gt=0, le=60)
    citation: str
    verification: Verification


class RiskScoresFile(_Strict):
    version: str
    time_point: TimePointRule
    scores: list[RiskScoreRule]


# --- fhir_mappings/ ----------------------------------------------------------------


class MedicationCode(_Strict):
    system: str
    code: str
    display: str
    tty: str
    citation: str
    verification: Verification


class MedicationConcept(_Strict):
    concept: str
    medication_class: MedicationClass = Field(alias="class")
    display: str
    names: list[str]
    exclude_names: list[str] = Field(default_factory=list)
    codes: list[MedicationCode]


class UnidentifiedExposure(_Strict):
    """Names of a cell therapy or T-cell engager that identify no product (\"CAR T-cell
    infusion\"): an administration named so opens no window the rules can place, and is
    said on a card as one that could not be read."""

    display: str
    names: list[str] = Field(min_length=1)
    filler: list[str] = Field(default_factory=list)  # words a text may add to a name
    citation: str


class MedicationsFile(_Strict):
    version: str
    medications: list[MedicationConcept]
    unidentified_exposure: UnidentifiedExposure | None = None


class ObservationCode(_Strict):
    system: str
    code: str
    display: str
    citation: str


class UnitConversion(_Strict):
    units: list[str] = Field(min_length=1)
    factor: float = Field(gt=0)
    offset: float = 0.0
    citation: str


class Plausible(_Strict):
    min: float
    max: float
    citation: str
    verification: Verification


class ObservationConcept(_Strict):
    concept: str
    display: str
    canonical_unit: str
    codes: list[ObservationCode]
    names: list[str]
    exclude_names: list[str] = Field(default_factory=list)
    plausible: Plausible | None = None
    units: list[UnitConversion] = Field(min_length=1)


class ObservationsFile(_Strict):
    version: str
    systems: dict[str, str]
    citations: dict[str, Source]
    panels: list[ObservationCode] = Field(default_factory=list)
    observations: list[ObservationConcept]


class DeviceConcept(_Strict):
    concept: str
    display: str
    support: Literal[
        "nasal-cannula",
        "low-flow",
        "high-flow",
        "facemask",
        "non-rebreather",
        "venturi",
        "positive-pressure",
    ]
    codes: list[ObservationCode]
    names: list[str]


class NeuroFinding(_Strict):
    domain: NeuroDomain
    level: str
    codes: list[ObservationCode]
    names: list[str]


class NeuroFindingsFile(_Strict):
    version: str
    systems: dict[str, str]
    citations: dict[str, Source]
    observation_values: list[NeuroFinding]
    conditions: list[NeuroFinding]


class OxygenDevicesFile(_Strict):
    version: str
    systems: dict[str, str]
    citations: dict[str, Source]
    devices: list[DeviceConcept]


# --- the loaded knowledge ------------------------------------------------------------


class NameIndex:
    """Whole-word, case-insensitive name matching; the longest matching name wins.

    A name preceded by a hyphen does not match ("nor-epinephrine" is not epinephrine);
    one followed by a hyphen does ("teclistamab-cqyv" is teclistamab).
    """

    def __init__(self, names: dict[str, str]) -> None:
        # name (lower case) -> concept id; longest names first so the regex prefers them
        self._by_name = {name.lower(): concept for name, concept in names.items()}
        ordered = sorted(self._by_name, key=len, reverse=True)
        if ordered:
            alternatives = "|".join(re.escape(name) for name in ordered)
            self._pattern: re.Pattern[str] | None = re.compile(
                rf"(?<![\w-])(?:{alternatives})(?!\w)", re.IGNORECASE
            )
        else:
            self._pattern = None

    def names(self, concepts: Collection[str] | None = None) -> list[str]:
        """The names (lower case) of `concepts` (every concept when None), sorted."""
        return sorted(n for n, c in self._by_name.items() if concepts is None or c in concepts)

    def find(self, text: str) -> tuple[int, int] | None:
        """Where the first name occurs in `text` (start, end), or None."""
        if not text or self._pattern is None:
            return None
        found = self._pattern.search(text)
        return found.span() if found is not None else None

    def match(self, text: str | None) -> str | None:
        """The concept whose name occurs in `text` (the longest such name), or None."""
        if not text or self._pattern is None:
            return None
        found = [m.group(0).lower() for m in self._pattern.finditer(text)]
        if not found:
            return None
        return self._by_name[max(found, key=len)]


@dataclass(frozen=True)
class UnitRule:
    factor: float
    offset: float

    def to_canonical(self, value: float) -> float:
        # Rounded to 6 decimals so that e.g. 100.4 [degF] is exactly 38.0 Cel.
        return round((value - self.offset) * self.factor, 6)


@dataclass(frozen=True)
class Knowledge:
    """Everything the engine and the readers need, validated and indexed."""

    ruleset: RuleSetFile
    astct: AstctFile
    therapies: dict[str, Therapy]
    tocilizumab: TocilizumabFile
    corticosteroids: dict[int, SteroidGuidance]
    alerting: AlertingFile
    medications: dict[str, MedicationConcept]
    observations: dict[str, ObservationConcept]
    devices: dict[str, DeviceConcept]
    digest: str
    medication_by_code: dict[tuple[str, str], str] = field(repr=False)
    medication_names: NameIndex = field(repr=False)
    observation_by_code: dict[tuple[str, str], str] = field(repr=False)
    observation_names: NameIndex = field(repr=False)
    units: dict[str, dict[str, UnitRule]] = field(repr=False)
    device_by_code: dict[tuple[str, str], str] = field(repr=False)
    device_names: NameIndex = field(repr=False)
    panel_codes: tuple[tuple[str, str], ...] = ()
    exclusions: dict[str, NameIndex] = field(default_factory=dict, repr=False)
    plausible: dict[str, Plausible] = field(default_factory=dict, repr=False)
    # What the readers derive from this knowledge alone (what a code means, how a unit
    # converts), remembered across requests by `fhir.normalise`.
    memos: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    non_iv_route_codes: frozenset[tuple[str, str]] = frozenset()
    non_iv_route_names: NameIndex = field(default_factory=lambda: NameIndex({}), repr=False)
    unconfirmed: tuple[UnconfirmedValue, ...] = ()
    icans: IcansFile | None = None
    risk_scores: RiskScoresFile | None = None
    # neurological findings: (system, code) or name -> (domain, level)
    neuro_value_by_code: dict[tuple[str, str], tuple[str, str]] = field(
        default_factory=dict, repr=False
    )
    neuro_value_names: NameIndex = field(default_factory=lambda: NameIndex({}), repr=False)
    neuro_condition_by_code: dict[tuple[str, str], tuple[str, str]] = field(
        default_factory=dict, repr=False
    )
    neuro_condition_names: NameIndex = field(default_factory=lambda: NameIndex({}), repr=False)
    # the published Questionnaires: canonical url -> linkId -> (system, code) of the item
    questionnaire_items: dict[str, dict[str, tuple[str, str]]] = field(
        default_factory=dict, repr=False
    )
    # names of a cell therapy or engager that identify no product ("CAR T-cell infusion")
    unidentified_exposure: UnidentifiedExposure | None = None
    unidentified_exposure_names: NameIndex = field(
        default_factory=lambda: NameIndex({}), repr=False
    )

    def excluded(self, concept: str, text: str) -> bool:
        """Whether `text` names another measurement or product than `concept` (e.g.
        "Body weight change", "Lidocaine with epinephrine")."""
        index = self.exclusions.get(concept)
        return index is not None and index.match(text) is not None

    @cached_property
    def medication_by_bare_code(self) -> dict[str, str]:
        """What a medication code means whatever its system: for a text found in a resource
        that is not readable FHIR, where no system is known."""
        return {code: concept for (_, code), concept in self.medication_by_code.items()}

    @property
    def version(self) -> str:
        """The rule-set version named on every card: declared version + content digest."""
        return f"{self.ruleset.version}+{self.digest}"

    def observation_codes(self, concepts: Collection[str] | None = None) -> list[tuple[str, str]]:
        """(system, code) of every mapped observation (of `concepts`, when given) and every
        panel, for searches by code."""
        return sorted(
            key for key, c in self.observation_by_code.items() if concepts is None or c in concepts
        ) + sorted(self.panel_codes)

    def codes_of(self, concept: str) -> list[tuple[str, str]]:
        """(system, code) of one observation concept, e.g. every body-weight code."""
        return sorted(key for key, c in self.observation_by_code.items() if c == concept)

    def device_codes(self) -> list[tuple[str, str]]:
        """(system, code) of every oxygen device, for searches by coded value."""
        return sorted(self.device_by_code)

    def neuro_condition_codes(self) -> list[tuple[str, str]]:
        """(system, code) of every Condition the ICANS rules read (seizures, cerebral
        oedema), for searches by code."""
        return sorted(self.neuro_condition_by_code)

    def questionnaire_urls(self) -> list[str]:
        """The canonical urls of the published assessment Questionnaires (ICE, CAPD)."""
        return sorted(self.questionnaire_items)


def _shown(path: Path) -> str:
    """`rules/therapies.yaml`: a knowledge file as messages name it."""
    return f"{path.parent.name}/{path.name}"


def _load_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KnowledgeError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KnowledgeError(f"{path}: not valid YAML: {exc}") from exc


def _validate(model: type[_M], path: Path) -> _M:
    data = _load_yaml(path)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"field {'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise KnowledgeError(f"{path}: {problems}") from exc


def _unique(path: Path, what: str, keys: list[Any]) -> None:
    seen: set[Any] = set()
    for key in keys:
        if key in seen:
            raise KnowledgeError(f"{path}: {what} {key!r} appears more than once")
        seen.add(key)


def _resolve_system(path: Path, systems: dict[str, str], alias: str) -> str:
    if alias.startswith(("http://", "https://", "urn:")):
        return alias
    try:
        return systems[alias]
    except KeyError:
        raise KnowledgeError(f"{path}: field systems: unknown code system {alias!r}") from None


def _check_citation_keys(path: Path, citations: dict[str, Source], used: list[str]) -> None:
    for key in used:
        if key not in citations:
            raise KnowledgeError(f"{path}: field citation: unknown citation key {key!r}")


def load_knowledge(
    rules_dir: Path = DEFAULT_RULES_DIR, mappings_dir: Path = DEFAULT_MAPPINGS_DIR
) -> Knowledge:
    """Load, validate and index every rule and mapping file, or raise KnowledgeError."""
    files = {
        "ruleset": rules_dir / "ruleset.yaml",
        "astct": rules_dir / "astct.yaml",
        "therapies": rules_dir / "therapies.yaml",
        "tocilizumab": rules_dir / "tocilizumab.yaml",
        "corticosteroids": rules_dir / "corticosteroids.yaml",
        "alerting": rules_dir / "alerting.yaml",
        "medications": mappings_dir / "medications.yaml",
        "observations": mappings_dir / "observations.yaml",
        "devices": mappings_dir / "oxygen_devices.yaml",
        "icans": rules_dir / "icans.yaml",
        "risk_scores": rules_dir / "risk_scores.yaml",
        "neuro": mappings_dir / "neuro_findings.yaml",
    }
    ruleset = _validate(RuleSetFile, files["ruleset"])
    astct = _validate(AstctFile, files["astct"])
    therapies = _validate(TherapiesFile, files["therapies"])
    tocilizumab = _validate(TocilizumabFile, files["tocilizumab"])
    steroids = _validate(CorticosteroidsFile, files["corticosteroids"])
    alerting = _validate(AlertingFile, files["alerting"])
    medications = _validate(MedicationsFile, files["medications"])
    observations = _validate(ObservationsFile, files["observations"])
    devices = _validate(OxygenDevicesFile, files["devices"])
    icans = _validate(IcansFile, files["icans"])
    risk_scores = _validate(RiskScoresFile, files["risk_scores"])
    neuro = _validate(NeuroFindingsFile, files["neuro"])

    _unique(files["therapies"], "product", [t.product for t in therapies.products])
    _unique(files["medications"], "concept", [m.concept for m in medications.medications])
    _unique(files["corticosteroids"], "grade", [g.grade for g in steroids.by_grade])

    med_by_code: dict[tuple[str, str], str] = {}
    med_names: dict[str, str] = {}
    for med in medications.medications:
        for code in med.codes:
            key = (code.system, code.code)
            if key in med_by_code:
                raise KnowledgeError(
                    f"{files['medications']}: code {code.system}|{code.code} maps to both "
                    f"{med_by_code[key]} and {med.concept}"
                )
            med_by_code[key] = med.concept
        for name in [med.display, *med.names]:
            other = med_names.setdefault(name.lower(), med.concept)
            if other != med.concept:
                raise KnowledgeError(
                    f"{files['medications']}: name {name!r} used by {other} and {med.concept}"
                )
    med_index = {m.concept: m for m in medications.medications}
    for therapy in therapies.products:
        mapped = med_index.get(therapy.product)
        if mapped is None or mapped.medication_class != therapy.kind:
            raise KnowledgeError(
                f"{files['therapies']}: product {therapy.product!r} needs a {therapy.kind} "
                f"concept of the same name in {files['medications']}"
            )

    obs_by_code: dict[tuple[str, str], str] = {}
    obs_names: dict[str, str] = {}
    units: dict[str, dict[str, UnitRule]] = {}
    _unique(files["observations"], "concept", [o.concept for o in observations.observations])
    for obs in observations.observations:
        _check_citation_keys(
            files["observations"],
            observations.citations,
            [c.citation for c in obs.codes] + [u.citation for u in obs.units],
        )
        for ocode in obs.codes:
            system = _resolve_system(files["observations"], observations.systems, ocode.system)
            obs_by_code[(system, ocode.code)] = obs.concept
        for name in obs.names:
            obs_names[name.lower()] = obs.concept
        table: dict[str, UnitRule] = {}
        for conversion in obs.units:
            for unit in conversion.units:
                table[unit.lower()] = UnitRule(conversion.factor, conversion.offset)
        units[obs.concept] = table

    _check_citation_keys(
        files["observations"], observations.citations, [p.citation for p in observations.panels]
    )
    panel_codes = tuple(
        (_resolve_system(files["observations"], observations.systems, p.system), p.code)
        for p in observations.panels
    )

    dev_by_code: dict[tuple[str, str], str] = {}
    dev_names: dict[str, str] = {}
    _unique(files["devices"], "concept", [d.concept for d in devices.devices])
    for dev in devices.devices:
        _check_citation_keys(files["devices"], devices.citations, [c.citation for c in dev.codes])
        for dcode in dev.codes:
            dev_by_code[
                (_resolve_system(files["devices"], devices.systems, dcode.system), dcode.code)
            ] = dev.concept
        for name in dev.names:
            dev_names[name.lower()] = dev.concept

    exclusions: dict[str, NameIndex] = {}
    for obs_concept in observations.observations:
        if obs_concept.exclude_names:
            exclusions[obs_concept.concept] = NameIndex(
                dict.fromkeys(obs_concept.exclude_names, obs_concept.concept)
            )
    for med_concept in medications.medications:
        if med_concept.exclude_names:
            exclusions[med_concept.concept] = NameIndex(
                dict.fromkeys(med_concept.exclude_names, med_concept.concept)
            )
    routes = astct.vasopressors.non_intravenous_routes
    _unique(files["icans"], "product", [w.product for w in icans.windows])
    unknown_products = sorted({w.product for w in icans.windows} - set(med_index))
    if unknown_products:
        raise KnowledgeError(
            f"{files['icans']}: field windows: unknown product(s) {', '.join(unknown_products)}"
        )
    for finding in [*neuro.observation_values, *neuro.conditions]:
        if icans.levels.grade_of(finding.domain, finding.level) is None:
            raise KnowledgeError(
                f"{files['neuro']}: level {finding.level!r} of {finding.domain} has no grade "
                f"in {files['icans']} (levels)"
            )
    for score in risk_scores.scores:
        for item in score.inputs():
            if item.concept not in obs_by_code.values():
                raise KnowledgeError(
                    f"{files['risk_scores']}: score {score.score}: unknown concept "
                    f"{item.concept!r} (not in {files['observations']})"
                )
    neuro_maps: list[dict[tuple[str, str], tuple[str, str]]] = [{}, {}]
    neuro_names: list[dict[str, tuple[str, str]]] = [{}, {}]
    for slot, findings in enumerate((neuro.observation_values, neuro.conditions)):
        for finding in findings:
            _check_citation_keys(
                files["neuro"], neuro.citations, [c.citation for c in finding.codes]
            )
            meaning = (finding.domain, finding.level)
            for ncode in finding.codes:
                system = _resolve_system(files["neuro"], neuro.systems, ncode.system)
                neuro_maps[slot][(system, ncode.code)] = meaning
            for name in finding.names:
                neuro_names[slot][name.lower()] = meaning

    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(files[name].read_bytes())
    loaded: dict[str, BaseModel] = {
        "ruleset": ruleset,
        "astct": astct,
        "therapies": therapies,
        "tocilizumab": tocilizumab,
        "corticosteroids": steroids,
        "alerting": alerting,
        "medications": medications,
        "observations": observations,
        "devices": devices,
        "icans": icans,
        "risk_scores": risk_scores,
        "neuro": neuro,
    }
    unconfirmed = tuple(
        UnconfirmedValue(_shown(files[name]), path, verification.why or "")
        for name, model in loaded.items()
        for path, verification in _verifications(model, "")
        if verification.status == "unconfirmed"
    )

    return Knowledge(
        ruleset=ruleset,
        astct=astct,
        therapies={t.product: t for t in therapies.products},
        tocilizumab=tocilizumab,
        corticosteroids={g.grade: g for g in steroids.by_grade},
        alerting=alerting,
        medications=med_index,
        observations={o.concept: o for o in observations.observations},
        devices={d.concept: d for d in devices.devices},
        digest=digest.hexdigest()[:10],
        medication_by_code=med_by_code,
        medication_names=NameIndex(med_names),
        unidentified_exposure=medications.unidentified_exposure,
        unidentified_exposure_names=NameIndex(
            {n: "unidentified" for n in medications.unidentified_exposure.names}
            if medications.unidentified_exposure is not None
            else {}
        ),
        observation_by_code=obs_by_code,
        observation_names=NameIndex(obs_names),
        units=units,
        device_by_code=dev_by_code,
        device_names=NameIndex(dev_names),
        panel_codes=panel_codes,
        exclusions=exclusions,
        plausible={o.concept: o.plausible for o in observations.observations if o.plausible},
        non_iv_route_codes=frozenset((c.system, c.code) for c in routes.codes),
        non_iv_route_names=NameIndex(dict.fromkeys(routes.names, "not-intravenous")),
        unconfirmed=unconfirmed,
        icans=icans,
        risk_scores=risk_scores,
        neuro_value_by_code=neuro_maps[0],
        neuro_value_names=_tuple_names(neuro_names[0]),
        neuro_condition_by_code=neuro_maps[1],
        neuro_condition_names=_tuple_names(neuro_names[1]),
        questionnaire_items=items_by_url(),
    )


def _tuple_names(names: dict[str, tuple[str, str]]) -> NameIndex:
    """A NameIndex whose concepts are "domain level" pairs (split back by the reader)."""
    return NameIndex({name: f"{domain} {level}" for name, (domain, level) in names.items()})
