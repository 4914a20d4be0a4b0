"""GET /cds-services: the services, their hooks and prefetch templates."""

from __future__ import annotations

from fastapi import APIRouter
from msgspec import Struct

from cds.api.deps import AuthenticationDep, DiscoveryClientDep, HooksDep
from cds.api.openapi import DISCOVERY
from cds.api.responses import RenderedJson
from cds.protocol import render_struct
from cds.services.base import DiscoveryEntry

router = APIRouter()


class Discovery(Struct, frozen=True):
    services: tuple[DiscoveryEntry, ...]
    extension: dict[str, str]


@router.get("/cds-services", response_class=RenderedJson, openapi_extra=DISCOVERY)
async def discovery(
    hooks: HooksDep, authentication: AuthenticationDep, _client: DiscoveryClientDep
) -> RenderedJson:
    """The CDS services this service offers (CDS Hooks 2.0 discovery); `extension` says
    whether callers are authenticated."""
    entries = tuple(s.discovery() for s in hooks.services.values())
    extension = {"authentication": authentication.state}
    return RenderedJson(render_struct(Discovery(entries, extension)))
