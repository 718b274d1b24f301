"""cmlp.retry (the one retry helper, RetryPolicy of transport.md 6.2) and cmlp.deadline."""

import math
import time

import pytest

from cmlp.deadline import Deadline
from cmlp.errors import CmlpError, Timeout
from cmlp.retry import RetryPolicy, retry


def test_retry_policy_defaults_and_delays():
    p = RetryPolicy()
    assert (p.max_retries, p.initial_delay, p.max_delay, p.backoff_multiplier) == (3, 1.0, 30.0, 2.0)
    assert RetryPolicy.none().max_retries == 0
    q = RetryPolicy(initial_delay=0.1)
    for _ in range(50):
        assert 0.05 <= q.delay(0) <= 0.1
        assert 0.2 <= q.delay(2) <= 0.4
    capped = RetryPolicy(initial_delay=1.0, max_delay=0.5, backoff_multiplier=10.0)
    for _ in range(50):
        assert 0.25 <= capped.delay(5) <= 0.5


def test_retry_transport_reexport_is_the_same_class():
    from cmlp.transport import RetryPolicy as TransportRetryPolicy

    assert TransportRetryPolicy is RetryPolicy


def _flaky(failures, exc_type=OSError):
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= failures:
            raise exc_type(f"attempt {len(calls) - 1}")
        return "ok"

    return fn, calls


def test_retry_returns_first_success_and_sleeps_the_policy_delays():
    fn, calls = _flaky(2)
    pauses = []
    policy = RetryPolicy(max_retries=3, initial_delay=0.1, backoff_multiplier=2.0)
    assert retry(fn, policy, sleep=pauses.append) == "ok"
    assert len(calls) == 3 and len(pauses) == 2
    assert 0.05 <= pauses[0] <= 0.1 and 0.1 <= pauses[1] <= 0.2


def test_retry_reraises_the_last_error_when_retries_are_spent():
    fn, calls = _flaky(10)
    with pytest.raises(OSError, match="attempt 2"):
        retry(fn, RetryPolicy(max_retries=2), sleep=lambda s: None)
    assert len(calls) == 3


def test_retry_without_policy_makes_one_attempt():
    fn, calls = _flaky(1)
    with pytest.raises(OSError, match="attempt 0"):
        retry(fn, None, sleep=lambda s: pytest.fail("no pause without a policy"))
    assert len(calls) == 1


def test_retry_lets_other_exception_types_through_at_once():
    fn, calls = _flaky(5, exc_type=ValueError)
    with pytest.raises(ValueError):
        retry(fn, RetryPolicy(max_retries=5), on=(OSError,), sleep=lambda s: None)
    assert len(calls) == 1


def test_retry_give_up_wraps_the_last_error_with_the_attempt_count():
    fn, _ = _flaky(10)
    with pytest.raises(CmlpError, match="gave up after 4") as info:
        retry(
            fn,
            RetryPolicy(max_retries=3),
            sleep=lambda s: None,
            give_up=lambda exc, n: CmlpError(f"gave up after {n}: {exc}"),
        )
    assert isinstance(info.value.__cause__, OSError)


def test_retry_stops_at_the_deadline_and_never_sleeps_past_it():
    fn, calls = _flaky(10**6)
    pauses = []
    deadline = Deadline(0.2)
    policy = RetryPolicy(max_retries=10**6, initial_delay=5.0, max_delay=5.0)

    def sleep(s):
        pauses.append(s)
        time.sleep(s)

    with pytest.raises(OSError):
        retry(fn, policy, deadline=deadline, sleep=sleep)
    assert deadline.expired()
    assert pauses and all(p <= 0.2 for p in pauses)  # clipped to what was left, not 2.5-5 s
    assert len(calls) == len(pauses) + 1


def test_deadline_counts_down_and_raises_its_message():
    d = Deadline(0.05, what="handshake deadline exceeded")
    assert not d.expired()
    assert 0 < d.left() <= 0.05 and 0 < d.remaining() <= 0.05
    d.check()
    time.sleep(0.06)
    assert d.expired() and d.remaining() == 0.0
    with pytest.raises(Timeout, match="handshake deadline exceeded"):
        d.left()
    with pytest.raises(Timeout):
        d.check()


def test_no_deadline_never_expires_and_means_block():
    d = Deadline(None)
    assert not d.expired() and d.remaining() == math.inf
    assert d.left() == -1.0  # the Cython I/O layer's "block"
    d.check()
