"""FHIR resources -> facts, driven by fhir_mappings/. The one place codes and units meet.

Statuses: Observations with status entered-in-error, cancelled, registered or unknown
are not counted; MedicationAdministrations not-done or entered-in-error are not counted.
Resources about another patient than the hook's `patientId` are reported and skipped.
Codes that are not mapped are ignored (most of a chart is irrelevant to CRS); a mapped
concept with an unusable value, unit or time is reported, and so is a value that is not
a finite number in its canonical unit (e.g. 1e308 mg/dL, which overflows in mg/L).

Each resource is read as a `structs.Resource`: decoded with the request body, or
converted from a JSON object, whenever the struct types and `structs.checked` accept it.
Anything else is validated by its lean model (which reports what is wrong) and read from
the model's values. Both give the same facts and issues; the model path alone is
`Normaliser(..., fast=False)`, the reference the fast path is tested against.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any, TypeVar

from pydantic import ValidationError

from cds.engine.exposure import EXPOSURE_CLASSES
from cds.engine.facts import (
    CONCEPTS_READ,
    CRS_CONCEPTS,
    ICANS_CONCEPTS,
    ICE_ITEM_CONCEPTS,
    NEURO_CONCEPTS,
    Administration,
    Facts,
    Measurement,
    NeuroFinding,
    OxygenSupport,
    UndatedFinding,
    UnreadExposure,
    age_on,
)
from cds.fhir import models
from cds.fhir.reading import (
    MENTION_SCAN_LIMIT,
    Issue,
    RawResource,
    ResourceCollector,
    json_strings,
    validation_issues,
)
from cds.fhir.structs import (
    CodeableConcept,
    Coding,
    Component,
    Dosage,
    Quantity,
    Reference,
    Resource,
    ResponseItem,
    checked,
    from_json,
)
from cds.fhir.timing import EARLIEST_YEAR, TimeFormatError, parse_fhir_datetime
from cds.formatting import fmt_value
from cds.knowledge import Knowledge, NameIndex, UnitRule

COUNTED_OBSERVATION_STATUSES = frozenset({"final", "amended", "corrected", "preliminary"})
COUNTED_RESPONSE_STATUSES = frozenset({"completed", "amended"})
NOT_A_CONDITION = frozenset({"refuted", "entered-in-error"})
# Assessments (ICE, CAPD, coded neurological findings) are read by their own method: the
# item sums, the CAPD age rule and coded levels are theirs alone.
ASSESSMENT_CONCEPTS = ICANS_CONCEPTS | NEURO_CONCEPTS
CAPD_ITEM = re.compile(r"capd-[1-8]")
IGNORED_ADMINISTRATION_STATUSES = frozenset({"not-done", "entered-in-error"})


# The shape of nearly every time a FHIR server sends (seconds and an offset in range),
# which the C parser reads ~10x faster. Anything else, and any surprise (30 February),
# goes to `parse_fhir_datetime`, which defines the rules and says what is wrong.
_BIRTH_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_PLAIN_INSTANT = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(?:Z|[+-](?:0[0-9]|1[0-4]):[0-5][0-9])"
)


# How a value in one unit becomes canonical: (rule, canonical unit, lowest and highest
# plausible value, whether the value is converted, the values converted so far);
# _NO_UNIT for a unit not recognised.
_UnitPlan = tuple[UnitRule, str, float, float, bool, "_Memo[float, float]"]
_FINITE = sys.float_info.max


@dataclass(frozen=True)
class Normalised:
    """The facts read from the data, what could not be read, and the readable Medication
    resources by reference (for draft orders that name one)."""

    facts: Facts
    issues: list[Issue]
    medications: dict[str, Resource]
    unread_exposures: tuple[UnreadExposure, ...] = ()
    # tocilizumab given at a time that could not be read (a dose all the same)
    unread_doses: tuple[UnreadExposure, ...] = ()


_K = TypeVar("_K")
_V = TypeVar("_V")
_UNSEEN: Any = object()  # not in a memo yet
# Memos shared by all requests remember what charts repeat (codes, names, units, values).
# A client sending endless distinct or huge codes must not grow them: each holds at most
# its `limit` of entries (emptied when full), and a key holding more than MEMO_KEY_CHARS
# characters of text is worked out every time instead of remembered.
MEMO_ENTRIES = 4_096
MEMO_KEY_CHARS = 512
UNIT_PLANS = 64  # (concept, code, unit) conversions remembered
VALUES_PER_UNIT = 512  # converted values remembered per conversion


class _Memo(dict[_K, _V]):
    """A memo shared by the requests of the process, emptied when it reaches `limit`."""

    def __init__(self, limit: int = MEMO_ENTRIES) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: _K, value: _V, chars: int = 0) -> _V:
        """Remember `value` for `key` (whose text is `chars` long); returns `value`."""
        if chars <= MEMO_KEY_CHARS:
            if len(self) >= self.limit:
                self.clear()
            self[key] = value
        return value


def _shared(knowledge: Knowledge, name: str, limit: int = MEMO_ENTRIES) -> _Memo[Any, Any]:
    """The memo `name` of what is derived from `knowledge` alone."""
    memo: _Memo[Any, Any] = knowledge.memos.setdefault(name, _Memo(limit))
    return memo


def _chars(concept: CodeableConcept) -> int:
    """The characters of text a CodeableConcept holds: its size as a memo key."""
    return len(concept.text or "") + sum(
        len(c.system or "") + len(c.code or "") + len(c.display or "") for c in concept.coding
    )


_NO_UNIT: _UnitPlan = (UnitRule(1.0, 0.0), "", 0.0, -1.0, False, _Memo())  # (told by identity)


class _MemoNames:
    """A NameIndex whose matches are remembered: charts repeat the same few texts."""

    def __init__(self, index: NameIndex, seen: _Memo[str, str | None]) -> None:
        self.index = index
        self.seen = seen

    def match(self, text: str) -> str | None:
        concept: str | None = self.seen.get(text, _UNSEEN)
        if concept is _UNSEEN:
            concept = self.seen.put(text, self.index.match(text), len(text))
        return concept


@dataclass(frozen=True)
class MedicationMatch:
    """A medication recognised from a code, a name, or a referenced Medication."""

    concept: str
    medication_class: str
    display: str


class Normaliser:
    """Turns collected resources into facts for one patient.

    `fast=False` validates every resource with its lean model instead of reading it as a
    struct directly: slower, same results (the reference for tests of the fast path).
    """

    def __init__(
        self,
        knowledge: Knowledge,
        patient_id: str | None,
        assume_tz: tzinfo | None,
        *,
        fast: bool = True,
    ) -> None:
        self.k = knowledge
        self.patient_id = patient_id
        self.assume_tz = assume_tz
        self.fast = fast
        self.issues: list[Issue] = []
        self._birth: date | None = None
        self._unread_exposures: list[UnreadExposure] = []
        self._unread_doses: list[UnreadExposure] = []
        self._undated_findings: list[UndatedFinding] = []
        self._scan_budget = MENTION_SCAN_LIMIT  # values unreadable administrations may cost
        self.birth_location: str | None = None  # where the birth date used was read
        self._neuro: list[NeuroFinding] = []
        self._reset_memos()

    def _reset_memos(self) -> None:
        """Memos of what charts repeat. What follows from the knowledge alone (names,
        codes, units, converted values) is shared by all requests; what depends on the
        request (times: the timezone setting; subjects: the patient) is kept for one."""
        k = self.k
        self._observation_names = _MemoNames(k.observation_names, _shared(k, "observation names"))
        self._device_names = _MemoNames(k.device_names, _shared(k, "device names"))
        # What an Observation.code means: (concept, device)
        self._codes: _Memo[CodeableConcept, tuple[str | None, tuple[str, str] | None]] = _shared(
            k, "observation codes"
        )
        self._concepts: _Memo[CodeableConcept, str | None] = _shared(k, "component codes")
        self._devices: _Memo[CodeableConcept, tuple[str, str] | None] = _shared(k, "values")
        self._unit_plans: _Memo[tuple[str, str | None, str | None], _UnitPlan] = _shared(
            k, "unit plans", UNIT_PLANS
        )
        self._times: dict[str, datetime | str] = {}  # text -> instant, or why it is invalid
        self._subjects: dict[str | None, bool] = {}  # subject reference -> the hook's patient?

    # --- entry points --------------------------------------------------------------

    def normalise(self, collected: ResourceCollector) -> Normalised:
        """Facts from every Observation and MedicationAdministration collected."""
        self.issues = list(collected.issues)
        self._reset_memos()
        medications = self._medication_index(collected.of_type("Medication"))
        measurements: list[Measurement] = []
        oxygen: list[OxygenSupport] = []
        administrations: list[Administration] = []
        self.birth_location = None
        self._unread_exposures = []
        self._unread_doses = []
        self._undated_findings = []
        self._scan_budget = MENTION_SCAN_LIMIT
        self._birth = birth_date = self._birth_date(collected)
        self._neuro = []
        for raw in collected.resources:
            resource_type = raw.resource_type
            if resource_type == "Observation":
                self._observation(raw, measurements, oxygen)
            elif resource_type == "MedicationAdministration":
                admin = self._administration(raw, medications)
                if admin is not None:
                    administrations.append(admin)
            elif resource_type == "Condition":
                self._condition(raw)
            elif resource_type == "QuestionnaireResponse":
                self._questionnaire_response(raw, measurements)
        return Normalised(
            Facts.build(
                measurements,
                oxygen,
                administrations,
                birth_date,
                self._neuro,
                self._undated_findings,
            ),
            self.issues,
            medications,
            tuple(self._unread_exposures),
            tuple(self._unread_doses),
        )

    def medication(
        self,
        concept: models.CodeableConcept | None,
        reference: models.Reference | None,
        contained: list[dict[str, object]],
        medications: Mapping[str, Resource],
    ) -> MedicationMatch | None:
        """Recognise a medication given by code/text or by reference to a Medication
        (`medications` as `medication_index` builds it)."""
        return self._medication(
            None if concept is None else CodeableConcept.of(concept.model_dump()),
            None if reference is None else Reference.of(reference.model_dump()),
            contained,
            medications,
        )

    def medication_index(self, *collections: ResourceCollector) -> dict[str, Resource]:
        """Readable Medication resources by `Medication/id` and fullUrl, for resolving a
        medicationReference; problems are reported where each collection is normalised."""
        return self._medication_index(
            (raw for c in collections for raw in c.of_type("Medication")), report=False
        )

    # --- reading -------------------------------------------------------------------

    def _birth_date(self, collected: ResourceCollector) -> date | None:
        """Patient.birthDate of the hook's patient (full dates only), if one is known. A
        Patient resource of another patient is reported and not used (its age would be
        taken for this patient's); so is a birthDate that is not a full date."""
        patients = []
        for raw in collected.of_type("Patient"):
            pid = raw.get("id")
            if self.patient_id is None or pid in (self.patient_id, None):
                patients.append(raw)
            else:
                self.issues.append(
                    Issue(
                        f"{raw.location}.id",
                        "a Patient resource of another patient than context.patientId; not used",
                    )
                )
        if len(patients) != 1:
            return None
        birth = patients[0].get("birthDate")
        if birth is None:
            return None
        where = f"{patients[0].location}.birthDate"
        born = _full_date(birth)
        if born is None:
            self.issues.append(
                Issue(where, "not a full date (YYYY-MM-DD): the patient's age is not known")
            )
            return None
        self.birth_location = where
        return born

    def _read(
        self, raw: RawResource, model: type[models.Lean], report: bool = True
    ) -> Resource | None:
        """The resource as its lean model reads it, or None (and the issues, if `report`)
        when it is invalid."""
        data = raw.data
        resource_type = raw.resource_type
        if self.fast:
            resource = data if type(data) is Resource else from_json(data)
            if resource is not None and checked(resource, resource_type):
                return resource
        try:
            valid = model.model_validate(raw.json())
        except ValidationError as exc:
            if report:
                self.issues.extend(validation_issues(raw.location, exc))
            return None
        return Resource.of(valid.model_dump())

    def _contained_medication(self, contained: Iterable[object], mid: str) -> Resource | None:
        """The contained Medication `mid` (`#mid`), read (problems not reported), or None
        when there is none, or it cannot be read."""
        for item in contained:
            if (
                type(item) is dict
                and item.get("resourceType") == "Medication"
                and item.get("id") == mid
            ):
                return self._read(
                    RawResource.of("contained", item), models.Medication, report=False
                )
        return None

    # --- observations --------------------------------------------------------------

    def _observation(
        self, raw: RawResource, measurements: list[Measurement], oxygen: list[OxygenSupport]
    ) -> None:
        # The hot path of a request (a chart is mostly Observations): the common case is
        # read with memos of what a chart repeats, anything else by the general methods.
        obs = raw.data
        if not (
            self.fast
            and type(obs) is Resource
            and obs.status in COUNTED_OBSERVATION_STATUSES
            and type(obs.code) is CodeableConcept
        ):  # (a decoded Observation with these is valid and counted)
            read = self._read(raw, models.Observation)
            if read is None:
                return
            if read.status not in COUNTED_OBSERVATION_STATUSES:
                return
            obs = read
        subject = obs.subject
        if (
            subject is not None
            and self._subjects.get(subject.reference) is not True
            and not self._same_patient(raw, subject)
        ):
            return
        code = obs.code
        if not isinstance(code, CodeableConcept):
            return  # (never: the model and the check above require one)
        meaning = self._codes.get(code)
        if meaning is None:
            meaning = (self._observation_concept(code), self._device(code))
            self._codes.put(code, meaning, _chars(code))
        concept, device = meaning
        if concept in ASSESSMENT_CONCEPTS:
            self._assessment(raw, obs, concept, measurements)
            return
        value_concept = obs.valueCodeableConcept
        if device is None and value_concept is not None:
            device = self._coded_device(value_concept)
        parts: list[tuple[int, Component, str]] = []
        if obs.component:
            concepts = self._concepts
            for i, part in enumerate(obs.component):
                part_concept = concepts.get(part.code, _UNSEEN)
                if part_concept is _UNSEEN:
                    part_concept = self._part(part)
                if part_concept is not None:
                    parts.append((i, part, part_concept))
        if concept is None and device is None and not parts:
            return
        text = obs.effectiveDateTime
        at = self._times.get(text) if text is not None else None
        if type(at) is not datetime:
            at = self._effective(raw, obs)
            if at is None:
                self._undated(raw, obs, concept, device, parts)
                return
        rid = obs.id
        source = "Observation/" + rid if rid else raw.reference
        if device is not None:
            oxygen.append(OxygenSupport(device[0], device[1], at, source))
        quantity = obs.valueQuantity
        if concept is not None and quantity is not None:
            m = self._measurement(concept, quantity, at, source, raw, ".valueQuantity")
            if m is not None:
                measurements.append(m)
        for i, part, part_concept in parts:
            quantity = part.valueQuantity
            if quantity is not None:
                path = f".component[{i}].valueQuantity"
                m = self._measurement(part_concept, quantity, at, source, raw, path)
                if m is not None:
                    measurements.append(m)

    def _undated(
        self,
        raw: RawResource,
        obs: Resource,
        concept: str | None,
        device: tuple[str, str] | None,
        parts: list[tuple[int, Component, str]],
    ) -> None:
        """What grading reads of an Observation whose time could not be read (the issue
        says why), kept as undated: graded never, but said when it may count."""
        period = obs.effectivePeriod
        text = (
            obs.effectiveDateTime
            or obs.effectiveInstant
            or (period.end or period.start if period is not None else None)
        )
        not_after = _latest_instant(text)
        source = "Observation/" + obs.id if obs.id else raw.reference
        if device is not None:
            self._undated_findings.append(
                UndatedFinding("oxygen_support", None, device[1], raw.location, not_after)
            )
        quantities = [(concept, obs.valueQuantity, ".valueQuantity")] + [
            (c, part.valueQuantity, f".component[{i}].valueQuantity") for i, part, c in parts
        ]
        for what, quantity, path in quantities:
            # (grading says which of the CRS measurements could be a finding)
            if what not in CRS_CONCEPTS or quantity is None:
                continue
            m = self._measurement(what, quantity, _EPOCH, source, raw, path)
            if m is not None:
                shown = f"{self.k.observations[what].display} {fmt_value(m.value)} {m.unit}"
                if m.original:
                    shown += f" ({m.original})"
                self._undated_findings.append(
                    UndatedFinding(what, m.value, shown, f"{raw.location}{path}", not_after)
                )

    # --- ICANS assessments -------------------------------------------------------------

    def _assessment(
        self, raw: RawResource, obs: Resource, concept: str, measurements: list[Measurement]
    ) -> None:
        """An ICE or CAPD score (with its items as components), or a coded neurological
        finding (level of consciousness, seizure, motor, raised ICP)."""
        at = self._effective(raw, obs)
        if at is None:
            return
        rid = obs.id
        source = "Observation/" + rid if rid else raw.reference
        if concept in NEURO_CONCEPTS:
            value = obs.valueCodeableConcept
            meaning = self._neuro_value(value) if value is not None else None
            if meaning is None or meaning[0] != concept.removeprefix("neuro_"):
                accepted = ", ".join(
                    level
                    for (domain, level) in self.k.neuro_value_by_code.values()
                    if domain == concept.removeprefix("neuro_")
                )
                self.issues.append(
                    Issue(
                        f"{raw.location}.valueCodeableConcept",
                        f"{self.k.observations[concept].display}: no recognised coded value "
                        f"(accepted: {accepted}); not used",
                    )
                )
                return
            display = value.text if value is not None and value.text else meaning[1]
            self._neuro.append(NeuroFinding(meaning[0], meaning[1], display, at, source))
            return
        scores: list[tuple[Measurement, str]] = []
        total = self._score(concept, obs.valueQuantity, obs.valueInteger, at, source, raw, "")
        if total is not None:
            scores.append(
                (total, ".valueInteger" if obs.valueInteger is not None else ".valueQuantity")
            )
        for i, part in enumerate(obs.component):
            part_concept = self._concepts.get(part.code, _UNSEEN)
            if part_concept is _UNSEEN:
                part_concept = self._part(part)
            if part_concept in ICE_ITEM_CONCEPTS:
                path = f".component[{i}]"
                item = self._score(
                    part_concept, part.valueQuantity, part.valueInteger, at, source, raw, path
                )
                if item is not None:
                    scores.append((item, path))
        measurements.extend(self._checked_scores(scores, raw))

    def _score(
        self,
        concept: str,
        quantity: Quantity | None,
        integer: int | None,
        at: datetime,
        source: str,
        raw: RawResource,
        path: str,
    ) -> Measurement | None:
        """A score as valueInteger or valueQuantity (at `path` in `raw`), or None."""
        if integer is not None:
            return self._integer(concept, integer, at, source, raw, f"{path}.valueInteger")
        if quantity is None:
            return None
        return self._measurement(concept, quantity, at, source, raw, f"{path}.valueQuantity")

    def _integer(
        self, concept: str, value: int, at: datetime, source: str, raw: RawResource, path: str
    ) -> Measurement | None:
        """A unitless score within its scale's range, or None (and an issue). Compared as
        the integer sent: JSON integers have no size limit, floats do."""
        bounds = self.k.plausible.get(concept)
        low, high = (bounds.min, bounds.max) if bounds is not None else (-_FINITE, _FINITE)
        if not low <= value <= high:
            shown = str(value) if abs(value) < 10**12 else "a number of that size"
            self.issues.append(
                Issue(
                    f"{raw.location}{path}",
                    f"{shown} is outside the {self.k.observations[concept].display} range "
                    f"{low:g}-{high:g}; not used",
                )
            )
            return None
        canonical = self.k.observations[concept].canonical_unit
        return Measurement(concept, float(value), canonical, at, source)

    def _checked_scores(
        self, scores: list[tuple[Measurement, str]], raw: RawResource
    ) -> list[Measurement]:
        """The scores of one assessment, unless its items disagree with its total, or a
        CAPD score belongs to a patient too old for it (then none, and an issue)."""
        concepts = {m.concept: m for m, _ in scores}
        total = concepts.get("ice_score")
        items = [m for m in concepts.values() if m.concept in ICE_ITEM_CONCEPTS]
        if total is not None and items:
            added = sum(m.value for m in items)
            complete = len(items) == len(ICE_ITEM_CONCEPTS)
            if added > total.value or (complete and added != total.value):
                self.issues.append(
                    Issue(
                        raw.location,
                        f"ICE items add up to {added:g} but the ICE total is {total.value:g}: "
                        "the assessment is not used",
                    )
                )
                return []
        capd = concepts.get("capd_score")
        if capd is not None and self._too_old_for_capd(capd.at):
            path = next(p for m, p in scores if m is capd)
            self.issues.append(
                Issue(
                    f"{raw.location}{path}",
                    f"CAPD score for a patient aged {age_on(self._birth, capd.at)}: ASTCT "
                    f"grades ICANS by the CAPD only below age {self._capd_age()} (use the ICE "
                    "score); not used",
                )
            )
            return [m for m, _ in scores if m is not capd]
        return [m for m, _ in scores]

    def _capd_age(self) -> int:
        icans = self.k.icans
        return icans.capd.below_age_years if icans is not None else 12

    def _too_old_for_capd(self, at: datetime) -> bool:
        age = age_on(self._birth, at)
        return age is not None and age >= self._capd_age()

    def _neuro_value(self, value: CodeableConcept) -> tuple[str, str] | None:
        """(domain, level) a coded value charts, by code or else by name."""
        return self._neuro_meaning(
            value.coding, value.texts(), self.k.neuro_value_by_code, self.k.neuro_value_names
        )

    @staticmethod
    def _neuro_meaning(
        codings: Iterable[Coding],
        texts: Iterable[str],
        by_code: Mapping[tuple[str, str], tuple[str, str]],
        names: NameIndex,
    ) -> tuple[str, str] | None:
        for coding in codings:
            if coding.system and coding.code:
                meaning = by_code.get((coding.system, coding.code))
                if meaning is not None:
                    return meaning
        for text in texts:
            found = names.match(text)
            if found is not None:
                domain, level = found.split(" ", 1)
                return domain, level
        return None

    def _condition(self, raw: RawResource) -> None:
        """A Condition charting a seizure or cerebral oedema, from its onset."""
        cond = self._read(raw, models.Condition)
        if cond is None:
            return
        status = cond.verificationStatus
        if status is not None and any(c.code in NOT_A_CONDITION for c in status.coding):
            return
        code = cond.code
        if not isinstance(code, CodeableConcept):
            return
        meaning = self._neuro_meaning(
            code.coding, code.texts(), self.k.neuro_condition_by_code, self.k.neuro_condition_names
        )
        if meaning is None:
            return
        if cond.subject is not None and not self._same_patient(raw, cond.subject):
            return
        if cond.onsetDateTime is not None:
            at = self._time(cond.onsetDateTime, raw, ".onsetDateTime")
        elif cond.recordedDate is not None:
            at = self._time(cond.recordedDate, raw, ".recordedDate")
        else:
            self.issues.append(Issue(f"{raw.location}.onset[x]", "no onset or recorded date"))
            return
        if at is None:
            return
        display = code.text or next((c.display for c in code.coding if c.display), meaning[1])
        self._neuro.append(NeuroFinding(meaning[0], meaning[1], display, at, raw.reference))

    def _questionnaire_response(self, raw: RawResource, measurements: list[Measurement]) -> None:
        """A completed ICE or CAPD assessment on the service's published Questionnaire."""
        qr = self._read(raw, models.QuestionnaireResponse)
        if qr is None or qr.status not in COUNTED_RESPONSE_STATUSES:
            return
        items_of = self.k.questionnaire_items.get((qr.questionnaire or "").split("|", 1)[0])
        if items_of is None:
            return  # another form: nothing the rules read
        if qr.subject is not None and not self._same_patient(raw, qr.subject):
            return
        if qr.authored is None:
            self.issues.append(Issue(f"{raw.location}.authored", "no authored time"))
            return
        at = self._time(qr.authored, raw, ".authored")
        if at is None:
            return
        source = raw.reference
        scores: list[tuple[Measurement, str]] = []
        capd_items: list[float] = []
        for path, item in _walk(qr.item, ""):
            coded = items_of.get(item.linkId)
            answer = item.answer[0] if item.answer else None
            if coded is None or answer is None:
                continue
            concept = self.k.observation_by_code.get(coded)
            if concept in NEURO_CONCEPTS:
                coding = answer.valueCoding
                meaning = (
                    self._neuro_meaning((coding,), (), self.k.neuro_value_by_code, NameIndex({}))
                    if coding is not None
                    else None
                )
                if meaning is not None:
                    display = coding.display if coding is not None and coding.display else ""
                    self._neuro.append(
                        NeuroFinding(meaning[0], meaning[1], display or meaning[1], at, source)
                    )
                continue
            value = answer.valueInteger
            if value is None:
                continue
            answer_path = f"{path}.answer[0].valueInteger"
            if concept is not None and concept in ICANS_CONCEPTS:
                m = self._integer(concept, value, at, source, raw, answer_path)
                if m is not None:
                    scores.append((m, answer_path))
            elif CAPD_ITEM.fullmatch(item.linkId) and 0 <= value <= 4:
                capd_items.append(float(value))
        concepts = {m.concept for m, _ in scores}
        items = [m for m, _ in scores if m.concept in ICE_ITEM_CONCEPTS]
        if "ice_score" not in concepts and len(items) == len(ICE_ITEM_CONCEPTS):
            added = sum(m.value for m in items)
            scores.append((Measurement("ice_score", added, "{score}", at, source), ""))
        if capd_items:
            added = sum(capd_items)
            total = next((m for m, _ in scores if m.concept == "capd_score"), None)
            if total is not None and (
                added > total.value or (len(capd_items) == 8 and added != total.value)
            ):
                self.issues.append(
                    Issue(
                        raw.location,
                        f"CAPD items add up to {added:g} but the CAPD total is "
                        f"{total.value:g}: the assessment is not used",
                    )
                )
                return
            if total is None and len(capd_items) == 8:
                scores.append((Measurement("capd_score", added, "{score}", at, source), ""))
        measurements.extend(self._checked_scores(scores, raw))

    def _part(self, component: Component) -> str | None:
        """The concept of a component's code (remembered)."""
        code = component.code
        return self._concepts.put(code, self._observation_concept(code), _chars(code))

    def _coded_device(self, value: CodeableConcept) -> tuple[str, str] | None:
        device: tuple[str, str] | None = self._devices.get(value, _UNSEEN)
        if device is _UNSEEN:
            device = self._devices.put(value, self._device(value), _chars(value))
        return device

    def _observation_concept(self, code: CodeableConcept) -> str | None:
        """By a mapped code; else by name, unless the text names another measurement
        ("Body weight change", "Pulmonary artery systolic"): an unmapped LOINC or SNOMED
        code may still be a body temperature or a blood pressure we must not miss.
        None for a concept no rule reads (a heart rate): nothing to make a fact of."""
        for coding in code.coding:
            system, value = coding.system, coding.code
            if system and value:
                concept = self.k.observation_by_code.get((system, value))
                if concept is not None:
                    return concept if concept in CONCEPTS_READ else None
        for text in code.texts():
            concept = self._observation_names.match(text)
            if concept is not None and not self.k.excluded(concept, text):
                return concept if concept in CONCEPTS_READ else None
        return None

    def _device(self, code: CodeableConcept) -> tuple[str, str] | None:
        concept: str | None = None
        for coding in code.coding:
            system, value = coding.system, coding.code
            if system and value:
                concept = self.k.device_by_code.get((system, value))
                if concept is not None:
                    break
        if concept is None:
            for text in code.texts():
                concept = self._device_names.match(text)
                if concept is not None:
                    break
        if concept is None:
            return None
        device = self.k.devices[concept]
        return device.support, device.display

    def _measurement(
        self, concept: str, q: Quantity, at: datetime, source: str, raw: RawResource, path: str
    ) -> Measurement | None:
        """The quantity at `path` in `raw` in the concept's canonical unit, or None."""
        value = q.value
        if value is None:
            return None  # a dataAbsentReason, or nothing measured
        if q.comparator is not None:
            # "<39.5 Cel", ">5000 pg/mL": a bound, not the value; graded or scored as the
            # value it would be a guess (a fever that may not be one, a score off by how much)
            self.issues.append(
                Issue(
                    f"{raw.location}{path}.comparator",
                    f"{q.comparator!r} {value:g}: a bound, not a measured value; not used",
                )
            )
            return None
        code, unit_text = q.code, q.unit
        plan = self._unit_plans.get((concept, code, unit_text))
        if plan is None:
            plan = self._unit_plans.put(
                (concept, code, unit_text),
                self._unit_plan(concept, code, unit_text),
                len(code or "") + len(unit_text or ""),
            )
        if plan is _NO_UNIT:
            self._unknown_unit(concept, code or unit_text, raw, path)
            return None
        rule, canonical, low, high, converts, seen = plan
        # charts repeat values, and rounding is slow; 0.0 and -0.0 are one key, so zeros
        # are not remembered
        converted = seen.get(value) if value else None
        if converted is None:
            converted = rule.to_canonical(value)
            if value and low <= converted <= high:
                seen.put(value, converted)
        original = f"{value:g} {code or unit_text}" if converts else None
        if low <= converted <= high:  # in bounds, so finite (nan compares False)
            return Measurement(concept, converted, canonical, at, source, original)
        if not math.isfinite(converted):
            # inf/nan would compare as a fever or a hypotension: report, never grade on it.
            problem = (
                "not a finite number"
                if not math.isfinite(value)
                else f"not a finite number in {canonical} ({value:g} {code or unit_text})"
            )
            self.issues.append(Issue(f"{raw.location}{path}.value", problem))
            return None
        # a unit or typing error (0.08 g for a weight, 380 for 38.0 °C): never dose or
        # grade on it, say so (finite values are out of bounds only where bounds are set)
        shown = f"{converted:g} {canonical}" + (f" ({original})" if original else "")
        self.issues.append(
            Issue(
                f"{raw.location}{path}.value",
                f"{shown} is not a plausible {concept} (data-quality bounds "
                f"{low:g}-{high:g} {canonical}); not used",
            )
        )
        return None

    def _unit_plan(self, concept: str, code: str | None, unit: str | None) -> _UnitPlan:
        """How a value of `concept` in (`code`, `unit`) becomes canonical, with the
        bounds it must fall in; _NO_UNIT when the unit is not recognised."""
        rule = self._unit_rule(concept, code, unit)
        if rule is None:
            return _NO_UNIT
        bounds = self.k.plausible.get(concept)
        low, high = (bounds.min, bounds.max) if bounds is not None else (-_FINITE, _FINITE)
        converts = rule.factor != 1.0 or rule.offset != 0.0
        canonical = self.k.observations[concept].canonical_unit
        return rule, canonical, low, high, converts, _Memo(VALUES_PER_UNIT)

    def _unknown_unit(self, concept: str, given: str | None, raw: RawResource, path: str) -> None:
        """Report a quantity of `concept` whose unit is missing or not recognised."""
        accepted = ", ".join(
            u for conv in self.k.observations[concept].units for u in conv.units[:2]
        )
        problem = (
            f"no unit for {concept}"
            if given is None
            else f"unit {given!r} not recognised for {concept}"
        )
        self.issues.append(Issue(f"{raw.location}{path}.unit", f"{problem} (accepted: {accepted})"))

    def _unit_rule(self, concept: str, code: str | None, unit: str | None) -> UnitRule | None:
        """The conversion to the canonical unit: by the UCUM code, else by the unit text;
        a quantity without any unit only for a unitless concept (a score: unit "")."""
        table = self.k.units[concept]
        rule = None
        for given in (code, unit):
            if given is not None:
                rule = table.get(given.strip().lower())
                if rule is not None:
                    break
        if rule is None and code is None and unit is None:
            rule = table.get("")
        return rule

    def _effective(self, raw: RawResource, obs: Resource) -> datetime | None:
        if (text := obs.effectiveDateTime) is not None:
            return self._time(text, raw, ".effectiveDateTime")
        if (text := obs.effectiveInstant) is not None:
            return self._time(text, raw, ".effectiveInstant")
        period = obs.effectivePeriod
        if period is not None:
            # A value over a period is taken at its end (or its start while open).
            if (text := period.end) is not None:
                return self._time(text, raw, ".effectivePeriod.end")
            if (text := period.start) is not None:
                return self._time(text, raw, ".effectivePeriod.start")
        self.issues.append(Issue(f"{raw.location}.effective[x]", "no effective time"))
        return None

    # --- medication administrations ------------------------------------------------

    def _medication_index(
        self, raws: Iterable[RawResource], report: bool = True
    ) -> dict[str, Resource]:
        index: dict[str, Resource] = {}
        for raw in raws:
            med = self._read(raw, models.Medication, report)
            if med is None:
                continue
            index[raw.reference] = med
            if raw.full_url:
                index[raw.full_url] = med
        return index

    def _medication(
        self,
        concept: CodeableConcept | None,
        reference: Reference | None,
        contained: Iterable[object],
        medications: Mapping[str, Resource],
    ) -> MedicationMatch | None:
        candidates: list[CodeableConcept] = []
        if concept is not None:
            candidates.append(concept)
        ref = reference.reference if reference is not None else None
        if ref:
            med: Resource | None = None
            if ref.startswith("#"):
                med = self._contained_medication(contained, ref[1:])
            else:
                med = medications.get(ref) or medications.get(ref.rsplit("/_history", 1)[0])
            if med is not None and isinstance(med.code, CodeableConcept):
                candidates.append(med.code)
        for cc in candidates:
            match = self._match_medication(cc)
            if match is not None:
                return match
        if reference is not None and reference.display:
            return self._by_name(reference.display)
        return None

    def _administration(
        self, raw: RawResource, medications: Mapping[str, Resource]
    ) -> Administration | None:
        ma = self._read(raw, models.MedicationAdministration)
        if ma is None:
            product = self._exposure_named(raw)
            if product is not None:
                # not readable FHIR, but naming a CAR-T or an engager: a risk window may be
                # open (the issues say what is wrong with it)
                self._unread_exposures.append(UnreadExposure(product, raw.location))
            return None
        if ma.status in IGNORED_ADMINISTRATION_STATUSES:
            return None
        if ma.subject is not None and not self._same_patient(raw, ma.subject):
            return None
        concept = ma.medicationCodeableConcept
        reference = ma.medicationReference
        match = self._medication(concept, reference, ma.contained, medications)
        if match is None:
            unknown = self._unidentified(concept, reference, ma.contained, medications)
            if unknown is not None:
                self.issues.append(Issue(f"{raw.location}{unknown[0]}", unknown[1]))
            else:
                self._unidentified_product(raw, ma, concept, reference, medications)
            return None
        dosage = ma.dosage
        if match.medication_class == "vasopressor" and self._not_intravenous(dosage):
            return None  # eye drops, nasal spray, local infiltration: not for hypotension
        administration = self._administered(raw, ma, match)
        if administration is None and match.medication_class == "vasopressor":
            # a vasopressor whose time cannot be read may be running now: said, not graded
            self._undated_findings.append(
                UndatedFinding(
                    "vasopressor", None, match.display, raw.location, _latest_instant(_given(ma))
                )
            )
        if administration is None and (
            match.medication_class in EXPOSURE_CLASSES or match.medication_class == "tocilizumab"
        ):
            # (the reason is among the issues) a risk window may be open, or a dose was
            # given that the interval and the counts must know of: say so on a card
            unread = UnreadExposure(match.display, raw.location, _latest_instant(_given(ma)))
            if match.medication_class == "tocilizumab":
                self._unread_doses.append(unread)
            else:
                self._unread_exposures.append(unread)
        return administration

    def _unidentified(
        self,
        concept: CodeableConcept | None,
        reference: Reference | None,
        contained: Iterable[object],
        medications: Mapping[str, Resource],
    ) -> tuple[str, str] | None:
        """Where and why an administration's medication cannot be known at all (it may
        be a CAR-T: said, never passed over), or None when it is simply not one the rules
        read (a coded or named medication of another kind)."""
        if concept is not None or (reference is not None and reference.display):
            return None
        if reference is None:
            return (
                ".medication[x]",
                "no medicationCodeableConcept or medicationReference: the medication "
                "cannot be recognised",
            )
        ref = reference.reference or ""
        if ref in ("", "#"):
            return (
                ".medicationReference",
                "no reference and no display text: the medication cannot be recognised",
            )
        if ref.startswith("#"):
            if self._contained_medication(contained, ref[1:]) is not None:
                return None  # read, and not a medication the rules know
            where = "a readable contained Medication of this resource"
        elif ref in medications or ref.rsplit("/_history", 1)[0] in medications:
            return None
        else:
            where = "in the data"
        return (
            ".medicationReference",
            f"referenced {ref} is not {where} and has no display text: the medication "
            "cannot be recognised",
        )

    def _unidentified_product(
        self,
        raw: RawResource,
        ma: Resource,
        concept: CodeableConcept | None,
        reference: Reference | None,
        medications: Mapping[str, Resource],
    ) -> None:
        """An administration named only as a class ("CAR T-cell infusion"): no product,
        so no window the rules can place — a data issue, and a card (as one not read)."""
        generic = self.k.unidentified_exposure
        if generic is None:
            return
        texts = list(concept.texts()) if concept is not None else []
        if reference is not None:
            if reference.display:
                texts.append(reference.display)
            med = medications.get(reference.reference or "")
            if med is not None and isinstance(med.code, CodeableConcept):
                texts.extend(med.code.texts())
        names = self.k.unidentified_exposure_names
        filler = frozenset(generic.filler)
        named = next((t for t in texts if _only_names(t, names, filler)), None)
        if named is None:
            return
        where = ".medicationReference" if concept is None else ".medicationCodeableConcept"
        self.issues.append(
            Issue(
                f"{raw.location}{where}",
                "names a CAR-T or T-cell-engager therapy but no product the rules know: its "
                "risk window cannot be placed; code the product (RxNorm) or name it",
            )
        )
        text = _given(ma)
        given = _parse_time(text, self.assume_tz) if text is not None else None
        latest = given if isinstance(given, datetime) else _latest_instant(text)
        self._unread_exposures.append(UnreadExposure(generic.display, raw.location, latest))

    def _exposure_named(self, raw: RawResource) -> str | None:
        """The CAR-T, TCR-T or T-cell-engager product an administration that is not
        readable FHIR names (a code of one as a value, or its name in a text), unless its
        status says it was not given. Bounded: safe on any size or nesting."""
        if self._scan_budget <= 0:
            return None
        data = raw.json()
        status = data.get("status")
        if isinstance(status, str) and status in IGNORED_ADMINISTRATION_STATUSES:
            return None
        k = self.k
        codes = k.medication_by_bare_code
        for text in json_strings(data, self._scan_budget):
            # (one budget for all of a chart's unreadable administrations: a hostile chart
            # of thousands costs no more than one)
            self._scan_budget -= 1
            concept = codes.get(text) or k.medication_names.match(text)
            medication = k.medications.get(concept) if concept else None
            if medication is not None and medication.medication_class in EXPOSURE_CLASSES:
                return medication.display
        return None

    def _administered(
        self, raw: RawResource, ma: Resource, match: MedicationMatch
    ) -> Administration | None:
        """The administration with its times, or None (and the issues) when they cannot
        be read."""
        period = ma.effectivePeriod
        if ma.effectiveDateTime is not None:
            start = self._time(ma.effectiveDateTime, raw, ".effectiveDateTime")
            # charted as a moment but still in progress: it is running (an infusion)
            end = None if ma.status == "in-progress" else start
        elif period is not None and period.start is not None:
            start = self._time(period.start, raw, ".effectivePeriod.start")
            end = (
                self._time(period.end, raw, ".effectivePeriod.end")
                if period.end is not None
                else None
            )
            if period.end is not None and end is None:
                return None
        else:
            self.issues.append(Issue(f"{raw.location}.effective[x]", "no effective time"))
            return None
        if start is None:
            return None
        if end is not None and end < start:
            self.issues.append(
                Issue(f"{raw.location}.effectivePeriod", "period ends before it starts")
            )
            return None
        return Administration(
            concept=match.concept,
            medication_class=match.medication_class,
            display=match.display,
            start=start,
            end=end,
            source=raw.reference,
        )

    def _match_medication(self, cc: CodeableConcept) -> MedicationMatch | None:
        for coding in cc.coding:
            system, value = coding.system, coding.code
            if system and value:
                concept = self.k.medication_by_code.get((system, value))
                if concept is not None:
                    return self._concept(concept)
        for text in cc.texts():
            match = self._by_name(text)
            if match is not None:
                return match
        return None

    def _by_name(self, text: str) -> MedicationMatch | None:
        concept = self.k.medication_names.match(text)
        if concept is None or self.k.excluded(concept, text):
            return None
        return self._concept(concept)

    def _not_intravenous(self, dosage: Dosage | None) -> bool:
        """True only when the charted route is recognisably not intravenous."""
        route = dosage.route if dosage is not None else None
        if not isinstance(route, dict):
            return False  # no route, or one we cannot read: counted (never under-grade)
        codings = route.get("coding")
        for coding in codings if isinstance(codings, list) else ():
            if isinstance(coding, dict) and (
                (coding.get("system"), coding.get("code")) in self.k.non_iv_route_codes
            ):
                return True
        texts = (
            [route.get("text")] + [c.get("display") for c in codings if isinstance(c, dict)]
            if isinstance(codings, list)
            else [route.get("text")]
        )
        return any(
            isinstance(t, str) and self.k.non_iv_route_names.match(t) is not None for t in texts
        )

    def _concept(self, concept: str) -> MedicationMatch:
        med = self.k.medications[concept]
        return MedicationMatch(concept, med.medication_class, med.display)

    # --- shared --------------------------------------------------------------------

    def _time(self, text: str, raw: RawResource, path: str) -> datetime | None:
        """The instant `text` (at `path` in `raw`) stands for, or None (and an issue)."""
        parsed = self._times.get(text)
        if parsed is None:
            parsed = self._times[text] = _parse_time(text, self.assume_tz)
        if isinstance(parsed, str):
            self.issues.append(Issue(f"{raw.location}{path}", parsed))
            return None
        return parsed

    def is_hook_patient(self, reference: str | None) -> bool:
        """Whether a subject reference names the hook's patient (or no patient at all)."""
        same = self._subjects.get(reference)
        if same is None:
            same = self._subjects[reference] = (
                self.patient_id is None
                or not reference
                or "Patient/" not in reference
                or reference.rsplit("Patient/", 1)[1].split("/")[0] == self.patient_id
            )
        return same

    def _same_patient(self, raw: RawResource, subject: Reference) -> bool:
        """False (and reported) when the resource names another patient."""
        same = self.is_hook_patient(subject.reference)
        if not same:
            self.issues.append(
                Issue(
                    f"{raw.location}.subject.reference",
                    "resource belongs to another patient than context.patientId; skipped",
                )
            )
        return same


_LATEST = datetime.max.replace(tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # (a placeholder time: undated values)


def _latest_instant(text: object) -> datetime | None:
    """The latest instant a FHIR dateTime that could not be read may mean, when its date
    can be (a time without offset: the end of its day in the westernmost zone, UTC-12,
    is the latest); None when not even a date can be read."""
    day = _full_date(text[:10]) if isinstance(text, str) else None
    if day is None:
        return None
    end_of_day = datetime.combine(day, time.max, UTC)
    if end_of_day > _LATEST - timedelta(hours=12):
        return _LATEST  # 9999-12-31: the latest instant there is
    return end_of_day + timedelta(hours=12)


def _given(ma: Resource) -> str | None:
    """When an administration was given, as charted: its time, or its period's start."""
    period = ma.effectivePeriod
    return ma.effectiveDateTime or (period.start if period is not None else None)


def _only_names(text: str, names: NameIndex, filler: frozenset[str]) -> bool:
    """Whether `text` is one of `names` with `filler` words only (no other drug named)."""
    rest = text
    while (found := names.find(rest)) is not None:  # (each pass removes a name: it ends)
        rest = rest[: found[0]] + " " + rest[found[1] :]
    if rest == text:
        return False
    return all(word in filler for word in _WORDS.findall(rest.lower()))


_WORDS = re.compile(r"[a-z]{4,}")


def _full_date(text: object) -> date | None:
    """A FHIR date with year, month and day, or None."""
    match = _BIRTH_DATE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:  # 1980-13-01
        return None


def _walk(items: Iterable[ResponseItem], path: str) -> Iterable[tuple[str, ResponseItem]]:
    """Every item of a QuestionnaireResponse (nested ones too, in document order), with
    its FHIR path. Iterative: a client's nesting never meets the recursion limit."""
    stack = [(path, iter(enumerate(items)))]
    while stack:
        where, siblings = stack[-1]
        step = next(siblings, None)
        if step is None:
            stack.pop()
            continue
        i, item = step
        here = f"{where}.item[{i}]"
        yield here, item
        if item.item:
            stack.append((here, iter(enumerate(item.item))))


def _parse_time(text: str, assume: tzinfo | None) -> datetime | str:
    """The instant, or why `text` is not one (see `timing`)."""
    if _PLAIN_INSTANT.fullmatch(text):
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            pass  # e.g. a day that does not exist: the rules below say why
        else:
            if parsed.year >= EARLIEST_YEAR:
                return parsed
    try:
        return parse_fhir_datetime(text, assume)
    except TimeFormatError as exc:
        return str(exc)
