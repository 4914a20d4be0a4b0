"""Patient pseudonyms: a keyed HMAC of the patient id, never the id itself.

The key is a setting (`CRS_PSEUDONYM_KEY`) that every replica shares. For the embedded
SQLite store only, a key is generated on first run into the data directory (kept apart
from the database, readable by the service's user alone).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

KEY_FILE = "pseudonym.key"


class Pseudonyms:
    """Patient id -> pseudonym (HMAC-SHA256, 32 hex characters)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the pseudonym key must be at least 16 bytes")
        self._key = key

    def of(self, patient_id: str | None) -> str:
        """The pseudonym of a patient id ("-" when the call named none)."""
        if not patient_id:
            return "-"
        return hmac.new(self._key, patient_id.encode(), hashlib.sha256).hexdigest()[:32]

    def derive(self, label: bytes) -> bytes:
        """A 32-byte key for another purpose, derived from the pseudonym key and `label`
        (the watch seals patient ids with one when it has no key of its own)."""
        return hmac.new(self._key, b"derive\0" + label, hashlib.sha256).digest()


def key_from_file(data_dir: Path, name: str = KEY_FILE) -> bytes:
    """A key generated into the data directory (the embedded store's pseudonym key, the
    pages' link-signing key): read, or created (mode 0600) on first use."""
    path = data_dir / name
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another worker created it first
        else:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32))
    return path.read_text().strip().encode()
