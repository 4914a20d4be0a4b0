"""What every CDS service declares: its discovery entry, what it needs prefetched, how
its hook context reads, and how it decides its cards from an evaluation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from msgspec import Struct

from cds.decision import Decision
from cds.evaluation import Evaluation
from cds.fhir.prefetch import PrefetchPlan
from cds.ids import NewId
from cds.protocol import OrderContext, PatientContext
from cds.runtime import Runtime

Decide = Callable[[Runtime, Evaluation, NewId], Decision]


class DiscoveryEntry(Struct, frozen=True, omit_defaults=True):
    """One service in GET /cds-services."""

    hook: str
    id: str
    title: str
    description: str
    prefetch: dict[str, str]
    usageRequirements: str | None = None


@dataclass(frozen=True)
class ServiceDefinition:
    """A CDS service: discovery, prefetch, context model and decision."""

    id: str
    hook: str
    title: str
    description: str
    prefetch: PrefetchPlan
    context: type[PatientContext]
    decide: Decide
    usage_requirements: str | None = None

    @property
    def orders(self) -> bool:
        """Whether the hook carries draft orders (order-select, order-sign)."""
        return issubclass(self.context, OrderContext)

    def discovery(self) -> DiscoveryEntry:
        """The entry in GET /cds-services."""
        return DiscoveryEntry(
            hook=self.hook,
            id=self.id,
            title=self.title,
            description=self.description,
            prefetch=self.prefetch.templates,
            usageRequirements=self.usage_requirements,
        )
