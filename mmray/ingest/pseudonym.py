"""Keyed pseudonyms for patient identifiers (HMAC-SHA256).

When a key is configured, every modality writes ``pseudonym(patient_id)``
instead of the identifier, so features from different sources still join, but
the store holds no identifier that can be looked up without the key.  The key
comes from the environment variable ``MMRAY_PSEUDONYM_KEY`` or from a secret
file named by ``MMRAY_PSEUDONYM_KEY_FILE``; it is never written anywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
from collections.abc import Callable
from pathlib import Path

from mmray.errors import ConfigError

KEY_ENV = "MMRAY_PSEUDONYM_KEY"
KEY_FILE_ENV = "MMRAY_PSEUDONYM_KEY_FILE"
MIN_KEY_BYTES = 16
PREFIX = "PSN-"
SOURCE_LABEL_PREFIX = "SRC-"  # input files named in lineage and failures when pseudonymised


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


_PROBE = "\x00mmray-pseudonym-probe"


def is_pseudonymised(patient_key: Callable[[str], str]) -> bool:
    """Whether ``patient_key`` changes ids (a keyed pseudonymiser), rather than passing them through."""
    return patient_key(_PROBE) != _PROBE


def keyed_label(patient_key: Callable[[str], str], kind: str, value: str, *, prefix: str) -> str:
    """A stable, keyed, irreversible name for ``value`` (``prefix`` + hex), e.g. a slide or a source file.

    Built from the patient key itself (the HMAC of a namespaced string), so it
    needs no second secret and a different key gives different labels.
    """
    return prefix + patient_key(f"{kind}:{value}").removeprefix(PREFIX)[:16]


def source_label(patient_key: Callable[[str], str], uri: str) -> str:
    """How an input file is named in what mmray writes: its path, or a keyed ``SRC-`` label when pseudonymised."""
    if not is_pseudonymised(patient_key):
        return str(uri)
    return keyed_label(patient_key, "source", str(uri), prefix=SOURCE_LABEL_PREFIX)


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


class PathRedactor:
    """Replaces known input locations (the cohort folder, synth's output) in text by their source labels.

    A second line of defence for what a run prints and logs: messages that quote
    where the inputs live (a summary line, a config dump, a third-party error).
    Passes everything through unchanged when ``patient_key`` is not a pseudonymiser.
    """

    def __init__(self, patient_key: Callable[[str], str], roots):
        pairs: dict[str, str] = {}
        if is_pseudonymised(patient_key):
            for root in filter(None, (str(r).rstrip("/") for r in roots)):
                label = source_label(patient_key, root)
                pairs[root] = label
                if "://" not in root:
                    pairs.setdefault(str(Path(root).resolve()), label)
        self._pairs = sorted(pairs.items(), key=lambda p: -len(p[0]))  # longest first: nested roots

    def __bool__(self) -> bool:
        return bool(self._pairs)

    def __call__(self, obj):
        """``obj`` with every root replaced: strings, and the strings inside dicts, lists and tuples."""
        if isinstance(obj, str):
            for root, label in self._pairs:
                obj = obj.replace(root, label)
            return obj
        if isinstance(obj, dict):
            return {self(k): self(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self(v) for v in obj)
        return obj

    @contextlib.contextmanager
    def logs(self):
        """While open, log records of this process pass through the redactor (every root handler)."""
        if not self:
            yield
            return
        handlers = list(logging.getLogger().handlers)
        flt = _RedactingFilter(self)
        for h in handlers:
            h.addFilter(flt)
        try:
            yield
        finally:
            for h in handlers:
                h.removeFilter(flt)


class _RedactingFilter(logging.Filter):
    def __init__(self, redact: PathRedactor):
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True
