"""The ``openai`` teacher backend: ``AsyncOpenAI`` against any OpenAI-compatible URL.

Bounded concurrency (a semaphore of ``max_concurrency``), a per-request timeout, and retries with
exponential backoff plus full jitter that honour ``Retry-After``. Retry policy:

- retried: 429, 408, 409, 5xx, timeouts, connection errors/resets;
- the whole run stops at once (misconfiguration, every request would fail): 401, 403, 404;
- marked on the record and kept (this request is bad, the others may be fine): 400, 413, 422.

Each response is committed to the cache the moment it arrives, so a killed run resends only what
was in flight.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from typing import Any

import httpx
import openai
from tqdm import tqdm

from distill.cache import ResponseCache
from distill.config import ConfigError
from distill.teacher import Choice, TeacherConfig, TeacherRequest, TeacherResponse, TeacherStats, require_api_key

log = logging.getLogger(__name__)

FATAL_STATUS = {401: "wrong or missing API key", 403: "access denied", 404: "model or URL not found"}
RETRY_STATUS = {408, 409, 429}


class TeacherUnavailable(RuntimeError):
    """The endpoint refuses every request (auth, unknown model, wrong URL): no point in continuing."""


def _body(r: TeacherRequest, model: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model, "messages": r.messages, "temperature": r.temperature, "top_p": r.top_p,
        "max_tokens": r.max_tokens, "n": r.n,
    }
    if r.seed is not None:
        body["seed"] = r.seed
    if r.stop:
        body["stop"] = r.stop
    if r.top_logprobs:
        body["logprobs"] = True
        body["top_logprobs"] = r.top_logprobs
    return body


def _choice(c) -> Choice:
    lps = None
    if getattr(c, "logprobs", None) is not None and c.logprobs.content is not None:
        lps = [
            {"tokens": [t.token for t in pos.top_logprobs], "logprobs": [round(t.logprob, 5) for t in pos.top_logprobs]}
            for pos in c.logprobs.content
        ]
    return Choice(text=c.message.content or "", finish_reason=c.finish_reason, logprobs=lps)


def _retry_after(exc: Exception) -> float | None:
    resp = getattr(exc, "response", None)
    if resp is None:
        return None
    raw = resp.headers.get("retry-after")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


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


async def _one(client: openai.AsyncOpenAI, r: TeacherRequest, cfg: TeacherConfig, model: str,
               sem: asyncio.Semaphore, stats: TeacherStats) -> TeacherResponse:
    key = r.key()
    attempt = 0
    while True:
        attempt += 1
        async with sem:
            t = time.perf_counter()
            try:
                comp = await client.chat.completions.create(**_body(r, model))
                if not comp.choices:
                    raise ValueError("response has no choices")
                usage = comp.usage
                return TeacherResponse(
                    key=key, choices=[_choice(c) for c in comp.choices],
                    prompt_tokens=usage.prompt_tokens if usage else 0,
                    completion_tokens=usage.completion_tokens if usage else 0,
                    engine="openai", model=comp.model or model, latency_s=round(time.perf_counter() - t, 4),
                    attempts=attempt,
                )
            except Exception as exc:  # noqa: BLE001 - classified below, nothing swallowed silently
                if isinstance(exc, openai.APIStatusError) and exc.status_code in FATAL_STATUS:
                    raise TeacherUnavailable(
                        f"teacher at {cfg.base_url} answered {exc.status_code} ({FATAL_STATUS[exc.status_code]}) "
                        f"for model {model!r}: check teacher.base_url, teacher.model and ${cfg.api_key_env}"
                    ) from None
                kind, retryable = _classify(exc)
                stats.failures[kind] = stats.failures.get(kind, 0) + 1
                if not retryable or attempt > cfg.max_retries:
                    log.warning("request %s failed for good after %d attempt(s): %s", key[:12], attempt, kind)
                    return TeacherResponse(key=key, choices=[], engine="openai", model=model, error=f"{kind}: {exc}"[:500], attempts=attempt)
                stats.retries += 1
                wait = _retry_after(exc)
        if wait is None:
            wait = random.uniform(0, min(30.0, 0.5 * 2 ** (attempt - 1)))  # full jitter
        await asyncio.sleep(wait)


async def _send_all(requests: list[TeacherRequest], cfg: TeacherConfig, cache: ResponseCache,
                    stats: TeacherStats) -> list[TeacherResponse]:
    model = cfg.model_id()
    client = openai.AsyncOpenAI(base_url=cfg.base_url, api_key=require_api_key(cfg), timeout=cfg.timeout_s, max_retries=0)
    sem = asyncio.Semaphore(cfg.max_concurrency)
    out: list[TeacherResponse] = []
    tokens = 0
    t0 = time.perf_counter()
    tasks = [asyncio.ensure_future(_one(client, r, cfg, model, sem, stats)) for r in requests]
    try:
        with tqdm(total=len(tasks), desc="teacher", unit="req") as bar:
            for fut in asyncio.as_completed(tasks):
                resp = await fut
                if resp.error is None:
                    cache.put(resp.key, resp.to_dict())
                    tokens += resp.completion_tokens
                out.append(resp)
                bar.set_postfix(tok_s=f"{tokens / max(1e-9, time.perf_counter() - t0):.0f}")
                bar.update()
    finally:
        for t in tasks:
            t.cancel()
        await client.close()
    return out


def send_openai(requests: list[TeacherRequest], cfg: TeacherConfig, cache: ResponseCache,
                stats: TeacherStats) -> list[TeacherResponse]:
    """Send ``requests`` (all cache misses); returns their responses in completion order."""
    if not cfg.base_url:
        raise ConfigError("teacher.base_url is required for the openai backend (e.g. http://127.0.0.1:8000/v1)")
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_send_all(requests, cfg, cache, stats))
    # Called from inside a running loop (e.g. a notebook): run in a private thread and loop.
    result: list[list[TeacherResponse]] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(_send_all(requests, cfg, cache, stats)))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)

    th = threading.Thread(target=target)
    th.start()
    th.join()
    if errors:
        raise errors[0]
    return result[0]
