"""Keyed pseudonyms for patient identifiers (HMAC-SHA256).

When a key is configured, every modality writes ``pseudonym(patient_id)``
instead of the identifier, so features from different sources still join, but
the store holds no identifier that can be looked up without the key.  The key
comes from the environment variable ``MMRAY_PSEUDONYM_KEY`` or from a secret
file named by ``MMRAY_PSEUDONYM_KEY_FILE``; it is never written anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from pathlib import Path

from mmray.errors import ConfigError

KEY_ENV = "MMRAY_PSEUDONYM_KEY"
KEY_FILE_ENV = "MMRAY_PSEUDONYM_KEY_FILE"
MIN_KEY_BYTES = 16
PREFIX = "PSN-"


class Pseudonymiser:
    """Callable ``patient_id -> pseudonym``; stable for a key, different across keys."""

    def __init__(self, key: bytes):
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError([(KEY_ENV, f"pseudonym key must be at least {MIN_KEY_BYTES} bytes, "
                                         f"got {len(key)}; generate one with: openssl rand -hex 32")])
        self._key = key

    def __call__(self, patient_id: str) -> str:
        digest = hmac.new(self._key, str(patient_id).strip().encode(), hashlib.sha256).hexdigest()
        return PREFIX + digest[:24]

    def __repr__(self) -> str:  # never show the key
        return "Pseudonymiser(<key hidden>)"

    def __reduce__(self):
        # Ray ships this to workers; the key travels in memory only, never to disk.
        return (Pseudonymiser, (self._key,))


def identity(patient_id: str) -> str:
    return patient_id


def pseudonymiser_from_env(environ: dict[str, str] | None = None) -> Callable[[str], str]:
    """A :class:`Pseudonymiser` when a key is configured, else the identity."""
    env = os.environ if environ is None else environ
    if env.get(KEY_ENV):
        return Pseudonymiser(env[KEY_ENV].encode())
    if env.get(KEY_FILE_ENV):
        path = Path(env[KEY_FILE_ENV])
        try:
            key = path.read_bytes().strip()
        except OSError as e:
            raise ConfigError([(KEY_FILE_ENV, f"cannot read the pseudonym key file {path}: {e.strerror}")]) from e
        return Pseudonymiser(key)
    return identity
