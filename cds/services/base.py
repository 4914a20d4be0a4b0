"""What every CDS service declares, and how its data is gathered."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cds.fhir.reading import ResourceCollector
from cds.knowledge import Knowledge
from cds.protocol import HookRequest
from cds.runtime import Runtime

Handler = Callable[[Runtime, HookRequest, ResourceCollector, datetime], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class ServiceDefinition:
    """A CDS service: its discovery entry and its handler."""

    id: str
    hook: str
    title: str
    description: str
    prefetch: dict[str, str]
    handler: Handler
    usage_requirements: str | None = None
    required_prefetch: frozenset[str] = field(default_factory=frozenset)

    def discovery(self) -> dict[str, Any]:
        """The entry in GET /cds-services."""
        entry: dict[str, Any] = {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": self.prefetch,
        }
        if self.usage_requirements:
            entry["usageRequirements"] = self.usage_requirements
        return entry


def observation_code_param(knowledge: Knowledge) -> str:
    """`system|code,system|code…` for every observation concept the rules read."""
    return ",".join(f"{system}|{code}" for system, code in knowledge.observation_codes())


def device_code_param(knowledge: Knowledge) -> str:
    """`system|code,…` of every oxygen device, for a search by coded value."""
    return ",".join(f"{system}|{code}" for system, code in knowledge.device_codes())


# Keys without which a grade could be understated: absent → fetched from fhirServer, or 412.
PATIENT_DATA_REQUIRED = frozenset({"observations", "oxygenDevices", "medicationAdministrations"})


def patient_data_prefetch(knowledge: Knowledge) -> dict[str, str]:
    """Prefetch templates: the patient, the CRS observations (by code, including panels),
    oxygen-device observations (by coded value), and the administrations."""
    return {
        "patient": "Patient/{{context.patientId}}",
        "observations": (
            "Observation?patient={{context.patientId}}&_sort=-date&code="
            + observation_code_param(knowledge)
        ),
        "oxygenDevices": (
            "Observation?patient={{context.patientId}}&_sort=-date&value-concept="
            + device_code_param(knowledge)
        ),
        "medicationAdministrations": (
            "MedicationAdministration?patient={{context.patientId}}"
            "&_include=MedicationAdministration:medication"
        ),
    }
