"""Who is calling: the verified identity of a CDS client (CDS Hooks 2.0, "Trusting CDS
Clients"), and the memory of token ids already used (replay protection)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

# The longest token id remembered (`seen_tokens.jti`); a longer one is refused.
JTI_MAX_LENGTH = 256


@dataclass(frozen=True)
class ClientIdentity:
    """A CDS client whose JWT was verified: its issuer, and subject and tenant if given."""

    iss: str
    sub: str | None = None
    tenant: str | None = None


class ReplayGuard(Protocol):
    """Remembers token ids (`jti`) until they expire, across every replica."""

    async def first_use(self, issuer: str, jti: str, expires: datetime) -> bool:
        """True the first time (issuer, jti) is seen; False for a replay."""
        ...
