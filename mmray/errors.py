"""Exception hierarchy for mmray.

Every error raised on purpose derives from :class:`MmrayError`.  Ray moves
exceptions between processes by pickling them, so every subclass keeps its
constructor arguments in ``self.args`` (see ``__reduce__``) and survives a
round trip through :mod:`pickle` unchanged.
"""

from __future__ import annotations


class MmrayError(Exception):
    """Base class of every error mmray raises on purpose."""

    def __reduce__(self):
        # Rebuild from the original constructor arguments, whatever they are,
        # so subclasses with keyword-only fields pickle too.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls, args, state):
    obj = cls.__new__(cls)
    Exception.__init__(obj, *args)
    obj.__dict__.update(state)
    return obj


class ConfigError(MmrayError):
    """A configuration (YAML, overrides, cohort spec) is invalid.

    ``problems`` holds every problem found, each as ``(path, message)``, so a
    user sees all of them at once rather than fixing one per run.
    """

    def __init__(self, problems: list[tuple[str, str]], *, source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = [f"{len(self.problems)} problem(s){where}:"]
        lines += [f"  - {path}: {msg}" if path else f"  - {msg}" for path, msg in self.problems]
        super().__init__("\n".join(lines))


class CohortError(MmrayError):
    """A cohort file (manifest, table, matrix) is missing or malformed."""


class InputError(MmrayError):
    """One input (a slide, a DICOM study, a table row) cannot be used.

    Raised per item; pipelines catch it, record it in the failures table and
    go on with the rest.
    """

    def __init__(self, message: str, *, item: str = "", stage: str = ""):
        self.item = item
        self.stage = stage
        super().__init__(message)


class StoreError(MmrayError):
    """The feature store cannot read or write what was asked."""


class RegistryError(MmrayError):
    """The model registry refused an operation."""


class UnknownNameError(MmrayError, KeyError):
    """A name looked up in a registry (encoder, model, profile) does not exist."""

    def __init__(self, kind: str, name: str, valid: list[str] | tuple[str, ...]):
        self.kind = kind
        self.name = name
        self.valid = sorted(valid)
        super().__init__(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(self.valid)}")

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class DataError(MmrayError, ValueError):
    """Arrays handed to a model, loss, metric or preprocessor break its contract.

    Raised at the boundary (wrong shapes, NaN, non-positive times, no events,
    labels unseen in training) with what was expected, what came, and how to
    fix it.  Also a ``ValueError`` so generic callers can catch it.
    """


class EnvironmentWriteError(MmrayError):
    """A run in one environment tried to write another environment's store or registry."""


class PromotionRefused(MmrayError):
    """A model failed the target environment's gate (or could not be evaluated there)."""
