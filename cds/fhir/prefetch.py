"""What the services ask the EHR to prefetch: the templates, and which keys they need.

Narrowed to what the rules read: the Observations by the codes of the concepts the
rules read (panels included), the oxygen-device Observations by coded value, and the
MedicationAdministrations with their Medications; newest first, in pages of
`CRS_FHIR_PAGE_SIZE`, so that a client sends the risk window in one page.
"""

from __future__ import annotations

from dataclasses import dataclass

from cds.engine.facts import CONCEPTS_READ
from cds.knowledge import Knowledge

# Keys without which a grade could be understated: absent → fetched from fhirServer, or 412.
PATIENT_DATA_REQUIRED = frozenset({"observations", "oxygenDevices", "medicationAdministrations"})


@dataclass(frozen=True)
class PrefetchPlan:
    """The prefetch templates a service advertises, and the keys it cannot do without."""

    templates: dict[str, str]
    required: frozenset[str]


def observation_code_param(knowledge: Knowledge) -> str:
    """`system|code,…` of every observation concept the rules read, and the panels."""
    codes = knowledge.observation_codes(CONCEPTS_READ)
    return ",".join(f"{system}|{code}" for system, code in codes)


def device_code_param(knowledge: Knowledge) -> str:
    """`system|code,…` of every oxygen device, for a search by coded value."""
    return ",".join(f"{system}|{code}" for system, code in knowledge.device_codes())


def patient_data_prefetch(knowledge: Knowledge, page_size: int) -> PrefetchPlan:
    """The patient, the CRS observations (by code, panels included), the oxygen-device
    observations (by coded value), and the administrations with their Medications."""
    count = f"&_count={page_size}"
    return PrefetchPlan(
        templates={
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
        },
        required=PATIENT_DATA_REQUIRED,
    )
