"""Gather a hook's data: prefetch first, then (for what is missing) the EHR's FHIR server."""

from __future__ import annotations

from cds.errors import PrefetchUnavailable
from cds.fhir.reading import ResourceCollector
from cds.protocol import HookRequest
from cds.runtime import Runtime
from cds.services.base import ServiceDefinition


def missing_prefetch(service: ServiceDefinition, request: HookRequest) -> list[str]:
    """Prefetch keys the service needs that are absent or null."""
    prefetch = request.prefetch or {}
    return [key for key in service.prefetch if prefetch.get(key) is None]


async def gather(
    runtime: Runtime, service: ServiceDefinition, request: HookRequest
) -> ResourceCollector:
    """Collect the resources: prefetch values, and fetch what is missing from fhirServer."""
    collected = ResourceCollector()
    collected.add_prefetch(request.prefetch or {})
    missing = missing_prefetch(service, request)
    needed = [key for key in missing if key in service.required_prefetch]
    if needed and not request.fhirServer:
        raise PrefetchUnavailable(
            f"prefetch {', '.join(needed)} is absent or null and the request has no "
            "fhirServer to fetch it from",
            "prefetch",
        )
    if needed:
        raise PrefetchUnavailable(
            f"prefetch {', '.join(needed)} is absent or null and fetching from fhirServer "
            "is not enabled on this service",
            "fhirServer",
        )
    return collected
