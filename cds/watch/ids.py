"""Patient ids at rest: the watch must query the FHIR server by the real id, so the
census keeps it — sealed (AES-256-GCM), next to the pseudonym that every other table,
every log line and every status line use.

The key is CRS_WATCH_ID_KEY when set (any string; keep it apart from the database, e.g.
in a Kubernetes Secret); otherwise it is derived from the pseudonym key, so that the
embedded demo needs nothing configured. Trade-off of the default: whoever holds the
pseudonym key and a copy of the database can read the ids; a separate key lets the
pseudonym key be shared (e.g. with an analytics job) without it. A changed key makes the
stored ids unreadable: those patients are shown as such by `crs-cds watch status` and
must be enrolled again.
"""

from __future__ import annotations

import hashlib
import os

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cds.store.pseudonym import Pseudonyms

NONCE_BYTES = 12
_CONTEXT = b"crs-cds watch: patient ids at rest"


class SealedIdUnreadable(Exception):
    """A sealed value could not be opened (another key, or damaged)."""


class PatientIds:
    """Patient id -> pseudonym (lookups, logs) and id <-> sealed bytes (the census)."""

    def __init__(self, pseudonyms: Pseudonyms, key: bytes) -> None:
        self.pseudonyms = pseudonyms
        self._aead = AESGCM(key)

    @classmethod
    def from_keys(cls, pseudonyms: Pseudonyms, id_key: str | None) -> PatientIds:
        """With CRS_WATCH_ID_KEY, a key of its own; else one derived from the pseudonym key."""
        if id_key:
            key = hashlib.sha256(_CONTEXT + b"\0" + id_key.encode()).digest()
        else:
            key = pseudonyms.derive(_CONTEXT)
        return cls(pseudonyms, key)

    def pseudonym(self, patient_id: str) -> str:
        return self.pseudonyms.of(patient_id)

    def seal(self, value: str) -> bytes:
        """`value` encrypted and authenticated: nonce || ciphertext."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, value.encode(), _CONTEXT)

    def open(self, sealed: bytes) -> str:
        """The value `seal` sealed; SealedIdUnreadable if it cannot be opened."""
        try:
            plain = self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _CONTEXT)
        except (InvalidTag, ValueError) as exc:
            raise SealedIdUnreadable("sealed with another key, or damaged") from exc
        return plain.decode()

    def seal_json(self, value: object) -> bytes:
        return self.seal(orjson.dumps(value).decode())

    def open_json(self, sealed: bytes) -> object:
        return orjson.loads(self.open(sealed))
