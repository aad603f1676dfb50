"""Rate limiters: the numbers they produce."""

from __future__ import annotations

import random

import pytest

from setpoint.agent.ratelimit import ExponentialBackoff, MaxOf, TokenBucket, default_rate_limiter


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- ExponentialBackoff ----------------------------------------------------------------------


def test_backoff_doubles_from_base_per_key() -> None:
    b = ExponentialBackoff(0.005, 1000.0, jitter=0)
    assert [b.when("a") for _ in range(5)] == [0.005, 0.01, 0.02, 0.04, 0.08]
    assert b.retries("a") == 5
    # another key starts from the base
    assert b.when("b") == 0.005
    assert b.retries("b") == 1


def test_backoff_caps() -> None:
    b = ExponentialBackoff(0.005, 1000.0, jitter=0)
    waits = [b.when("a") for _ in range(30)]
    assert max(waits) == 1000.0
    assert waits[17] == 0.005 * 2**17  # 655.36 s, the last one under the cap
    assert waits[18:] == [1000.0] * 12
    assert waits == sorted(waits)


def test_backoff_survives_huge_failure_counts() -> None:
    b = ExponentialBackoff(0.005, 1000.0, jitter=0)
    for _ in range(5000):
        w = b.when("a")
    assert w == 1000.0


def test_forget_resets_the_key_only() -> None:
    b = ExponentialBackoff(1.0, 100.0, jitter=0)
    for _ in range(4):
        b.when("a")
        b.when("b")
    b.forget("a")
    assert b.retries("a") == 0
    assert b.when("a") == 1.0
    assert b.when("b") == 16.0
    b.forget("never-seen")  # harmless
    assert len(b) == 2


def test_jitter_stays_within_bounds_and_keeps_growth() -> None:
    b = ExponentialBackoff(1.0, 64.0, jitter=0.1, rng=random.Random(7))
    for key in range(200):
        waits = [b.when(key) for _ in range(9)]
        for n, w in enumerate(waits):
            nominal = min(64.0, 2.0**n)
            assert 0.9 * nominal < w <= nominal
        assert waits[:7] == sorted(waits[:7])  # still strictly growing below the cap
        assert all(w <= 64.0 for w in waits)


def test_jitter_spreads_keys_that_fail_together() -> None:
    b = ExponentialBackoff(1.0, 1000.0, jitter=0.1, rng=random.Random(1))
    waits = [b.when(key) for key in range(100)]
    assert len(set(waits)) == 100
    assert max(waits) - min(waits) > 0.05  # spread over most of the 10 % band


def test_backoff_rejects_bad_parameters() -> None:
    for kwargs in ({"base": 0}, {"base": 2.0, "cap": 1.0}, {"jitter": 1.0}, {"jitter": -0.1},
                   {"cap": float("inf")}):
        with pytest.raises(ValueError):
            ExponentialBackoff(**kwargs)


# -- TokenBucket -----------------------------------------------------------------------------


def test_bucket_burst_then_spaced_by_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10.0, burst=100, clock=clock)
    assert [bucket.when(i) for i in range(100)] == [0.0] * 100
    waits = [bucket.when(i) for i in range(5)]
    assert waits == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert bucket.retries("x") == 0


def test_bucket_refills_at_rate_up_to_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=10.0, burst=100, clock=clock)
    for i in range(100):
        bucket.when(i)
    assert bucket.tokens == pytest.approx(0.0)
    clock.now += 1.0  # ten tokens
    assert [bucket.when(i) for i in range(10)] == [0.0] * 10
    assert bucket.when("next") == pytest.approx(0.1)
    clock.now += 3600.0  # long idle: back to the burst, never more
    assert bucket.tokens == pytest.approx(100.0)
    assert [bucket.when(i) for i in range(100)] == [0.0] * 100
    assert bucket.when("over") == pytest.approx(0.1)


def test_bucket_reservations_are_repaid_before_new_tokens() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2.0, burst=1, clock=clock)
    assert bucket.when("a") == 0.0
    assert bucket.when("b") == pytest.approx(0.5)
    assert bucket.when("c") == pytest.approx(1.0)
    clock.now += 0.5  # the token reserved by "b" exists now, "c" still waits 0.5 s
    assert bucket.when("d") == pytest.approx(1.0)
    clock.now += 10.0
    assert bucket.when("e") == 0.0


def test_bucket_never_negative_and_ignores_clock_steps_back() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=5.0, burst=3, clock=clock)
    rng = random.Random(3)
    for _ in range(500):
        clock.now += rng.choice([0.0, 0.0, 0.05, 0.3, -0.2])
        assert bucket.when("k") >= 0.0
        assert bucket.tokens <= 3.0


def test_bucket_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=0)
    with pytest.raises(ValueError):
        TokenBucket(rate=float("inf"))
    with pytest.raises(ValueError):
        TokenBucket(burst=0)


# -- MaxOf and the default -------------------------------------------------------------------


def test_max_of_takes_longest_and_feeds_every_part() -> None:
    clock = Clock()
    backoff = ExponentialBackoff(0.005, 1000.0, jitter=0)
    bucket = TokenBucket(rate=10.0, burst=2, clock=clock)
    limiter = MaxOf(backoff, bucket)
    assert limiter.when("a") == 0.005  # backoff wins, bucket still spends a token
    assert limiter.when("a") == 0.01
    assert limiter.when("b") == pytest.approx(0.1)  # bucket empty: it wins
    assert limiter.retries("a") == 2
    limiter.forget("a")
    assert limiter.retries("a") == 0
    assert backoff.retries("b") == 1
    with pytest.raises(ValueError):
        MaxOf()


def test_default_rate_limiter_numbers() -> None:
    clock = Clock()
    limiter = default_rate_limiter(clock=clock, rng=random.Random(0))
    first = limiter.when("a")
    assert 0.0045 < first <= 0.005
    for _ in range(30):
        w = limiter.when("a")
    assert 900.0 < w <= 1000.0  # capped at 1000 s with 10 % jitter
    # "a" took 31 of the 100 tokens; 120 keys failing at once get the other 69 at once and the
    # bucket spaces the remaining 51 at 10 per second
    limiter.forget("a")
    waits = [limiter.when(("k", i)) for i in range(120)]
    assert all(w <= 0.005 for w in waits[:69])
    assert waits[69] == pytest.approx(0.1)
    assert waits[-1] == pytest.approx(5.1)
