"""The ``openai`` teacher backend: ``AsyncOpenAI`` against any OpenAI-compatible URL.

Per replica (``base_url`` plus ``base_urls``) an adaptive concurrency window (AIMD, at most
``max_concurrency``; see :mod:`distill.teacher.schedule`), shared requests/tokens-per-minute buckets, a
per-request timeout, and retries with exponential backoff plus full jitter that honour ``Retry-After``.
Each request goes to the least-loaded replica — the one its prefix group already used when that one is
not busier, so the group's prefix stays in one engine's cache; a replica that refuses connections sits
out a pause that doubles with each new refusal (0.5 s up to 30 s). When every replica has refused
connections ``DEAD_STREAK`` pauses in a row (about half a minute of outage), the requests still
waiting are not sent: they fail as ``connection`` at once, so a run against a teacher that is down ends
in seconds with a clear error instead of trickling one probe per pause (a rerun resends them; answers
already received are cached). Retry policy:

- retried: 429, 408, 409, 5xx, timeouts, connection errors/resets;
- the whole run stops at once (misconfiguration, every request would fail): 401, 403, 404;
- marked on the record and kept (this request is bad, the others may be fine): 400, 413, 422.

Each response is committed to the cache the moment it arrives, so a killed run resends only what
was in flight.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import httpx
import openai
from tqdm import tqdm

from distill.config import ConfigError
from distill.logprobs import pack_openai_logprobs
from distill.net import backoff_s, redact_url, retry_after_s
from distill.teacher.budget import Budget, worst_case
from distill.teacher.cache import ResponseCache
from distill.teacher.schedule import (
    AdaptiveLimit,
    RateLimiter,
    Scheduled,
    arrival_order,
    estimate_tokens,
    prefix_groups,
    prompt_text,
)
from distill.teacher.structured import fallback_instruction, merge_reasked, response_format, validate_output
from distill.teacher.types import (
    BUDGET_ERROR,
    Choice,
    TeacherConfig,
    TeacherRequest,
    TeacherResponse,
    TeacherStats,
    TeacherUnavailable,
    require_api_key,
)

log = logging.getLogger(__name__)

FATAL_STATUS = {401: "wrong or missing API key", 403: "access denied", 404: "model or URL not found"}
RETRY_STATUS = {408, 409, 429}
# words in a 400 that mean "this server has no structured outputs" (not e.g. a prompt that is too long)
FORMAT_REJECTIONS = ("response_format", "json_schema", "structured", "guided", "grammar", "not supported")


def _body(r: TeacherRequest, model: str, response_format_ok: bool = True) -> dict[str, Any]:
    messages = r.messages
    if r.json_schema is not None and not response_format_ok:  # the server lacks response_format: ask in words
        instruction = fallback_instruction(r.json_schema)
        if messages and messages[0]["role"] == "system":
            messages = [{"role": "system", "content": messages[0]["content"] + "\n\n" + instruction["content"]}] + messages[1:]
        else:
            messages = [instruction] + messages
    body: dict[str, Any] = {
        "model": model, "messages": messages, "temperature": r.temperature, "top_p": r.top_p,
        "max_tokens": r.max_tokens, "n": r.n,
    }
    if r.json_schema is not None and response_format_ok:
        body["response_format"] = response_format(r.json_schema)
    if r.seed is not None:
        body["seed"] = r.seed
    if r.stop:
        body["stop"] = r.stop
    if r.top_logprobs:
        body["logprobs"] = True
        body["top_logprobs"] = r.top_logprobs
    if r.repetition_penalty != 1.0:  # not in the OpenAI API; vLLM, SGLang and TGI-compatible servers accept it
        body["extra_body"] = {"repetition_penalty": r.repetition_penalty}
    return body


def _choice(c) -> Choice:
    lps = None
    if getattr(c, "logprobs", None) is not None and c.logprobs.content is not None:
        # by bytes (distill.logprobs, topk-bytes/v1): a student of any tokenizer can learn from them
        lps = pack_openai_logprobs([pos.model_dump() for pos in c.logprobs.content])
    return Choice(text=c.message.content or "", finish_reason=c.finish_reason, logprobs=lps)


def _classify(exc: Exception) -> tuple[str, bool]:
    """(failure kind, retryable) for an exception raised by the client."""
    if isinstance(exc, openai.APITimeoutError):
        return "timeout", True
    if isinstance(exc, openai.APIConnectionError):
        return "connection", True
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        return f"http_{code}", code in RETRY_STATUS or code >= 500
    if isinstance(exc, (httpx.TransportError, ValueError)):  # resets mid-body, malformed JSON
        return "malformed", True
    return type(exc).__name__, False


@dataclass
class _Replica:
    url: str
    client: openai.AsyncOpenAI
    limit: AdaptiveLimit
    inflight: int = 0
    answered: int = 0
    down_until: float = 0.0  # connection failures take a replica out for a growing pause
    down_streak: int = 0
    response_format_ok: bool = True  # False once it rejected a json_schema response_format (400)

    def load(self) -> float:
        return self.inflight / self.limit.cap


WINDOW_MIN, WINDOW_PER_SLOT = 1024, 16  # requests started ahead of the answers: at least 1024, 16 per slot
DEAD_STREAK = 6  # refusal pauses in a row (0.5 + 1 + ... + 16 s) after which a replica counts as down


class _Pool:
    """Hands out replica slots: least loaded first, the prefix group's replica when it is not busier.

    Waiters are served by *rank* (their position in the prefix schedule), not by arrival: a follower
    released by its leader's answer takes the next free slot ahead of the leaders of later groups, so a
    group's requests run together while its prefix is still in the engine's cache. With plain FIFO the
    leaders of every group — queued first — took all slots before any follower, and by the time the
    followers ran, their prefixes had been evicted by the later leaders'. Each release wakes only the
    head of the queue (one wake-up per answer, not one per waiter: with hundreds of queued requests
    that costs a local engine CPU), and the head passes the turn on when it got a slot.
    """

    def __init__(self, replicas: list[_Replica]) -> None:
        self.replicas = replicas
        self.affinity: dict[int, _Replica] = {}
        self.waiting: list[list] = []  # heap of [rank, seq, event]
        self._seq = 0

    def _pick(self, group: int | None) -> _Replica | None:
        now = time.monotonic()
        free = [r for r in self.replicas if r.inflight < r.limit.cap and r.down_until <= now]
        if not free:
            return None
        best = min(free, key=lambda r: (r.load(), r.answered))
        home = self.affinity.get(group) if group is not None else None
        # keep a prefix group on one replica (its prefix cache is there) unless that replica is clearly busier
        if home is not None and home in free and home.load() <= best.load() + 0.25:
            return home
        if group is not None:
            self.affinity.setdefault(group, best)
        return best

    def _wake_head(self) -> None:
        if self.waiting:
            self.waiting[0][2].set()

    async def acquire(self, group: int | None, rank: int = 0) -> _Replica | None:
        """A replica slot, or None when every replica is down (see ``DEAD_STREAK``). Lower ``rank`` first."""
        self._seq += 1
        entry = [rank, self._seq, asyncio.Event()]
        heapq.heappush(self.waiting, entry)
        try:
            while True:
                if all(r.down_streak >= DEAD_STREAK for r in self.replicas):
                    for other in self.waiting:  # no release is coming: every waiter learns it now
                        other[2].set()
                    return None
                if self.waiting[0] is entry:
                    pick = self._pick(group)
                    if pick is not None:
                        pick.inflight += 1
                        return pick
                entry[2].clear()
                now = time.monotonic()
                back = [r.down_until - now for r in self.replicas if r.down_until > now]
                try:  # wake on a release, or when a paused replica is due back
                    await asyncio.wait_for(entry[2].wait(), timeout=min(back) if back else None)
                except TimeoutError:
                    pass
        finally:  # served, refused or cancelled: leave the queue and hand the turn to the next waiter
            if self.waiting[0] is entry:
                heapq.heappop(self.waiting)
            else:
                self.waiting.remove(entry)
                heapq.heapify(self.waiting)
            self._wake_head()

    async def release(self, replica: _Replica) -> None:
        replica.inflight -= 1
        self._wake_head()


PUSHBACK = {"http_429", "http_503", "timeout"}


async def _one(pool: _Pool, rate: RateLimiter, r: TeacherRequest, cfg: TeacherConfig, model: str,
               stats: TeacherStats, group: int | None, budget: Budget | None = None, rank: int = 0) -> TeacherResponse:
    key = r.key()
    estimate = estimate_tokens(r.messages, r.max_tokens, r.n)
    worst = worst_case(r, cfg.structured_retries)
    if budget is not None:
        while not budget.try_reserve(*worst):
            if budget.idle():  # nothing in flight can give room back: this request does not fit
                budget.refused += 1
                return TeacherResponse(key=key, choices=[], engine="openai", model=model,
                                       error=f"{BUDGET_ERROR} not sent, the run's cap is reached ({budget.describe()})")
            await asyncio.sleep(0.05)
    try:
        resp = await _attempts(pool, rate, r, cfg, model, stats, group, key, estimate, rank)
        if r.json_schema is not None and resp.error is None:
            resp = await _validated(pool, rate, r, cfg, model, stats, group, key, estimate, resp, rank)
    except BaseException:
        if budget is not None:
            budget.settle(*worst, 0, 0)
        raise
    if budget is not None:
        budget.settle(*worst, resp.prompt_tokens, resp.completion_tokens)
    return resp


async def _validated(pool: _Pool, rate: RateLimiter, r: TeacherRequest, cfg: TeacherConfig, model: str,
                     stats: TeacherStats, group: int | None, key: str, estimate: int,
                     resp: TeacherResponse, rank: int = 0) -> TeacherResponse:
    """Check a structured answer against its schema; re-ask (new seed) for failing samples while
    ``structured_retries`` last (not at temperature 0, where the answer would repeat). Answers still
    failing are kept with ``schema_error`` set."""
    for c in resp.choices:
        c.schema_error = validate_output(c.text, r.json_schema)[1]
    for k in range(1, cfg.structured_retries + 1):
        if r.temperature == 0 or not any(c.schema_error for c in resp.choices):
            break
        stats.schema_retries += 1
        again = await _attempts(pool, rate, replace(r, seed=(r.seed or 0) + 7919 * k), cfg, model, stats, group, key,
                                estimate, rank)
        if again.error is not None:
            break
        resp.prompt_tokens += again.prompt_tokens
        resp.completion_tokens += again.completion_tokens
        resp.attempts += again.attempts
        merge_reasked(resp.choices, again.choices, r.json_schema)
    return resp


async def _attempts(pool: _Pool, rate: RateLimiter, r: TeacherRequest, cfg: TeacherConfig, model: str,
                    stats: TeacherStats, group: int | None, key: str, estimate: int, rank: int = 0) -> TeacherResponse:
    attempt = 0
    while True:
        attempt += 1
        await rate.acquire(estimate)
        replica = await pool.acquire(group, rank)
        if replica is None:
            stats.failures["connection"] = stats.failures.get("connection", 0) + 1
            return TeacherResponse(key=key, choices=[], engine="openai", model=model, attempts=attempt - 1,
                                   error=f"connection: not sent, every teacher replica refused connections "
                                         f"{DEAD_STREAK} times in a row")
        t = time.perf_counter()
        sent_format = replica.response_format_ok
        try:
            comp = await replica.client.chat.completions.create(**_body(r, model, sent_format))
            if not comp.choices:
                raise ValueError("response has no choices")
            usage = comp.usage
            resp = TeacherResponse(
                key=key, choices=[_choice(c) for c in comp.choices],
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
                engine="openai", model=comp.model or model, latency_s=round(time.perf_counter() - t, 4),
                attempts=attempt,
            )
            rate.settle(estimate, resp.prompt_tokens + resp.completion_tokens)
            replica.limit.on_success()
            replica.answered += 1
            replica.down_streak = 0
            return resp
        except Exception as exc:  # noqa: BLE001 - classified below, nothing swallowed silently
            if (isinstance(exc, openai.BadRequestError) and r.json_schema is not None and sent_format
                    and any(w in str(exc).lower() for w in FORMAT_REJECTIONS)):
                # a server without structured outputs: ask for the JSON in words from now on, validate after
                replica.response_format_ok = False
                log.warning("%s rejected response_format (json_schema): %s; falling back to prompting + validation",
                            redact_url(replica.url), str(exc)[:200])
                continue
            if isinstance(exc, openai.APIStatusError) and exc.status_code in FATAL_STATUS:
                raise TeacherUnavailable(
                    f"teacher at {redact_url(replica.url)} answered {exc.status_code} ({FATAL_STATUS[exc.status_code]}) "
                    f"for model {model!r}: check teacher.base_url, teacher.model and ${cfg.api_key_env}"
                ) from None
            kind, retryable = _classify(exc)
            stats.failures[kind] = stats.failures.get(kind, 0) + 1
            if kind in PUSHBACK and cfg.adaptive_concurrency:
                before = replica.limit.decreases
                replica.limit.on_pushback()
                stats.pushbacks += replica.limit.decreases - before
            if kind == "connection" and replica.down_until <= time.monotonic():
                # one step per pause: the requests that were in flight together fail together, and count once
                replica.down_streak += 1
                replica.down_until = time.monotonic() + min(30.0, 0.25 * 2 ** replica.down_streak)
            if not retryable or attempt > cfg.max_retries:
                log.warning("request %s failed for good after %d attempt(s): %s", key[:12], attempt, kind)
                return TeacherResponse(key=key, choices=[], engine="openai", model=model,
                                       error=f"{kind}: {exc}"[:500], attempts=attempt)
            stats.retries += 1
            wait = retry_after_s(exc)
        finally:
            await pool.release(replica)
        if wait is None:
            wait = backoff_s(attempt)  # full jitter
        await asyncio.sleep(wait)


async def _send_all(requests: list[TeacherRequest], cfg: TeacherConfig, cache: ResponseCache,
                    stats: TeacherStats, budget: Budget | None = None, gate=None) -> list[TeacherResponse]:
    model = cfg.model_id()
    key = require_api_key(cfg)
    replicas = [_Replica(url, openai.AsyncOpenAI(base_url=url, api_key=key, timeout=cfg.timeout_s, max_retries=0),
                         AdaptiveLimit(cfg.max_concurrency, cfg.min_concurrency)) for url in cfg.urls()]
    pool = _Pool(replicas)
    rate = RateLimiter(cfg.rpm, cfg.tpm, gate=gate)
    if cfg.prefix_scheduling:
        schedule = prefix_groups([prompt_text(r.messages) for r in requests])
        stats.prefix_groups = (stats.prefix_groups or 0) + (schedule[-1].group + 1 if schedule else 0)
    else:
        schedule = arrival_order(len(requests))
    sizes = Counter(s.group for s in schedule)
    # followers of a shared-prefix group wait for their leader's answer: its prompt is then in the prefix cache
    leader_done = {g: asyncio.Event() for g, n in sizes.items() if n > 1 and cfg.prefix_scheduling}

    async def run(rank: int, s: Scheduled) -> TeacherResponse:
        event = leader_done.get(s.group)
        if event is not None and not s.leader:
            await event.wait()
        try:  # rank: slots go to the earliest scheduled waiter, so a released group runs before later leaders
            return await _one(pool, rate, requests[s.index], cfg, model, stats, s.group if event else None, budget,
                              rank)
        finally:
            if event is not None and s.leader:
                event.set()

    out: list[TeacherResponse] = []
    tokens = 0
    t0 = time.perf_counter()
    # tasks start in schedule order, at most ``window`` at a time: 200k requests no longer make 200k coroutines,
    # events and queue entries up front (~3.5 KB each), and slots still go by rank among the started ones
    window = max(WINDOW_MIN, WINDOW_PER_SLOT * sum(rep.limit.ceiling for rep in replicas))
    finished: asyncio.Queue = asyncio.Queue()
    live: set[asyncio.Future] = set()

    def start_more() -> None:
        while len(out) + len(live) < len(schedule) and len(live) < window:
            rank = len(out) + len(live)
            fut = asyncio.ensure_future(run(rank, schedule[rank]))
            fut.add_done_callback(finished.put_nowait)
            live.add(fut)

    try:
        with tqdm(total=len(schedule), desc="teacher", unit="req") as bar:
            start_more()
            while live:
                fut = await finished.get()
                live.discard(fut)
                resp = fut.result()
                if resp.error is None:
                    cache.put(resp.key, resp.to_dict())
                    tokens += resp.completion_tokens
                out.append(resp)
                bar.set_postfix(tok_s=f"{tokens / max(1e-9, time.perf_counter() - t0):.0f}",
                                window=sum(r.limit.cap for r in replicas))
                bar.update()
                start_more()
    finally:
        for t in live:
            t.cancel()
        for rep in replicas:
            await rep.client.close()
            stats.replicas[redact_url(rep.url)] = stats.replicas.get(redact_url(rep.url), 0) + rep.answered
        lowest = min(rep.limit.lowest for rep in replicas)
        stats.concurrency_lowest = lowest if stats.concurrency_lowest is None else min(lowest, stats.concurrency_lowest)
        stats.concurrency_final = sum(rep.limit.cap for rep in replicas)
        stats.rate_limited_s += rate.waited_s
    return out


def send_openai(requests: list[TeacherRequest], cfg: TeacherConfig, cache: ResponseCache,
                stats: TeacherStats, budget: Budget | None = None, gate=None) -> list[TeacherResponse]:
    """Send ``requests`` (all cache misses); returns their responses in completion order. ``gate``: an
    async callable awaited before every attempt (a limit shared with other processes)."""
    if not cfg.urls():
        raise ConfigError("teacher.base_url is required for the openai backend (e.g. http://127.0.0.1:8000/v1)")
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_send_all(requests, cfg, cache, stats, budget, gate))
    # Called from inside a running loop (e.g. a notebook): run in a private thread and loop.
    result: list[list[TeacherResponse]] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(_send_all(requests, cfg, cache, stats, budget, gate)))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)

    th = threading.Thread(target=target)
    th.start()
    th.join()
    if errors:
        raise errors[0]
    return result[0]
