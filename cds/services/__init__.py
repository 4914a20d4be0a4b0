"""The CDS services this application offers."""

from __future__ import annotations

from cds.runtime import Runtime
from cds.services import crs_monitor, order_check
from cds.services.base import ServiceDefinition


def registry(runtime: Runtime) -> dict[str, ServiceDefinition]:
    """Every service by id, in discovery order."""
    definitions = [
        crs_monitor.definition(runtime),
        order_check.select_definition(runtime),
        order_check.sign_definition(runtime),
    ]
    return {d.id: d for d in definitions}
