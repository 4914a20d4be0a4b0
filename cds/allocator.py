"""Memory the C allocator holds free, handed back to the operating system.

After a request that read many megabytes (a FHIR server's answers, cut at their cap, or
a large chart), glibc keeps the freed memory in its heap for reuse, and the process's
resident size stays at its peak: for an operator, a service that never comes back down.
`malloc_trim` returns whole free pages. Elsewhere (not glibc) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from functools import cache

# Below this many bytes read, a request leaves nothing worth trimming.
TRIM_AFTER_BYTES = 4 * 1024 * 1024


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def release_free_memory() -> None:
    """Give the allocator's free pages back (blocking, a few milliseconds: call it in a
    worker thread; ctypes releases the GIL meanwhile)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
