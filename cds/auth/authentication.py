"""Whether the service authenticates its callers, built once from the settings.

Authentication is on when trusted clients are configured (`CRS_TRUSTED_CLIENTS_FILE`);
off otherwise, which `crs-cds serve` allows only on a loopback address or with
`--allow-unauthenticated` (see `cds.auth.startup`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx

from cds.auth import ClientIdentity, ReplayGuard
from cds.auth.keys import RemoteKeySets
from cds.auth.replay import MemoryReplayGuard
from cds.auth.tokens import TokenPolicy, TokenVerifier
from cds.auth.trust import TrustedClientsError, load_trusted_clients
from cds.settings import Settings


@dataclass(frozen=True)
class Authentication:
    """The verifier (None: authentication off), the public base URL the audience of a
    token is built from, and whether discovery is verified too."""

    verifier: TokenVerifier | None = None
    public_base_url: str = ""
    discovery: bool = False

    @property
    def enabled(self) -> bool:
        return self.verifier is not None

    @property
    def state(self) -> str:
        """`on` or `off`, as /healthz and discovery report it."""
        return "on" if self.enabled else "off"

    def audience(self, path: str) -> str:
        """The URL a client called (its token's `aud`): the public base URL and the path."""
        return self.public_base_url.rstrip("/") + path

    async def client(self, authorization: str | None, path: str) -> ClientIdentity | None:
        """The verified caller of `path`; None when authentication is off. Raises
        Unauthenticated (401) for a missing or refused token."""
        if self.verifier is None:
            return None
        return await self.verifier.verify(authorization, self.audience(path))

    def fhir_fallback(self, client: ClientIdentity | None) -> bool:
        """Whether the service may read fhirServer for this caller: an authenticated
        client, or anyone in the open mode (authentication off)."""
        return client is not None or not self.enabled


def authentication_from_settings(
    settings: Settings,
    *,
    clock: Callable[[], datetime],
    http: Callable[[], httpx.AsyncClient],
    replay_guard: ReplayGuard | None = None,
) -> Authentication:
    """Authentication as configured; TrustedClientsError names what is wrong.

    `replay_guard` defaults to memory (one process); replicas need a shared one.
    """
    path = settings.trusted_clients_file
    if path is None:
        return Authentication()
    clients = load_trusted_clients(path)
    if not settings.public_base_url:
        raise TrustedClientsError(
            "setting CRS_PUBLIC_BASE_URL is required with CRS_TRUSTED_CLIENTS_FILE: a token's "
            "aud must be the URL the client called, and that is the service's public URL"
        )
    verifier = TokenVerifier(
        clients=clients,
        remote=RemoteKeySets(
            http=http,
            clock=clock,
            cache_seconds=settings.jwks_cache_seconds,
            min_refresh_seconds=settings.jwks_min_refresh_seconds,
        ),
        replay=(
            replay_guard
            if replay_guard is not None  # not `or`: an empty guard may be falsy (len 0)
            else MemoryReplayGuard(clock, settings.replay_memory_size)
        ),
        policy=TokenPolicy(
            algorithms=frozenset(settings.jwt_algorithms),
            clock_skew=timedelta(seconds=settings.jwt_clock_skew_seconds),
            max_lifetime=timedelta(seconds=settings.jwt_max_lifetime_seconds),
        ),
        clock=clock,
    )
    return Authentication(verifier, settings.public_base_url, settings.authenticate_discovery)
