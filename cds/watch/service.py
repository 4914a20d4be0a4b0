"""The watch assembled from its injected parts: shared by the workers, the API and the CLI."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from cds.clock import Clock
from cds.fhir.client import http_client
from cds.runtime import Runtime
from cds.services import registry
from cds.store.decisions import DecisionStore
from cds.watch.census import Census
from cds.watch.changes import Thresholds
from cds.watch.config import WatchConfig, watch_config
from cds.watch.delivery import Deliveries, Sender
from cds.watch.ids import PatientIds
from cds.watch.reading import WatchReader
from cds.watch.smart import Credentials
from cds.watch.subscriptions import Subscriptions

MONITOR_SERVICE = "crs-monitor"  # the patient-view service: its prefetch is what is read


_webhook_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)


def webhook_client() -> httpx.AsyncClient:
    """The client for webhook receivers of the running event loop (created on first use):
    no redirects, no proxy settings from the environment (where notifications go is the
    configuration's decision only)."""
    loop = asyncio.get_running_loop()
    client = _webhook_clients.get(loop)
    if client is None or client.is_closed:
        client = httpx.AsyncClient(follow_redirects=False, trust_env=False)
        _webhook_clients[loop] = client
    return client


async def close_webhook_client() -> None:
    client = _webhook_clients.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.aclose()


@dataclass
class Watch:
    """Everything the watch needs, for one process."""

    runtime: Runtime
    config: WatchConfig
    ids: PatientIds
    census: Census
    subscriptions: Subscriptions
    deliveries: Deliveries
    reader: WatchReader
    sender: Sender
    clock: Clock
    credentials: Credentials  # the bearer token for the watched FHIR server
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def limits(self) -> Thresholds:
        c = self.config
        return Thresholds(c.fever_grade, c.possible_grade_from, c.temperature_gap)

    def wake(self) -> None:
        """New work (a notification stored): workers in this process look at once."""
        self.wakeup.set()

    @classmethod
    def open(
        cls,
        runtime: Runtime,
        store: DecisionStore,
        clock: Clock,
        *,
        fhir_http: Callable[[], httpx.AsyncClient] = http_client,
        webhook_http: Callable[[], httpx.AsyncClient] | None = None,
    ) -> Watch | None:
        """The watch of the settings, on the decision store's database; None when it
        is off (no CRS_WATCH_FHIR_SERVER). WatchConfigError names a bad setting."""
        config = watch_config(runtime)
        if config is None:
            return None
        ids = PatientIds.from_keys(store.pseudonyms, runtime.settings.watch_id_key)
        plan = registry(runtime)[MONITOR_SERVICE].prefetch
        credentials = Credentials(config.server, config.token, config.smart, fhir_http, clock)

        return cls(
            runtime=runtime,
            config=config,
            ids=ids,
            census=Census(store.engine, ids),
            subscriptions=Subscriptions(store.engine, ids),
            deliveries=Deliveries(store.engine, config, ids),
            reader=WatchReader(runtime, config, fhir_http, plan, credentials),
            sender=Sender(
                config,
                ids,
                webhook_http or webhook_client,
                fhir_http,
                product_names(runtime),
                credentials,
            ),
            clock=clock,
            credentials=credentials,
        )


def product_names(runtime: Runtime) -> Callable[[str], str]:
    """Product code -> the name notifications and the watch list show (the catalogue's
    display; the code itself for a product the rules no longer know)."""
    windows = runtime.rules.windows
    return lambda product: windows[product].display if product in windows else product
