"""Retry transient storage errors with exponential backoff.

Object stores fail now and then (a dropped connection, a 503, a timeout):
such errors are retried; errors that another try cannot fix (a missing file,
a permission error, a bad DICOM) are raised at once.

    data = with_retry(fs.open_input_stream(path).read, what=f"read {path}")

Transient: ``OSError`` (pyarrow.fs raises it for network and S3 errors; also
``IOError``, ``ConnectionError``, ``TimeoutError``) and botocore's
connection/HTTP client errors; *not* ``FileNotFoundError``,
``PermissionError``, ``IsADirectoryError``, ``NotADirectoryError`` or
``FileExistsError``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)

PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
                       FileExistsError)


def _botocore_transient() -> tuple[type[BaseException], ...]:
    try:
        from botocore import exceptions as be
    except ImportError:  # boto3 is optional for local-only use
        return ()
    return (be.ConnectionError, be.HTTPClientError)


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (OSError, *_botocore_transient())


def is_transient(exc: BaseException) -> bool:
    """True for errors worth another try (see the module docstring)."""
    return isinstance(exc, TRANSIENT_ERRORS) and not isinstance(exc, PERMANENT_OS_ERRORS)


def backoff_delays_s(*, tries: int, base_delay_s: float, max_delay_s: float) -> list[float]:
    """The waits between ``tries`` attempts: base, 2*base, 4*base, ... capped at ``max_delay_s``."""
    return [min(max_delay_s, base_delay_s * 2 ** i) for i in range(max(tries - 1, 0))]


def with_retry(fn: Callable[[], T], *, what: str, tries: int = 4, base_delay_s: float = 0.5,
               max_delay_s: float = 8.0, transient: Callable[[BaseException], bool] = is_transient,
               sleep: Callable[[float], None] = time.sleep) -> T:
    """Call ``fn()``; on a transient error wait and try again, up to ``tries`` calls in all.

    ``what`` says what is being done, for the log line of each retry.  The
    last error is raised unchanged once the tries are used up; a non-transient
    error is raised at once.
    """
    if tries < 1:
        raise ValueError(f"tries must be at least 1, got {tries}")
    delays = backoff_delays_s(tries=tries, base_delay_s=base_delay_s, max_delay_s=max_delay_s)
    for attempt in range(tries):
        try:
            return fn()
        except Exception as e:
            if not transient(e) or attempt == tries - 1:
                raise
            delay = delays[attempt]
            log.warning("%s failed (%s: %s); try %d of %d in %.2g s", what, type(e).__name__, e,
                        attempt + 2, tries, delay)
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
