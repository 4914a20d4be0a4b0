"""Replay protection for one process: token ids remembered in memory until they expire.

The default `ReplayGuard` when the service runs as a single process. Replicas must share
one memory (a database-backed guard), or a token replayed to another replica passes.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from datetime import datetime

log = logging.getLogger("cds.auth.replay")

DEFAULT_CAPACITY = 100_000


class MemoryReplayGuard:
    """Remembers (issuer, jti) until its expiry; bounded to `capacity` ids.

    Expired ids are forgotten first. Should the memory fill with ids that have not yet
    expired (only trusted clients' valid tokens get this far), the id closest to its
    expiry is forgotten and a warning logged: a replay of that one token, in the seconds
    it has left, is then not detected.
    """

    def __init__(self, clock: Callable[[], datetime], capacity: int = DEFAULT_CAPACITY) -> None:
        self._clock = clock
        self._capacity = capacity
        self._expiry: dict[tuple[str, str], float] = {}
        self._by_expiry: list[tuple[float, tuple[str, str]]] = []  # a heap

    def __len__(self) -> int:
        return len(self._expiry)

    async def first_use(self, issuer: str, jti: str, expires: datetime) -> bool:
        """True the first time (issuer, jti) is seen; False for a replay."""
        self._forget_expired(self._clock().timestamp())
        key = (issuer, jti)
        if key in self._expiry:
            return False
        if len(self._expiry) >= self._capacity:
            log.warning("replay memory full: the id closest to its expiry is forgotten")
            self._forget_soonest()
        until = expires.timestamp()
        self._expiry[key] = until
        heapq.heappush(self._by_expiry, (until, key))
        return True

    def _forget_expired(self, now: float) -> None:
        while self._by_expiry and self._by_expiry[0][0] <= now:
            self._forget_soonest()

    def _forget_soonest(self) -> None:
        until, key = heapq.heappop(self._by_expiry)
        if self._expiry.get(key) == until:
            del self._expiry[key]
