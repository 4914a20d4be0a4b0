"""FHIR resources -> facts, driven by fhir_mappings/. The one place codes and units meet.

Statuses: Observations with status entered-in-error, cancelled, registered or unknown
are not counted; MedicationAdministrations not-done or entered-in-error are not counted.
Resources about another patient than the hook's `patientId` are reported and skipped.
Codes that are not mapped are ignored (most of a chart is irrelevant to CRS); a mapped
concept with an unusable value, unit or time is reported.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, tzinfo

from pydantic import ValidationError

from cds.engine.facts import Administration, Facts, Measurement, OxygenSupport
from cds.fhir import models
from cds.fhir.reading import Issue, RawResource, ResourceCollector, validation_issues
from cds.fhir.timing import TimeFormatError, parse_fhir_datetime
from cds.knowledge import Knowledge, NameIndex

COUNTED_OBSERVATION_STATUSES = frozenset({"final", "amended", "corrected", "preliminary"})
IGNORED_ADMINISTRATION_STATUSES = frozenset({"not-done", "entered-in-error"})
MG_UNITS = {"mg": 1.0, "milligram": 1.0, "milligrams": 1.0, "g": 1000.0, "gram": 1000.0}
MG_PER_KG_UNITS = frozenset({"mg/kg", "mg/kg/dose", "mg/kg{dose}"})


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
    """Turns collected resources into facts for one patient."""

    def __init__(
        self, knowledge: Knowledge, patient_id: str | None, assume_tz: tzinfo | None
    ) -> None:
        self.k = knowledge
        self.patient_id = patient_id
        self.assume_tz = assume_tz
        self.issues: list[Issue] = []
        self._reset_memos()

    def _reset_memos(self) -> None:
        """Memos of what a chart repeats (names, times), kept for one evaluation only."""
        self._observation_names = _MemoNames(self.k.observation_names)
        self._device_names = _MemoNames(self.k.device_names)
        self._times: dict[str, datetime | str] = {}  # text -> instant, or why it is invalid

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
            if raw.resource_type == "Observation":
                self._observation(raw, measurements, oxygen)
            elif raw.resource_type == "MedicationAdministration":
                admin = self._administration(raw, medications)
                if admin is not None:
                    administrations.append(admin)
        return Normalised(Facts.build(measurements, oxygen, administrations), self.issues)

    def medication(
        self,
        concept: models.CodeableConcept | None,
        reference: models.Reference | None,
        contained: list[dict[str, object]],
        medications: dict[str, models.Medication],
    ) -> MedicationMatch | None:
        """Recognise a medication given by code/text or by reference to a Medication."""
        candidates: list[models.CodeableConcept] = []
        if concept is not None:
            candidates.append(concept)
        if reference is not None and reference.reference:
            ref = reference.reference
            med: models.Medication | None = None
            if ref.startswith("#"):
                for item in contained:
                    if item.get("resourceType") == "Medication" and item.get("id") == ref[1:]:
                        try:
                            med = models.Medication.model_validate(item)
                        except ValidationError:
                            med = None
                        break
            else:
                med = medications.get(ref) or medications.get(ref.rsplit("/_history", 1)[0])
            if med is not None and med.code is not None:
                candidates.append(med.code)
        for cc in candidates:
            match = self._match_medication(cc)
            if match is not None:
                return match
        if reference is not None and reference.display:
            return self._by_name(reference.display)
        return None

    # --- observations --------------------------------------------------------------

    def _observation(
        self, raw: RawResource, measurements: list[Measurement], oxygen: list[OxygenSupport]
    ) -> None:
        try:
            obs = models.Observation.model_validate(raw.data)
        except ValidationError as exc:
            self.issues.extend(validation_issues(raw.location, exc))
            return
        if obs.status not in COUNTED_OBSERVATION_STATUSES:
            return
        if not self._same_patient(raw, obs.subject):
            return
        concept = self._observation_concept(obs.code)
        device = self._device(obs.code) or (
            self._device(obs.valueCodeableConcept) if obs.valueCodeableConcept else None
        )
        components = [
            (i, c, self._observation_concept(c.code)) for i, c in enumerate(obs.component)
        ]
        if concept is None and device is None and not any(c for _, _, c in components):
            return
        at = self._effective(raw, obs)
        if at is None:
            return
        source = raw.reference
        if device is not None:
            oxygen.append(OxygenSupport(device[0], device[1], at, source))
        if concept is not None and obs.valueQuantity is not None:
            m = self._measurement(
                concept, obs.valueQuantity, at, source, f"{raw.location}.valueQuantity"
            )
            if m is not None:
                measurements.append(m)
        for i, component, comp_concept in components:
            if comp_concept is None or component.valueQuantity is None:
                continue
            m = self._measurement(
                comp_concept,
                component.valueQuantity,
                at,
                source,
                f"{raw.location}.component[{i}].valueQuantity",
            )
            if m is not None:
                measurements.append(m)

    def _observation_concept(self, code: models.CodeableConcept) -> str | None:
        for coding in code.coding:
            if coding.system and coding.code:
                concept = self.k.observation_by_code.get((coding.system, coding.code))
                if concept is not None:
                    return concept
        for text in code.texts():
            concept = self._observation_names.match(text)
            if concept is not None:
                return concept
        return None

    def _device(self, code: models.CodeableConcept) -> tuple[str, str] | None:
        concept: str | None = None
        for coding in code.coding:
            if coding.system and coding.code:
                concept = self.k.device_by_code.get((coding.system, coding.code))
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
        self, concept: str, q: models.Quantity, at: datetime, source: str, location: str
    ) -> Measurement | None:
        if q.value is None:
            return None  # a dataAbsentReason, or nothing measured
        table = self.k.units[concept]
        rule = None
        for unit in (q.code, q.unit):
            if unit is not None:
                rule = table.get(unit.strip().lower())
                if rule is not None:
                    break
        canonical = self.k.observations[concept].canonical_unit
        if rule is None:
            given = q.code or q.unit
            accepted = ", ".join(
                u for conv in self.k.observations[concept].units for u in conv.units[:2]
            )
            problem = (
                f"no unit for {concept}"
                if given is None
                else f"unit {given!r} not recognised for {concept}"
            )
            self.issues.append(Issue(f"{location}.unit", f"{problem} (accepted: {accepted})"))
            return None
        value = rule.to_canonical(q.value)
        original = None
        if rule.factor != 1.0 or rule.offset != 0.0:
            original = f"{q.value:g} {q.code or q.unit}"
        return Measurement(concept, value, canonical, at, source, original)

    def _effective(self, raw: RawResource, obs: models.Observation) -> datetime | None:
        if obs.effectiveDateTime is not None:
            return self._time(obs.effectiveDateTime, f"{raw.location}.effectiveDateTime")
        if obs.effectiveInstant is not None:
            return self._time(obs.effectiveInstant, f"{raw.location}.effectiveInstant")
        if obs.effectivePeriod is not None:
            # A value over a period is taken at its end (or its start while open).
            if obs.effectivePeriod.end is not None:
                return self._time(obs.effectivePeriod.end, f"{raw.location}.effectivePeriod.end")
            if obs.effectivePeriod.start is not None:
                return self._time(
                    obs.effectivePeriod.start, f"{raw.location}.effectivePeriod.start"
                )
        self.issues.append(Issue(f"{raw.location}.effective[x]", "no effective time"))
        return None

    # --- medication administrations ------------------------------------------------

    def _medication_index(self, raws: Iterable[RawResource]) -> dict[str, models.Medication]:
        index: dict[str, models.Medication] = {}
        for raw in raws:
            try:
                med = models.Medication.model_validate(raw.data)
            except ValidationError as exc:
                self.issues.extend(validation_issues(raw.location, exc))
                continue
            index[raw.reference] = med
            if raw.full_url:
                index[raw.full_url] = med
        return index

    def _administration(
        self, raw: RawResource, medications: dict[str, models.Medication]
    ) -> Administration | None:
        try:
            ma = models.MedicationAdministration.model_validate(raw.data)
        except ValidationError as exc:
            self.issues.extend(validation_issues(raw.location, exc))
            return None
        if ma.status in IGNORED_ADMINISTRATION_STATUSES:
            return None
        if not self._same_patient(raw, ma.subject):
            return None
        match = self.medication(
            ma.medicationCodeableConcept, ma.medicationReference, ma.contained, medications
        )
        if match is None:
            if ma.medicationReference is not None and not ma.medicationCodeableConcept:
                ref = ma.medicationReference.reference or ""
                if ref and not ref.startswith("#") and ref not in medications:
                    self.issues.append(
                        Issue(
                            f"{raw.location}.medicationReference",
                            f"referenced {ref} is not in the data and has no display text: "
                            "the medication cannot be recognised",
                        )
                    )
            return None
        if ma.effectiveDateTime is not None:
            start = self._time(ma.effectiveDateTime, f"{raw.location}.effectiveDateTime")
            end = start
        elif ma.effectivePeriod is not None and ma.effectivePeriod.start is not None:
            start = self._time(ma.effectivePeriod.start, f"{raw.location}.effectivePeriod.start")
            end = (
                self._time(ma.effectivePeriod.end, f"{raw.location}.effectivePeriod.end")
                if ma.effectivePeriod.end is not None
                else None
            )
            if ma.effectivePeriod.end is not None and end is None:
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
        dose_mg, dose_mg_per_kg = _dose(ma.dosage.dose if ma.dosage else None)
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

    def _match_medication(self, cc: models.CodeableConcept) -> MedicationMatch | None:
        for coding in cc.coding:
            if coding.system and coding.code:
                concept = self.k.medication_by_code.get((coding.system, coding.code))
                if concept is not None:
                    return self._concept(concept)
        for text in cc.texts():
            match = self._by_name(text)
            if match is not None:
                return match
        return None

    def _by_name(self, text: str) -> MedicationMatch | None:
        concept = self.k.medication_names.match(text)
        return self._concept(concept) if concept is not None else None

    def _concept(self, concept: str) -> MedicationMatch:
        med = self.k.medications[concept]
        return MedicationMatch(concept, med.medication_class, med.display)

    # --- shared --------------------------------------------------------------------

    def _time(self, text: str, location: str) -> datetime | None:
        parsed = self._times.get(text)
        if parsed is None:
            try:
                parsed = parse_fhir_datetime(text, self.assume_tz)
            except TimeFormatError as exc:
                parsed = str(exc)
            self._times[text] = parsed
        if isinstance(parsed, str):
            self.issues.append(Issue(location, parsed))
            return None
        return parsed

    def _same_patient(self, raw: RawResource, subject: models.Reference | None) -> bool:
        """False (and reported) when the resource names another patient."""
        if self.patient_id is None or subject is None or not subject.reference:
            return True
        ref = subject.reference
        if "Patient/" not in ref:
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


def _dose(q: models.Quantity | None) -> tuple[float | None, float | None]:
    """(mg, mg/kg) from a dose quantity; unknown units give neither."""
    if q is None or q.value is None:
        return None, None
    for unit in (q.code, q.unit):
        if unit is None:
            continue
        u = unit.strip().lower()
        if u in MG_UNITS:
            return round(q.value * MG_UNITS[u], 6), None
        if u in MG_PER_KG_UNITS:
            return None, q.value
    return None, None
