"""What the services ask the EHR to prefetch: the templates, and which keys they need.

Narrowed to what the rules read: the Observations by the codes of the concepts the
rules read (panels included), the oxygen-device Observations by coded value, the
MedicationAdministrations with their Medications, and for ICANS the Conditions charting a
seizure or cerebral oedema (by code) and the ICE/CAPD assessments on the published
Questionnaires; newest first, in pages of `CRS_FHIR_PAGE_SIZE`, so that a client sends
the risk window in one page.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from cds.engine.facts import CONCEPTS_READ
from cds.fhir.reading import with_article
from cds.knowledge import Knowledge

# Keys without which a grade could be understated: absent → fetched from fhirServer, or 412.
PATIENT_DATA_REQUIRED = frozenset({"observations", "oxygenDevices", "medicationAdministrations"})
# The other keys (the patient, the ICANS keys) are fetched from fhirServer when absent and
# the call allows it, and not read without it. The ICANS keys add what is charted other
# than as Observations (the ICE score and the neurological findings charted as
# Observations come with `observations`); a fetch of one that fails is a data issue on the
# cards, saying what was not read, never a 412.
CONDITIONS = "conditions"
ASSESSMENTS = "assessments"
TOLERATED = {
    CONDITIONS: "seizures and cerebral oedema charted as Conditions (ICANS)",
    ASSESSMENTS: "ICE and CAPD assessments charted as QuestionnaireResponses (ICANS)",
}


@dataclass(frozen=True)
class Asked:
    """What a prefetch template asks for: a `resource_type` resource (a read,
    `Patient/{{context.patientId}}`), or a Bundle of its search results (`search`,
    `Observation?patient=…`)."""

    resource_type: str
    search: bool

    def describe(self) -> str:
        """ "a Bundle of Observation search results", "a Patient resource"."""
        if self.search:
            return f"a Bundle of {self.resource_type} search results"
        return f"{with_article(self.resource_type)} resource"


@dataclass(frozen=True)
class PrefetchPlan:
    """The prefetch templates a service advertises, and the keys it cannot do without."""

    templates: dict[str, str]
    required: frozenset[str]

    def asks(self, key: str) -> Asked | None:
        """What the template of `key` asks for; None for a key the service does not ask
        for, or a template that is neither a read nor a search of one type (an operation)."""
        return self._asked.get(key)

    @cached_property
    def _asked(self) -> dict[str, Asked | None]:
        """What each template asks for, read once (every call checks its prefetch)."""
        return {key: _asked(template) for key, template in self.templates.items()}


def _asked(template: str) -> Asked | None:
    parts = template.split("?", 1)[0].split("/")
    if not parts[0].isascii() or not parts[0].isalpha() or not parts[0][0].isupper():
        return None
    if len(parts) == 1:
        return Asked(parts[0], search=True)
    if len(parts) == 2 and parts[1] and parts[1][0] not in "$_":
        return Asked(parts[0], search=False)
    return None


def observation_code_param(knowledge: Knowledge) -> str:
    """`system|code,…` of every observation concept the rules read, and the panels."""
    codes = knowledge.observation_codes(CONCEPTS_READ)
    return ",".join(f"{system}|{code}" for system, code in codes)


def condition_code_param(knowledge: Knowledge) -> str:
    """`system|code,…` of every Condition the ICANS rules read."""
    return ",".join(f"{system}|{code}" for system, code in knowledge.neuro_condition_codes())


def questionnaire_param(knowledge: Knowledge) -> str:
    """The published assessment Questionnaires' canonical urls, for `questionnaire=`."""
    return ",".join(knowledge.questionnaire_urls())


def text_param(names: list[str]) -> str:
    """Names for a `:text` search (commas in a name escaped, as FHIR requires)."""
    return ",".join(name.replace(",", "\\,") for name in names)


def device_code_param(knowledge: Knowledge) -> str:
    """`system|code,…` of every oxygen device, for a search by coded value."""
    return ",".join(f"{system}|{code}" for system, code in knowledge.device_codes())


def patient_data_prefetch(knowledge: Knowledge, page_size: int, icans: bool = True) -> PrefetchPlan:
    """The patient, the CRS and ICANS observations (by code, panels included), the
    oxygen-device observations (by coded value), the administrations with their
    Medications, and with `icans` the ICANS Conditions (by code) and the ICE/CAPD
    QuestionnaireResponses (the order checks, which do not grade ICANS, leave them out)."""
    count = f"&_count={page_size}"
    templates = {
        "patient": "Patient/{{context.patientId}}",
        "observations": (
            "Observation?patient={{context.patientId}}&_sort=-date"
            + count
            + "&code="
            + observation_code_param(knowledge)
        ),
        "oxygenDevices": (
            "Observation?patient={{context.patientId}}&_sort=-date"
            + count
            + "&value-concept="
            + device_code_param(knowledge)
        ),
        "medicationAdministrations": (
            "MedicationAdministration?patient={{context.patientId}}"
            + count
            + "&_include=MedicationAdministration:medication"
        ),
    }
    if icans:
        templates |= {
            CONDITIONS: (
                "Condition?patient={{context.patientId}}"
                + count
                + "&code="
                + condition_code_param(knowledge)
            ),
            ASSESSMENTS: (
                "QuestionnaireResponse?patient={{context.patientId}}&_sort=-authored"
                + count
                + "&questionnaire="
                + questionnaire_param(knowledge)
            ),
        }
    return PrefetchPlan(templates=templates, required=PATIENT_DATA_REQUIRED)
