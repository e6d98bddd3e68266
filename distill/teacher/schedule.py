"""Request scheduling for the teacher: prefix-aware ordering, adaptive concurrency, rate limits.

Written by hand because no client library does these together for arbitrary OpenAI-compatible servers
(openai-python retries but neither adapts concurrency nor rate-limits; curator and distilabel send in
arrival order):

* :func:`prefix_groups` — order requests so those sharing a long prompt prefix (system prompt + the same
  few-shot demonstrations) are adjacent, and mark one *leader* per group. The engine's automatic prefix
  cache (vLLM APC, SGLang RadixAttention) only reuses a prefix that has already been computed: requests
  scheduled in the same step all compute it again. Running the leader first (in-process: a one-token
  warm-up; over HTTP: followers wait for the leader's answer) makes every follower a cache hit.
* :class:`AdaptiveLimit` — AIMD concurrency (TCP congestion control, Jacobson 1988; the scheme of
  Netflix's concurrency-limits): +1/limit per success, x0.5 on pushback (429, 503, timeouts), at most
  one decrease per cool-down so one burst of rejections halves the window once, not ten times.
* :class:`RateLimiter` — token buckets for requests- and tokens-per-minute, settled with the real
  usage once a response arrives.

Everything here is pure or takes an injectable clock, so it is unit-tested without a server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# A group shares at least this many characters of prompt with its neighbour (about 64 tokens): shorter
# common prefixes (a system prompt alone) save too little prefill to be worth gating on.
MIN_SHARED_CHARS = 256


def prompt_text(messages: Sequence[dict[str, Any]]) -> str:
    """The messages flattened in order (role markers included): the engine's prompt up to the template."""
    return "".join(f"\x1e{m.get('role', '')}\x1f{m.get('content', '')}" for m in messages)


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(frozen=True)
class Scheduled:
    index: int  # position in the caller's list
    group: int  # prefix group id (0, 1, ... in scheduled order)
    leader: bool  # first request of its group
    shared_chars: int  # characters shared with the group (0 for a group of one)


def prefix_groups(prompts: Sequence[str], min_shared: int = MIN_SHARED_CHARS) -> list[Scheduled]:
    """Order ``prompts`` so shared prefixes are adjacent; returns the schedule (a permutation of indices).

    Sorting the strings puts every set of strings with a common prefix next to each other (a trie's
    depth-first order); a new group starts where the common prefix with the previous string drops below
    ``min_shared``. Ties keep the caller's order (stable sort), so the schedule is deterministic.
    """
    order = sorted(range(len(prompts)), key=lambda i: prompts[i])
    out: list[Scheduled] = []
    group = -1
    prev = None
    for pos, i in enumerate(order):
        shared = _common_prefix(prompts[prev], prompts[i]) if prev is not None else 0
        if prev is None or shared < min_shared:
            group += 1
            nxt = order[pos + 1] if pos + 1 < len(order) else None
            ahead = _common_prefix(prompts[i], prompts[nxt]) if nxt is not None else 0
            out.append(Scheduled(i, group, True, ahead if ahead >= min_shared else 0))
        else:
            out.append(Scheduled(i, group, False, shared))
        prev = i
    return out


def arrival_order(n: int) -> list[Scheduled]:
    """The schedule that sends in the caller's order with no groups (the baseline)."""
    return [Scheduled(i, i, True, 0) for i in range(n)]


def shared_prefix_share(prompts: Sequence[str], schedule: Sequence[Scheduled]) -> float:
    """Fraction of prompt characters a perfect prefix cache can skip under ``schedule`` (for reports)."""
    total = sum(len(p) for p in prompts)
    saved = sum(s.shared_chars for s in schedule if not s.leader)
    return saved / total if total else 0.0


class AdaptiveLimit:
    """AIMD concurrency window in ``[floor, ceiling]``; starts at ``ceiling`` (the configured maximum)."""

    def __init__(self, ceiling: int, floor: int = 1, cooldown_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not 1 <= floor <= ceiling:
            raise ValueError(f"need 1 <= min_concurrency <= max_concurrency, got {floor} and {ceiling}")
        self.ceiling, self.floor, self.cooldown_s, self._clock = ceiling, floor, cooldown_s, clock
        self.value = float(ceiling)
        self._last_decrease = -float("inf")
        self.decreases = 0
        self.lowest = ceiling

    @property
    def cap(self) -> int:
        return max(self.floor, int(self.value))

    def on_success(self) -> None:
        self.value = min(float(self.ceiling), self.value + 1.0 / self.value)

    def on_pushback(self) -> None:
        now = self._clock()
        if now - self._last_decrease < self.cooldown_s:
            return
        self._last_decrease = now
        self.value = max(float(self.floor), self.value / 2.0)
        self.decreases += 1
        self.lowest = min(self.lowest, self.cap)
        log.info("teacher pushed back: concurrency window -> %d", self.cap)


class _Bucket:
    def __init__(self, per_minute: float, burst_s: float, now: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self.level = self.capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` (capped at the capacity, so one big request can't deadlock) is there."""
        need = min(amount, self.capacity) - self.level
        return max(0.0, need / self.rate)


class RateLimiter:
    """Requests-per-minute and tokens-per-minute token buckets (either may be None = unlimited).

    A bucket holds ``burst_s`` seconds' worth (10 s by default): a run starts sending at once but never
    bursts a whole minute's quota into the first second, which is what makes real APIs answer 429.
    ``gate`` (optional) is awaited after the local buckets for every request: a limit shared with other
    processes (the pipeline passes a Prefect rate limit, so several flows on one endpoint share it).
    """

    def __init__(self, rpm: float | None, tpm: float | None, burst_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Any] = asyncio.sleep,
                 gate: Callable[[], Awaitable[None]] | None = None) -> None:
        now = clock()
        self._clock, self._sleep = clock, sleep
        self.requests = _Bucket(rpm, burst_s, now) if rpm else None
        self.tokens = _Bucket(tpm, burst_s, now) if tpm else None
        self.waited_s = 0.0
        self._lock = asyncio.Lock()
        self._gate = gate

    async def acquire(self, tokens: float) -> None:
        """Wait until one request and ``tokens`` (an estimate) may be spent, then spend them."""
        async with self._lock:  # first come, first served: a big request is not starved by small ones
            while True:
                now = self._clock()
                wait = 0.0
                for bucket, amount in ((self.requests, 1.0), (self.tokens, tokens)):
                    if bucket is not None:
                        bucket.refill(now)
                        wait = max(wait, bucket.wait_for(amount))
                if wait <= 0:
                    if self.requests is not None:
                        self.requests.level -= 1.0
                    if self.tokens is not None:
                        self.tokens.level -= min(tokens, self.tokens.capacity)
                    break
                self.waited_s += wait
                await self._sleep(wait)
        if self._gate is not None:  # outside the lock: a round trip to the shared limit does not serialise requests
            t = self._clock()
            await self._gate()
            self.waited_s += self._clock() - t

    def settle(self, estimated: float, actual: float) -> None:
        """Correct the token bucket once the real usage is known (may leave it in debt)."""
        if self.tokens is not None:
            self.tokens.level += min(estimated, self.tokens.capacity) - actual


def chat_token_count(tokenizer, messages: Sequence[dict[str, Any]]) -> int:
    """Exact prompt tokens of ``messages`` under ``tokenizer``'s chat template (with the generation prompt).

    ``apply_chat_template(tokenize=True)`` returns a list of ids in some transformers versions and a
    ``BatchEncoding`` (whose ``len`` is its number of keys) in others; this returns the id count in both.
    """
    ids = tokenizer.apply_chat_template(list(messages), tokenize=True, add_generation_prompt=True)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return len(ids)


def estimate_tokens(messages: Sequence[dict[str, Any]], max_tokens: int, n: int) -> int:
    """Upper-ish estimate of a request's tokens for the TPM bucket: ~4 characters per prompt token."""
    chars = len(json.dumps(messages, ensure_ascii=False))
    return chars // 4 + max_tokens * n
