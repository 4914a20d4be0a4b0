"""FHIR resources -> facts, driven by fhir_mappings/. The one place codes and units meet.

Statuses: Observations with status entered-in-error, cancelled, registered or unknown
are not counted; MedicationAdministrations not-done or entered-in-error are not counted.
Resources about another patient than the hook's `patientId` are reported and skipped.
Codes that are not mapped are ignored (most of a chart is irrelevant to CRS); a mapped
concept with an unusable value, unit or time is reported, and so is a value that is not
a finite number in its canonical unit (e.g. 1e308 mg/dL, which overflows in mg/L).

Each resource is read as a plain JSON object once `models.plain_*` vouches that its lean
model would read the same values; anything else is validated by the lean model (which
reports what is wrong). Both give the same facts and issues; the model path alone is
`Normaliser(..., fast=False)`, the reference the fast path is tested against.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from pydantic import ValidationError

from cds.engine.facts import Administration, Facts, Measurement, OxygenSupport
from cds.fhir import models
from cds.fhir.reading import Issue, RawResource, ResourceCollector, validation_issues
from cds.fhir.timing import EARLIEST_YEAR, TimeFormatError, parse_fhir_datetime
from cds.knowledge import Knowledge, NameIndex, UnitRule

COUNTED_OBSERVATION_STATUSES = frozenset({"final", "amended", "corrected", "preliminary"})
IGNORED_ADMINISTRATION_STATUSES = frozenset({"not-done", "entered-in-error"})
MG_UNITS = {"mg": 1.0, "milligram": 1.0, "milligrams": 1.0, "g": 1000.0, "gram": 1000.0}
MG_PER_KG_UNITS = frozenset({"mg/kg", "mg/kg/dose", "mg/kg{dose}"})

# A resource (or a part of one) as read: the JSON object itself on the fast path, the lean
# model's dump otherwise. Absent and null fields read alike (`.get`), as in the models.
Json = dict[str, Any]

# The shape of nearly every time a FHIR server sends (seconds and an offset in range),
# which the C parser reads ~10x faster. Anything else, and any surprise (30 February),
# goes to `parse_fhir_datetime`, which defines the rules and says what is wrong.
_PLAIN_INSTANT = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(?:Z|[+-](?:0[0-9]|1[0-4]):[0-5][0-9])"
)


@dataclass(frozen=True)
class Normalised:
    """The facts read from the data, and what could not be read."""

    facts: Facts
    issues: list[Issue]


class _MemoNames:
    """A NameIndex whose matches are remembered: a chart repeats the same few texts."""

    def __init__(self, index: NameIndex) -> None:
        self.index = index
        self.seen: dict[str, str | None] = {}

    def match(self, text: str) -> str | None:
        if text in self.seen:
            return self.seen[text]
        concept = self.seen[text] = self.index.match(text)
        return concept


@dataclass(frozen=True)
class MedicationMatch:
    """A medication recognised from a code, a name, or a referenced Medication."""

    concept: str
    medication_class: str
    display: str


class Normaliser:
    """Turns collected resources into facts for one patient.

    `fast=False` validates every resource with its lean model instead of reading plain
    resources directly: slower, same results (the reference for tests of the fast path).
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
        self._reset_memos()

    def _reset_memos(self) -> None:
        """Memos of what a chart repeats (names, times), kept for one evaluation only."""
        self._observation_names = _MemoNames(self.k.observation_names)
        self._device_names = _MemoNames(self.k.device_names)
        self._times: dict[str, datetime | str] = {}  # text -> instant, or why it is invalid
        # What an Observation.code means: (concept, device), by the parts that decide it.
        self._codes: dict[tuple[object, ...], tuple[str | None, tuple[str, str] | None]] = {}
        self._unit_rules: dict[tuple[str, str | None, str | None], UnitRule | None] = {}

    # --- entry points --------------------------------------------------------------

    def normalise(self, collected: ResourceCollector) -> Normalised:
        """Facts from every Observation and MedicationAdministration collected."""
        self.issues = list(collected.issues)
        self._reset_memos()
        medications = self._medication_index(collected.of_type("Medication"))
        measurements: list[Measurement] = []
        oxygen: list[OxygenSupport] = []
        administrations: list[Administration] = []
        for raw in collected.resources:
            resource_type = raw.resource_type
            if resource_type == "Observation":
                self._observation(raw, measurements, oxygen)
            elif resource_type == "MedicationAdministration":
                admin = self._administration(raw, medications)
                if admin is not None:
                    administrations.append(admin)
        return Normalised(Facts.build(measurements, oxygen, administrations), self.issues)

    def medication(
        self,
        concept: models.CodeableConcept | None,
        reference: models.Reference | None,
        contained: list[dict[str, object]],
        medications: Mapping[str, Json],
    ) -> MedicationMatch | None:
        """Recognise a medication given by code/text or by reference to a Medication
        (`medications` as `medication_index` builds it)."""
        return self._medication(_dump(concept), _dump(reference), contained, medications)

    def medication_index(self, *collections: ResourceCollector) -> dict[str, Json]:
        """Readable Medication resources by `Medication/id` and fullUrl, for resolving a
        medicationReference; problems are reported where each collection is normalised."""
        return self._medication_index(
            (raw for c in collections for raw in c.of_type("Medication")), report=False
        )

    # --- reading -------------------------------------------------------------------

    def _read(
        self, raw: RawResource, model: type[models.Lean], plain: Callable[[Json], bool]
    ) -> Json | None:
        """The resource as its lean model reads it, or None (and the issues) if invalid."""
        if self.fast and plain(raw.data):
            return raw.data  # vouched for: the model would read exactly this
        try:
            return model.model_validate(raw.data).model_dump()
        except ValidationError as exc:
            self.issues.extend(validation_issues(raw.location, exc))
            return None

    def _read_quietly(
        self, data: Json, model: type[models.Lean], plain: Callable[[Json], bool]
    ) -> Json | None:
        """As `_read`, for data whose problems are not reported (contained resources)."""
        if self.fast and plain(data):
            return data
        try:
            return model.model_validate(data).model_dump()
        except ValidationError:
            return None

    # --- observations --------------------------------------------------------------

    def _observation(
        self, raw: RawResource, measurements: list[Measurement], oxygen: list[OxygenSupport]
    ) -> None:
        obs = self._read(raw, models.Observation, models.plain_observation)
        if obs is None:
            return
        if obs["status"] not in COUNTED_OBSERVATION_STATUSES:
            return
        if not self._same_patient(raw, obs.get("subject")):
            return
        concept, device = self._code_meaning(obs["code"])
        value_concept: Json | None = obs.get("valueCodeableConcept")
        if device is None and value_concept is not None:
            device = self._device(value_concept)
        parts = obs.get("component")
        components = (
            [(i, c, self._observation_concept(c["code"])) for i, c in enumerate(parts)]
            if parts
            else []
        )
        if concept is None and device is None and not any(c for _, _, c in components):
            return
        at = self._effective(raw, obs)
        if at is None:
            return
        source = raw.reference
        if device is not None:
            oxygen.append(OxygenSupport(device[0], device[1], at, source))
        quantity: Json | None = obs.get("valueQuantity")
        if concept is not None and quantity is not None:
            m = self._measurement(concept, quantity, at, source, raw, ".valueQuantity")
            if m is not None:
                measurements.append(m)
        for i, component, comp_concept in components:
            quantity = component.get("valueQuantity")
            if comp_concept is None or quantity is None:
                continue
            m = self._measurement(
                comp_concept, quantity, at, source, raw, f".component[{i}].valueQuantity"
            )
            if m is not None:
                measurements.append(m)

    def _code_meaning(self, code: Json) -> tuple[str | None, tuple[str, str] | None]:
        """(observation concept, oxygen device) of an Observation.code; a chart repeats a
        few codes, so the answer is remembered by the text and codings that decide it."""
        key = (
            code.get("text"),
            *[(c.get("system"), c.get("code"), c.get("display")) for c in code.get("coding") or ()],
        )
        meaning = self._codes.get(key)
        if meaning is None:
            meaning = self._codes[key] = (self._observation_concept(code), self._device(code))
        return meaning

    def _observation_concept(self, code: Json) -> str | None:
        """By a mapped code; else by name, unless the text names another measurement
        ("Body weight change", "Pulmonary artery systolic"): an unmapped LOINC or SNOMED
        code may still be a body temperature or a blood pressure we must not miss."""
        for coding in code.get("coding") or ():
            system, value = coding.get("system"), coding.get("code")
            if system and value:
                concept = self.k.observation_by_code.get((system, value))
                if concept is not None:
                    return concept
        for text in _texts(code):
            concept = self._observation_names.match(text)
            if concept is not None and not self.k.excluded(concept, text):
                return concept
        return None

    def _device(self, code: Json) -> tuple[str, str] | None:
        concept: str | None = None
        for coding in code.get("coding") or ():
            system, value = coding.get("system"), coding.get("code")
            if system and value:
                concept = self.k.device_by_code.get((system, value))
                if concept is not None:
                    break
        if concept is None:
            for text in _texts(code):
                concept = self._device_names.match(text)
                if concept is not None:
                    break
        if concept is None:
            return None
        device = self.k.devices[concept]
        return device.support, device.display

    def _measurement(
        self, concept: str, q: Json, at: datetime, source: str, raw: RawResource, path: str
    ) -> Measurement | None:
        """The quantity at `path` in `raw` in the concept's canonical unit, or None."""
        if q.get("value") is None:
            return None  # a dataAbsentReason, or nothing measured
        value = float(q["value"])  # the model reads integers as floats
        code, unit_text = q.get("code"), q.get("unit")
        rule = self._unit_rule(concept, code, unit_text)
        canonical = self.k.observations[concept].canonical_unit
        if rule is None:
            given = code or unit_text
            accepted = ", ".join(
                u for conv in self.k.observations[concept].units for u in conv.units[:2]
            )
            problem = (
                f"no unit for {concept}"
                if given is None
                else f"unit {given!r} not recognised for {concept}"
            )
            self.issues.append(
                Issue(f"{raw.location}{path}.unit", f"{problem} (accepted: {accepted})")
            )
            return None
        converted = rule.to_canonical(value)
        if not math.isfinite(converted):
            # inf/nan would compare as a fever or a hypotension: report, never grade on it.
            problem = (
                "not a finite number"
                if not math.isfinite(value)
                else f"not a finite number in {canonical} ({value:g} {code or unit_text})"
            )
            self.issues.append(Issue(f"{raw.location}{path}.value", problem))
            return None
        original = None
        if rule.factor != 1.0 or rule.offset != 0.0:
            original = f"{value:g} {code or unit_text}"
        bounds = self.k.plausible.get(concept)
        if bounds is not None and not bounds.min <= converted <= bounds.max:
            # a unit or typing error (0.08 g for a weight, 380 for 38.0 °C): never dose
            # or grade on it, say so
            shown = f"{converted:g} {canonical}" + (f" ({original})" if original else "")
            self.issues.append(
                Issue(
                    f"{raw.location}{path}.value",
                    f"{shown} is not a plausible {concept} (data-quality bounds "
                    f"{bounds.min:g}-{bounds.max:g} {canonical}); not used",
                )
            )
            return None
        return Measurement(concept, converted, canonical, at, source, original)

    def _unit_rule(self, concept: str, code: str | None, unit: str | None) -> UnitRule | None:
        """The conversion to the canonical unit: by the UCUM code, else by the unit text."""
        key = (concept, code, unit)
        if key in self._unit_rules:
            return self._unit_rules[key]
        table = self.k.units[concept]
        rule = None
        for given in (code, unit):
            if given is not None:
                rule = table.get(given.strip().lower())
                if rule is not None:
                    break
        self._unit_rules[key] = rule
        return rule

    def _effective(self, raw: RawResource, obs: Json) -> datetime | None:
        if (text := obs.get("effectiveDateTime")) is not None:
            return self._time(text, raw, ".effectiveDateTime")
        if (text := obs.get("effectiveInstant")) is not None:
            return self._time(text, raw, ".effectiveInstant")
        period: Json | None = obs.get("effectivePeriod")
        if period is not None:
            # A value over a period is taken at its end (or its start while open).
            if (text := period.get("end")) is not None:
                return self._time(text, raw, ".effectivePeriod.end")
            if (text := period.get("start")) is not None:
                return self._time(text, raw, ".effectivePeriod.start")
        self.issues.append(Issue(f"{raw.location}.effective[x]", "no effective time"))
        return None

    # --- medication administrations ------------------------------------------------

    def _medication_index(
        self, raws: Iterable[RawResource], report: bool = True
    ) -> dict[str, Json]:
        index: dict[str, Json] = {}
        for raw in raws:
            med = (
                self._read(raw, models.Medication, models.plain_medication)
                if report
                else self._read_quietly(raw.data, models.Medication, models.plain_medication)
            )
            if med is None:
                continue
            index[raw.reference] = med
            if raw.full_url:
                index[raw.full_url] = med
        return index

    def _medication(
        self,
        concept: Json | None,
        reference: Json | None,
        contained: list[dict[str, object]],
        medications: Mapping[str, Json],
    ) -> MedicationMatch | None:
        candidates: list[Json] = []
        if concept is not None:
            candidates.append(concept)
        ref = reference.get("reference") if reference is not None else None
        if ref:
            med: Json | None = None
            if ref.startswith("#"):
                for item in contained:
                    if item.get("resourceType") == "Medication" and item.get("id") == ref[1:]:
                        med = self._read_quietly(item, models.Medication, models.plain_medication)
                        break
            else:
                med = medications.get(ref) or medications.get(ref.rsplit("/_history", 1)[0])
            if med is not None and med.get("code") is not None:
                candidates.append(med["code"])
        for cc in candidates:
            match = self._match_medication(cc)
            if match is not None:
                return match
        if reference is not None and reference.get("display"):
            return self._by_name(reference["display"])
        return None

    def _administration(
        self, raw: RawResource, medications: dict[str, Json]
    ) -> Administration | None:
        ma = self._read(
            raw, models.MedicationAdministration, models.plain_medication_administration
        )
        if ma is None:
            return None
        if ma["status"] in IGNORED_ADMINISTRATION_STATUSES:
            return None
        if not self._same_patient(raw, ma.get("subject")):
            return None
        concept: Json | None = ma.get("medicationCodeableConcept")
        reference: Json | None = ma.get("medicationReference")
        match = self._medication(concept, reference, ma.get("contained") or [], medications)
        if match is None:
            if reference is not None and concept is None:
                ref = reference.get("reference") or ""
                if ref and not ref.startswith("#") and ref not in medications:
                    self.issues.append(
                        Issue(
                            f"{raw.location}.medicationReference",
                            f"referenced {ref} is not in the data and has no display text: "
                            "the medication cannot be recognised",
                        )
                    )
            return None
        dosage: Json | None = ma.get("dosage")
        if match.medication_class == "vasopressor" and self._not_intravenous(dosage):
            return None  # eye drops, nasal spray, local infiltration: not for hypotension
        period: Json | None = ma.get("effectivePeriod")
        if ma.get("effectiveDateTime") is not None:
            start = self._time(ma["effectiveDateTime"], raw, ".effectiveDateTime")
            # charted as a moment but still in progress: it is running (an infusion)
            end = None if ma["status"] == "in-progress" else start
        elif period is not None and period.get("start") is not None:
            start = self._time(period["start"], raw, ".effectivePeriod.start")
            end = (
                self._time(period["end"], raw, ".effectivePeriod.end")
                if period.get("end") is not None
                else None
            )
            if period.get("end") is not None and end is None:
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
        dose_mg, dose_mg_per_kg = _dose(dosage.get("dose") if dosage is not None else None)
        return Administration(
            concept=match.concept,
            medication_class=match.medication_class,
            display=match.display,
            start=start,
            end=end,
            source=raw.reference,
            dose_mg=dose_mg,
            dose_mg_per_kg=dose_mg_per_kg,
        )

    def _match_medication(self, cc: Json) -> MedicationMatch | None:
        for coding in cc.get("coding") or ():
            system, value = coding.get("system"), coding.get("code")
            if system and value:
                concept = self.k.medication_by_code.get((system, value))
                if concept is not None:
                    return self._concept(concept)
        for text in _texts(cc):
            match = self._by_name(text)
            if match is not None:
                return match
        return None

    def _by_name(self, text: str) -> MedicationMatch | None:
        concept = self.k.medication_names.match(text)
        if concept is None or self.k.excluded(concept, text):
            return None
        return self._concept(concept)

    def _not_intravenous(self, dosage: Json | None) -> bool:
        """True only when the charted route is recognisably not intravenous."""
        route = dosage.get("route") if dosage is not None else None
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

    def _same_patient(self, raw: RawResource, subject: Json | None) -> bool:
        """False (and reported) when the resource names another patient."""
        if self.patient_id is None or subject is None:
            return True
        ref = subject.get("reference")
        if not ref or "Patient/" not in ref:
            return True
        if ref.rsplit("Patient/", 1)[1].split("/")[0] == self.patient_id:
            return True
        self.issues.append(
            Issue(
                f"{raw.location}.subject.reference",
                "resource belongs to another patient than context.patientId; skipped",
            )
        )
        return False


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


def _texts(concept: Json) -> list[str]:
    """The human-readable names in a CodeableConcept: text, then the codings' displays."""
    names = [concept["text"]] if concept.get("text") else []
    names.extend(c["display"] for c in concept.get("coding") or () if c.get("display"))
    return names


def _dump(model: models.Lean | None) -> Json | None:
    return None if model is None else model.model_dump()


def _dose(q: Json | None) -> tuple[float | None, float | None]:
    """(mg, mg/kg) from a dose quantity; unknown units give neither."""
    if q is None or q.get("value") is None:
        return None, None
    value = float(q["value"])  # the model reads integers as floats
    for unit in (q.get("code"), q.get("unit")):
        if unit is None:
            continue
        u = unit.strip().lower()
        if u in MG_UNITS:
            mg = value * MG_UNITS[u]
            return (round(mg, 6) if math.isfinite(mg) else None), None
        if u in MG_PER_KG_UNITS:
            return None, value
    return None, None
