"""The uplink's reconnect delays: ``mupdate_retry_delay`` doubling, 0-50 % jitter, and
``mupdate_retry_max`` as the longest wait, jitter included (§9.4). No clock: the policy is
a function of the failure count and the jitter source handed in."""

from __future__ import annotations

import random

import pytest

from mupdate.slave.uplink import retry_policy


def test_without_jitter_delays_double_from_the_base_up_to_the_cap() -> None:
    delay = retry_policy(20, 300, lambda: 0.0)
    assert [delay(n) for n in range(1, 8)] == [20, 40, 80, 160, 300, 300, 300]


def test_full_jitter_is_cut_at_the_cap() -> None:
    delay = retry_policy(20, 100, lambda: 0.999999)
    waits = [delay(n) for n in range(1, 6)]
    assert waits[:2] == pytest.approx([29.99999, 59.99998])
    assert waits[2:] == [100, 100, 100]  # 80 x 1.5 would be 120: the cap is the maximum


@pytest.mark.parametrize("seed", range(20))
def test_seeded_jitter_stays_between_the_plain_delay_and_the_cap(seed: int) -> None:
    rng = random.Random(seed)
    jitter = [rng.random() for _ in range(12)]
    delay = retry_policy(20, 300, iter(jitter).__next__)
    for n, j in enumerate(jitter, start=1):
        plain = 20 if n == 1 else 20 * 2 ** (n - 1)
        wait = delay(n)
        assert wait == min(300, plain * (1 + j / 2))
        assert min(plain, 300) <= wait <= 300


def test_retry_delay_zero_and_one_still_back_off_from_one_second() -> None:
    zero = retry_policy(0, 300, lambda: 0.5)
    assert [zero(n) for n in range(1, 5)] == [0, 2.5, 5, 10]
    one = retry_policy(1, 300, lambda: 0.5)
    assert [one(n) for n in range(1, 5)] == [1.25, 2.5, 5, 10]


def test_a_cap_equal_to_the_base_is_never_exceeded() -> None:
    delay = retry_policy(20, 20, random.Random(1).random)
    assert {delay(n) for n in range(1, 10)} == {20}


def test_huge_failure_counts_do_not_overflow() -> None:
    delay = retry_policy(20, 300, lambda: 0.25)
    assert delay(10**6) == 300
