"""Ids of cards, suggestions, orders and records (injected, so tests can fix them)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

NewId = Callable[[], str]


def new_uuid() -> str:
    """A random UUID, as text."""
    return str(uuid.uuid4())
