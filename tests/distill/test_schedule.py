"""Pure scheduling pieces: prefix grouping, AIMD window, rpm/tpm buckets (fake clock, no server)."""

from __future__ import annotations

import asyncio
import random

import pytest

from distill.teacher.schedule import (
    AdaptiveLimit,
    RateLimiter,
    arrival_order,
    estimate_tokens,
    prefix_groups,
    shared_prefix_share,
)

DEMOS = ["demo set %d: " % d + ("example text %d " % d) * 40 for d in range(3)]


def test_prefix_groups_put_shared_prefixes_together_with_one_leader():
    rng = random.Random(0)
    prompts = [DEMOS[i % 3] + f"question {i}" for i in range(30)]
    rng.shuffle(prompts)
    schedule = prefix_groups(prompts)
    assert sorted(s.index for s in schedule) == list(range(30))  # a permutation
    assert len({s.group for s in schedule}) == 3
    for g in range(3):
        members = [s for s in schedule if s.group == g]
        assert len(members) == 10 and sum(s.leader for s in members) == 1 and members[0].leader
        assert len({prompts[s.index][:200] for s in members}) == 1  # one demo set per group
    # groups are contiguous in the schedule
    groups = [s.group for s in schedule]
    assert groups == sorted(groups)
    assert 0.8 < shared_prefix_share(prompts, schedule) < 1.0
    assert shared_prefix_share(prompts, arrival_order(30)) == 0.0


def test_short_common_prefix_does_not_group():
    prompts = ["system prompt " + f"q{i} " * 100 for i in range(5)]  # 14 shared chars only
    schedule = prefix_groups(prompts)
    assert all(s.leader for s in schedule) and len({s.group for s in schedule}) == 5


def test_prefix_groups_deterministic_and_empty():
    prompts = [DEMOS[i % 2] + "same" for i in range(6)]  # identical prompts: stable order
    assert [s.index for s in prefix_groups(prompts)] == [0, 2, 4, 1, 3, 5]
    assert prefix_groups([]) == []


def test_aimd_halves_once_per_cooldown_and_recovers():
    now = [0.0]
    lim = AdaptiveLimit(32, floor=2, cooldown_s=1.0, clock=lambda: now[0])
    for _ in range(10):  # a burst of rejections at one instant halves once
        lim.on_pushback()
    assert lim.cap == 16 and lim.decreases == 1
    for _ in range(5):
        now[0] += 1.1
        lim.on_pushback()
    assert lim.cap == 2 and lim.lowest == 2  # floor holds
    successes = 0
    while lim.cap < 32:
        lim.on_success()
        successes += 1
    # additive increase: +1 per window's worth of successes, so ~sum(2..31) successes to climb back
    assert 400 < successes < 520
    lim.on_success()
    assert lim.cap == 32  # never above the ceiling
    with pytest.raises(ValueError, match="min_concurrency"):
        AdaptiveLimit(4, floor=8)


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, s: float) -> None:
        self.now += s


def test_rpm_bucket_paces_requests():
    t = FakeTime()
    rate = RateLimiter(rpm=60, tpm=None, burst_s=5.0, clock=t.clock, sleep=t.sleep)

    async def go():
        for _ in range(65):
            await rate.acquire(10)

    asyncio.run(go())
    # 5 burst + 60 more at 1/s: 60 s of (fake) waiting, never faster than the limit
    assert t.now == pytest.approx(60.0, abs=1e-6)


def test_tpm_bucket_settles_on_real_usage():
    t = FakeTime()
    rate = RateLimiter(rpm=None, tpm=6000, burst_s=10.0, clock=t.clock, sleep=t.sleep)  # 100 tok/s, cap 1000

    async def go(actual):
        for _ in range(10):
            await rate.acquire(500)
            rate.settle(500, actual)

    asyncio.run(go(500))
    spent_full = t.now
    assert spent_full == pytest.approx(40.0)  # 5000 tokens - 1000 burst at 100/s
    t2 = FakeTime()
    rate = RateLimiter(rpm=None, tpm=6000, burst_s=10.0, clock=t2.clock, sleep=t2.sleep)

    async def go2():
        for _ in range(10):
            await rate.acquire(500)
            rate.settle(500, 100)  # real usage far below the estimate is refunded

    asyncio.run(go2())
    assert t2.now < spent_full / 3


def test_oversized_request_does_not_deadlock():
    t = FakeTime()
    rate = RateLimiter(rpm=None, tpm=600, burst_s=10.0, clock=t.clock, sleep=t.sleep)  # capacity 100 tokens
    asyncio.run(rate.acquire(10_000))
    assert t.now == 0.0


def test_estimate_tokens():
    assert estimate_tokens([{"role": "user", "content": "x" * 400}], 50, 2) > 100 + 100 - 1
