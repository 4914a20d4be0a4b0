"""The service's clock: read once per call, injected everywhere else."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """Now, as an aware UTC instant."""
    return datetime.now(UTC)
