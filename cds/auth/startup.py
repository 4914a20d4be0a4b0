"""The start-up rule: never serve unauthenticated where other machines can reach us,
unless told so explicitly."""

from __future__ import annotations

from enum import StrEnum

from cds.auth.trust import is_loopback_host


class AuthenticationMode(StrEnum):
    """How `crs-cds serve` runs."""

    ON = "on"  # trusted clients configured: every call verified
    OPEN_LOOPBACK = "open-loopback"  # none configured, only this machine can call
    OPEN_ALLOWED = "open-allowed"  # none configured, --allow-unauthenticated


class UnsafeStart(Exception):
    """Serving unauthenticated on an address other machines reach, without being told to."""


def authentication_mode(
    *, trusted_clients: bool, host: str, allow_unauthenticated: bool
) -> AuthenticationMode:
    """On with trusted clients; without, open on a loopback host or when explicitly
    allowed, and UnsafeStart anywhere else."""
    if trusted_clients:
        return AuthenticationMode.ON
    if is_loopback_host(host):
        return AuthenticationMode.OPEN_LOOPBACK
    if allow_unauthenticated:
        return AuthenticationMode.OPEN_ALLOWED
    raise UnsafeStart(
        f"no trusted clients are configured (CRS_TRUSTED_CLIENTS_FILE) and {host!r} is "
        "reachable from other machines: anyone who reaches the port would be served. "
        "Configure trusted clients, bind a loopback address (127.0.0.1), or pass "
        "--allow-unauthenticated"
    )
