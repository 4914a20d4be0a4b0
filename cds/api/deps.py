"""FastAPI dependencies: what a route needs, from the application's state (set once by
`create_app`, replaced in tests).

Every dependency is `async def`, even those that only read the state: FastAPI runs a
plain `def` dependency in its thread pool, a hop to another thread and back for each
call (measured: the larger part of the fixed cost of a small hook call)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from cds.auth import ClientIdentity
from cds.auth.authentication import Authentication
from cds.pipeline import Hooks
from cds.runtime import Runtime
from cds.store.decisions import DecisionStore


async def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_hooks(request: Request) -> Hooks:
    hooks: Hooks = request.app.state.hooks
    return hooks


async def get_store(request: Request) -> DecisionStore:
    store: DecisionStore = request.app.state.store
    return store


async def get_authentication(request: Request) -> Authentication:
    authentication: Authentication = request.app.state.authentication
    return authentication


def _public_path(request: Request) -> str:
    """The path the client called, below the service's root (CRS_PUBLIC_BASE_URL)."""
    path = request.url.path
    root = str(request.scope.get("root_path") or "")
    return path[len(root) :] if root and path.startswith(root) else path


async def get_client(request: Request) -> ClientIdentity | None:
    """The verified CDS client (its JWT checked against the URL called); None when
    authentication is off. A missing or refused token raises Unauthenticated (401)."""
    authentication: Authentication = request.app.state.authentication
    return await authentication.client(request.headers.get("Authorization"), _public_path(request))


async def get_discovery_client(request: Request) -> ClientIdentity | None:
    """As `get_client`, for discovery: verified unless CRS_AUTHENTICATE_DISCOVERY is off."""
    authentication: Authentication = request.app.state.authentication
    if not authentication.discovery:
        return None
    return await get_client(request)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
StoreDep = Annotated[DecisionStore, Depends(get_store)]
HooksDep = Annotated[Hooks, Depends(get_hooks)]
AuthenticationDep = Annotated[Authentication, Depends(get_authentication)]
ClientDep = Annotated[ClientIdentity | None, Depends(get_client)]
DiscoveryClientDep = Annotated[ClientIdentity | None, Depends(get_discovery_client)]
