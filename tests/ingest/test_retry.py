"""Retry helper: exponential backoff on transient storage errors, give up after N tries."""

from __future__ import annotations

import pytest
from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

from mmray.ingest.retry import backoff_delays_s, is_transient, with_retry


class Flaky:
    """Fails with ``error`` the first ``failures`` calls, then returns ``"ok"``."""

    def __init__(self, failures: int, error: Exception):
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


def test_backs_off_exponentially_until_it_succeeds():
    waits: list[float] = []
    fn = Flaky(3, OSError("AWS Error NETWORK_CONNECTION during GetObject"))
    assert with_retry(fn, what="read x", tries=5, base_delay_s=0.25, sleep=waits.append) == "ok"
    assert fn.calls == 4 and waits == [0.25, 0.5, 1.0]


def test_gives_up_after_n_tries_with_the_last_error():
    waits: list[float] = []
    fn = Flaky(10, ConnectionResetError("reset by peer"))
    with pytest.raises(ConnectionResetError, match="reset by peer"):
        with_retry(fn, what="read x", tries=4, base_delay_s=1.0, max_delay_s=3.0, sleep=waits.append)
    assert fn.calls == 4 and waits == [1.0, 2.0, 3.0]  # capped at max_delay_s


@pytest.mark.parametrize("error", [EndpointConnectionError(endpoint_url="http://s3"),
                                   ReadTimeoutError(endpoint_url="http://s3"), TimeoutError("slow"),
                                   OSError("I/O error")])
def test_connection_errors_are_transient(error):
    waits: list[float] = []
    assert with_retry(Flaky(1, error), what="x", tries=2, base_delay_s=0.1, sleep=waits.append) == "ok"
    assert waits == [0.1] and is_transient(error)


@pytest.mark.parametrize("error", [FileNotFoundError("no such key"), PermissionError("denied"),
                                   ValueError("bad DICOM"), KeyError("x")])
def test_permanent_errors_are_raised_at_once(error):
    fn = Flaky(1, error)
    with pytest.raises(type(error)):
        with_retry(fn, what="x", tries=5, sleep=lambda s: pytest.fail("must not wait"))
    assert fn.calls == 1 and not is_transient(error)


def test_delays_and_argument_checks():
    assert backoff_delays_s(tries=1, base_delay_s=0.5, max_delay_s=8) == []
    assert backoff_delays_s(tries=6, base_delay_s=0.5, max_delay_s=4) == [0.5, 1.0, 2.0, 4.0, 4.0]
    with pytest.raises(ValueError, match="tries must be at least 1"):
        with_retry(lambda: 1, what="x", tries=0)
