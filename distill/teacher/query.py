"""Query a teacher LLM: caching and the backend switch (the contracts are in :mod:`distill.teacher.types`).

Two backends, one contract:

- ``vllm``: ``vllm.LLM.chat`` in-process — the fastest path on one machine. It runs in a child
  process (``python -m distill.teacher.vllm_backend``) that writes responses straight into the cache, so the
  engine's memory and worker processes are gone before training starts, and a crash of the engine
  cannot take the flow down with it; inside :func:`distill.teacher.engine.engine_session` the calls share
  one such child (:mod:`distill.teacher.engine`).
- ``openai``: ``openai.AsyncOpenAI`` against any OpenAI-compatible URL (vLLM's server, OpenAI,
  llama.cpp, SGLang, Ollama, TGI) with bounded concurrency and retries (``distill.teacher.openai_backend``).

:func:`query_teacher` looks every request up in the content-addressed cache first, sends only the
misses, and returns one :class:`TeacherResponse` per request, in order. Errored requests come back
marked (``error`` set), never dropped.

API keys are read from the environment variable named in the config and never stored in a request,
a response, the cache, a log line or a report.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from distill.teacher.batch import send_batch
from distill.teacher.budget import Budget, worst_case
from distill.teacher.cache import ResponseCache
from distill.teacher.engine import run_engine
from distill.teacher.types import (  # the contracts: callers import them from here too
    BUDGET_ERROR,
    BudgetExceeded,
    Choice,  # noqa: F401
    TeacherConfig,
    TeacherRequest,
    TeacherResponse,
    TeacherStats,
    cpu_thread_env,  # noqa: F401
    require_api_key,  # noqa: F401
)

log = logging.getLogger(__name__)


def _send_batch(pending: list[TeacherRequest], cfg: TeacherConfig, cache: ResponseCache, stats: TeacherStats,
                budget: Budget | None, errors: dict[str, TeacherResponse]) -> bool:
    """Batch mode (see :mod:`distill.teacher.batch`); with a budget only the head whose worst case fits is sent.
    Returns True when the budget held requests back."""
    admitted, worst = pending, []
    if budget is not None:
        admitted = []
        for r in pending:
            w = worst_case(r)  # a batch has no re-asks
            if not budget.try_reserve(*w):
                budget.refused += len(pending) - len(admitted)
                break
            admitted.append(r)
            worst.append(w)
    if admitted:
        errors.update(send_batch(admitted, cfg, cache, stats))
    if budget is not None:
        got = cache.get_many([r.key() for r in admitted])
        for r, w in zip(admitted, worst):
            d = got.get(r.key(), {})
            budget.settle(*w, d.get("prompt_tokens", 0), d.get("completion_tokens", 0))
    return len(admitted) < len(pending)


def query_teacher(requests: list[TeacherRequest], cfg: TeacherConfig, stats: TeacherStats | None = None,
                  budget: Budget | None = None, gate=None) -> list[TeacherResponse]:
    """Answer every request, from the cache where possible; returns responses in request order.

    ``gate`` (openai backend): an async callable awaited before every request sent — a rate limit shared
    with other processes, e.g. the pipeline's Prefect rate limit (``run.teacher_rate_limit``).

    ``budget`` (default: the cap ``cfg`` sets, for this call alone) is shared by the calls of one run.
    Raises :class:`~distill.teacher.types.BudgetExceeded` after saving every answer when the cap stops the run.

    Phases: :func:`_open_cache` -> :func:`_look_up` -> :func:`_send_pending` -> :func:`_read_answers`
    (-> :func:`_budget_exceeded` when the cap stopped the sending) -> :func:`_responses` -> :func:`_close_stats`.
    """
    stats = stats if stats is not None else TeacherStats()
    budget = budget if budget is not None else Budget.from_config(cfg)
    t0 = time.perf_counter()
    if stats.started is None:
        stats.started = time.time()
    cache, throwaway = _open_cache(cfg)
    try:  # the cache is closed (and a throwaway one removed) however the call ends
        keys, found, unique_pending = _look_up(requests, cfg, cache, stats)
        pending = list(unique_pending.values())
        errors: dict[str, TeacherResponse] = {}
        if pending:
            stopped_by_budget = _send_pending(pending, cfg, cache, stats, budget, gate, errors)
            found.update(_read_answers(pending, cfg, cache, stats, budget))
            if stopped_by_budget:
                raise _budget_exceeded(pending, found, cfg, stats, budget)
        out = _responses(keys, found, errors, unique_pending, stats)
    finally:
        _close_cache(cache, throwaway)
    _close_stats(out, cfg, stats, budget, t0)
    return out


def _open_cache(cfg: TeacherConfig) -> tuple[ResponseCache, tempfile.TemporaryDirectory | None]:
    """The response cache ``cfg`` names, or (``teacher.cache`` off) a private throwaway one and its folder."""
    cache_path = Path(cfg.cache_path) if cfg.cache_path else None
    throwaway = None
    if not cfg.cache:
        # a private throwaway cache keeps one code path (the vLLM worker always writes to a cache)
        throwaway = tempfile.TemporaryDirectory(prefix="eakd-nocache-")
        cache_path = Path(throwaway.name) / "teacher.sqlite"
    return ResponseCache(cache_path), throwaway


def _close_cache(cache: ResponseCache, throwaway: tempfile.TemporaryDirectory | None) -> None:
    """Close the cache; a throwaway one goes with its folder."""
    cache.close()
    if throwaway is not None:
        throwaway.cleanup()


def _look_up(requests: list[TeacherRequest], cfg: TeacherConfig, cache: ResponseCache,
             stats: TeacherStats) -> tuple[list[str], dict[str, dict], dict[str, TeacherRequest]]:
    """(each request's cache key, the cached answers by key, the requests to send: one per uncached key)."""
    keys = [r.key() for r in requests]
    found = cache.get_many(list(dict.fromkeys(keys)))
    unique_pending: dict[str, TeacherRequest] = {}
    for k, r in zip(keys, requests):
        if k not in found:
            unique_pending.setdefault(k, r)
    stats.requests += len(requests)
    stats.cache_hits += len(requests) - sum(1 for k in keys if k not in found)
    n_pending = len(unique_pending)
    log.info("teacher: %d requests, %d cached, %d to send (%s)", len(requests), len(requests) - n_pending, n_pending, cfg.backend)
    return keys, found, unique_pending


def _send_pending(pending: list[TeacherRequest], cfg: TeacherConfig, cache: ResponseCache, stats: TeacherStats,
                  budget: Budget | None, gate, errors: dict[str, TeacherResponse]) -> bool:
    """Send the uncached requests through the configured backend; answers land in the cache, failed requests
    in ``errors``. Returns True when the budget stopped the sending."""
    stats.sent += len(pending)
    if cfg.batch:
        return _send_batch(pending, cfg, cache, stats, budget, errors)
    if cfg.backend == "vllm":
        if cfg.prefix_scheduling:  # the worker orders by the same schedule; count its groups here
            from distill.teacher.schedule import prefix_groups, prompt_text

            schedule = prefix_groups([prompt_text(r.messages) for r in pending])
            stats.prefix_groups = (stats.prefix_groups or 0) + len({s.group for s in schedule})
        return not run_engine(pending, cfg, cache.path, budget)
    from distill.teacher.openai_backend import send_openai

    stopped_by_budget = False
    for resp in send_openai(pending, cfg, cache, stats, budget, gate):
        if resp.error is not None and resp.error.startswith(BUDGET_ERROR):
            stopped_by_budget = True
        elif resp.error is not None:
            errors[resp.key] = resp
    return stopped_by_budget


def _read_answers(pending: list[TeacherRequest], cfg: TeacherConfig, cache: ResponseCache, stats: TeacherStats,
                  budget: Budget | None) -> dict[str, dict]:
    """The answers just sent requests got (read back from the cache), entered in the timeline and — for the
    vLLM child, which kept its own tally — settled against the budget."""
    fresh = cache.get_many([r.key() for r in pending])
    stats.add_timeline(cache.created_many(list(fresh)), {k: d.get("completion_tokens", 0) for k, d in fresh.items()})
    if budget is not None and cfg.backend == "vllm" and not cfg.batch:  # the child kept its own tally
        for d in fresh.values():
            budget.settle(0, 0, d.get("prompt_tokens", 0), d.get("completion_tokens", 0))
    return fresh


def _budget_exceeded(pending: list[TeacherRequest], found: dict[str, dict], cfg: TeacherConfig, stats: TeacherStats,
                     budget: Budget | None) -> BudgetExceeded:
    """Count what the cap held back and say how to resume (the caller closes the cache, then raises it)."""
    unanswered = sum(1 for r in pending if r.key() not in found)
    if budget is not None and cfg.backend == "vllm" and not cfg.batch:  # refused in the child
        budget.refused += unanswered
    stats.budget = budget.to_dict() if budget is not None else None
    return BudgetExceeded(
        f"teacher budget reached ({budget.describe() if budget else 'cap'}): {len(pending) - unanswered} of "
        f"{len(pending)} requests sent in this step were answered and saved to the response cache "
        f"({cfg.cache_path or 'default cache'}), {unanswered} were not sent. Nothing is lost: raise "
        "teacher.max_tokens_total / teacher.max_cost_usd (or remove them) and re-run the same command; "
        "cached answers are reused without paying again."
        + ("" if cfg.cache else " (teacher.cache is off, so this run's answers were not kept: turn it on)"))


def _responses(keys: list[str], found: dict[str, dict], errors: dict[str, TeacherResponse],
               unique_pending: dict[str, TeacherRequest], stats: TeacherStats) -> list[TeacherResponse]:
    """One response per request key, in order: the answer (tokens counted as cached or paid once per key), else
    the backend's error, else a marked "no response recorded"."""
    out: list[TeacherResponse] = []
    counted: set[str] = set()
    for k in keys:
        if k in found:
            resp = TeacherResponse.from_dict(found[k], cached=k not in unique_pending)
            if resp.cached:
                stats.cached_prompt_tokens += resp.prompt_tokens
                stats.cached_completion_tokens += resp.completion_tokens
            elif k not in counted:  # tokens paid for in this call, once per request
                counted.add(k)
                stats.prompt_tokens += resp.prompt_tokens
                stats.completion_tokens += resp.completion_tokens
        elif k in errors:
            resp = errors[k]
        else:
            resp = TeacherResponse(key=k, choices=[], error="no response recorded (engine stopped early)")
            stats.failures["missing"] = stats.failures.get("missing", 0) + 1
        out.append(resp)
    return out


def _close_stats(out: list[TeacherResponse], cfg: TeacherConfig, stats: TeacherStats, budget: Budget | None,
                 t0: float) -> None:
    """Schema counts, wall time, cost and the budget's state for this call."""
    for resp in out:
        stats.schema_invalid += sum(c.schema_error is not None for c in resp.choices)
        if cfg.backend == "vllm" and not resp.cached:  # the child re-asked these (the openai sender counts its own)
            stats.schema_retries += max(0, resp.attempts - 1)
    stats.wall_s += time.perf_counter() - t0
    stats.add_cost(cfg)
    if budget is not None:
        stats.budget = budget.to_dict()
