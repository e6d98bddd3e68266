"""Query a teacher LLM: request/response contracts, caching, and the backend switch.

Two backends, one contract:

- ``vllm``: ``vllm.LLM.chat`` in-process — the fastest path on one machine. It runs in a child
  process (``python -m distill.teacher_vllm``) that writes responses straight into the cache, so the
  engine's memory and worker processes are gone before training starts, and a crash of the engine
  cannot take the flow down with it.
- ``openai``: ``openai.AsyncOpenAI`` against any OpenAI-compatible URL (vLLM's server, OpenAI,
  llama.cpp, SGLang, Ollama, TGI) with bounded concurrency and retries (``distill.teacher_openai``).

:func:`query_teacher` looks every request up in the content-addressed cache first, sends only the
misses, and returns one :class:`TeacherResponse` per request, in order. Errored requests come back
marked (``error`` set), never dropped.

API keys are read from the environment variable named in the config and never stored in a request,
a response, the cache, a log line or a report.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from distill.budget import Budget, BudgetExceeded, worst_case
from distill.cache import ResponseCache
from distill.config import ConfigError, StageConfig
from distill.credentials import SECRETS_FILE_ENV, get_secret
from distill.models import BUNDLED_ALIAS, BUNDLED_NAME

log = logging.getLogger(__name__)

BUDGET_EXIT = 3  # exit code of the vLLM child when it stopped at the budget
BUDGET_ERROR = "budget:"  # error prefix of a request the budget did not let out
REQUEST_VERSION = 2  # bump when the request's canonical form or the stored response format changes (invalidates cache keys)


class TeacherConfig(StageConfig):
    """Which teacher to ask and how. Sampling parameters live in the generate config."""

    backend: Literal["vllm", "openai"] = Field("vllm", description="vllm: in-process engine; openai: any OpenAI-compatible URL")
    model: str = Field(BUNDLED_ALIAS, description="vllm: model folder or 'bundled'; openai: the served model name")
    base_url: str | None = Field(None, description="openai backend: e.g. http://127.0.0.1:8000/v1")
    base_urls: list[str] = Field(default_factory=list, description="openai: more replicas serving the same model; load is spread across all")
    api_key_env: str = Field("OPENAI_API_KEY", description="name of the env var holding the API key (never the key)")
    max_concurrency: int = Field(32, ge=1, le=4096, description="openai: most requests in flight at once, per replica")
    min_concurrency: int = Field(1, ge=1, le=4096, description="openai: the adaptive window never goes below this")
    adaptive_concurrency: bool = Field(True, description="openai: halve the window on 429/503/timeouts, grow it back by +1/window per success (AIMD)")
    rpm: int | None = Field(None, ge=1, description="openai: requests-per-minute limit across replicas (None: none)")
    tpm: int | None = Field(None, ge=1, description="openai: tokens-per-minute limit (prompt + max completion, settled on real usage)")
    timeout_s: float = Field(120.0, gt=0, description="openai: per-request timeout")
    max_retries: int = Field(5, ge=0, le=50, description="openai: retries of 429/5xx/timeouts/resets")
    batch: bool = Field(False, description="send the cache misses as one OpenAI Batch API file: vllm backend through vLLM's batch runner, openai backend to the endpoint's /v1/batches (`eakd generate --batch`)")
    batch_completion_window: str = Field("24h", description="openai batch: the completion window asked of the Batch API")
    batch_poll_s: float = Field(30.0, gt=0, description="openai batch: seconds between status polls")
    batch_wait_s: float = Field(86400.0, gt=0, description="openai batch: stop waiting after this long; the batch stays journalled and a rerun collects it")
    prefix_scheduling: bool = Field(True, description="group requests sharing a prompt prefix and run one per group first, so the engine's prefix cache serves the rest")
    price_prompt_per_mtok: float | None = Field(None, ge=0, description="cost accounting: price per million prompt tokens (None: not reported)")
    price_completion_per_mtok: float | None = Field(None, ge=0, description="cost accounting: price per million completion tokens")
    tokenizer: str | None = Field(None, description="local tokenizer folder for exact prompt-token counts (dry run); default: the vllm model folder")
    structured_retries: int = Field(2, ge=0, le=10, description="structured requests: re-ask (new seed) when an answer fails its schema; not at temperature 0, where it would repeat")
    max_tokens_total: int | None = Field(None, ge=1, description="cap: most prompt + completion tokens paid in one run (cached answers are free); reaching it stops the run cleanly, resumable")
    max_cost_usd: float | None = Field(None, gt=0, description="cap: most USD paid in one run, priced with price_*_per_mtok; stops cleanly, resumable")
    max_model_len: int = Field(2048, ge=128, description="vllm: context length of the engine")
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs to shard the teacher over (CUDA only)")
    enforce_eager: bool = Field(True, description="vllm: skip graph compilation (faster start on CPU)")
    dtype: str = Field("auto", description="vllm: compute dtype; auto = bf16 where native (CUDA, AVX512-BF16), else fp32")
    kv_cache_gib: int = Field(2, ge=1, description="vllm (CPU): KV-cache space in GiB (whole GiB)")
    batch_size: int = Field(256, ge=1, description="vllm: requests per LLM.chat call; a crash loses at most one batch")
    cache: bool = Field(True, description="use the content-addressed response cache")
    cache_path: str | None = Field(None, description="cache file; default $EAKD_HOME/cache/teacher.sqlite")

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://, e.g. http://127.0.0.1:8000/v1")
        return v

    @field_validator("base_urls")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for i, url in enumerate(v):
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"base_urls[{i}] = {url!r} must start with http:// or https://")
        return v

    @model_validator(mode="after")
    def _window(self) -> TeacherConfig:
        if self.min_concurrency > self.max_concurrency:
            raise ValueError(f"min_concurrency ({self.min_concurrency}) must be <= max_concurrency ({self.max_concurrency})")
        if self.max_cost_usd is not None and self.price_prompt_per_mtok is None and self.price_completion_per_mtok is None:
            raise ValueError("max_cost_usd needs prices to count with: set price_prompt_per_mtok and/or price_completion_per_mtok")
        return self

    def urls(self) -> list[str]:
        """Every replica's base URL, ``base_url`` first, without duplicates."""
        return list(dict.fromkeys(([self.base_url] if self.base_url else []) + self.base_urls))

    def model_id(self) -> str:
        """The model's name as it goes into cache keys and provenance (never a machine-local path)."""
        if self.model == BUNDLED_ALIAS:
            return BUNDLED_NAME
        return Path(self.model).name if self.backend == "vllm" else self.model


@dataclass
class TeacherRequest:
    messages: list[dict[str, str]]
    model: str
    style: str
    template: str
    template_sha: str
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    n: int = 1
    seed: int | None = 0
    stop: list[str] = field(default_factory=list)
    top_logprobs: int | None = None  # None: no logprobs; k: top-k per generated token
    repetition_penalty: float = 1.0  # vLLM's sampling extension (1.0 = off); sent as extra_body over HTTP
    json_schema: dict[str, Any] | None = None  # structured output: every answer must be JSON matching it

    def canonical(self) -> str:
        body = asdict(self) | {"v": REQUEST_VERSION}
        # defaults of fields added later are left out, so keys cached before they existed still hit
        if self.repetition_penalty == 1.0:
            del body["repetition_penalty"]
        if self.json_schema is None:
            del body["json_schema"]
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def key(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()


@dataclass
class Choice:
    text: str
    finish_reason: str | None
    # top-k per generated token: vllm backend -> packed ids + float16 (distill.logprobs, ~8k bytes/token);
    # openai backend -> [{"tokens": [str], "logprobs": [float]}] per token (strings: not usable for logit KD)
    logprobs: dict[str, Any] | list[dict[str, Any]] | None = None
    token_ids: list[int] | None = None  # the generated ids (vllm backend): what logit KD trains on
    schema_error: str | None = None  # structured requests: why the answer fails its schema (None: valid)


@dataclass
class TeacherResponse:
    key: str
    choices: list[Choice]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    engine: str = ""
    model: str = ""
    latency_s: float = 0.0
    error: str | None = None  # set when the request failed for good; choices is then empty
    cached: bool = False
    attempts: int = 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("cached")
        return d

    @classmethod
    def from_dict(cls, d: dict, cached: bool = False) -> TeacherResponse:
        choices = [Choice(**c) for c in d.get("choices", [])]
        rest = {k: v for k, v in d.items() if k not in ("choices", "cached")}
        return cls(choices=choices, cached=cached, **rest)


@dataclass
class TeacherStats:
    requests: int = 0
    cache_hits: int = 0
    sent: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    prompt_tokens: int = 0  # paid for in this run
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0  # served from the cache (paid for by an earlier run)
    cached_completion_tokens: int = 0
    wall_s: float = 0.0
    pushbacks: int = 0  # 429/503/timeouts that shrank the concurrency window
    concurrency_lowest: int | None = None  # smallest window reached (openai backend)
    concurrency_final: int | None = None  # window at the end (recovered after pushback)
    rate_limited_s: float = 0.0  # time spent waiting on the rpm/tpm buckets
    replicas: dict[str, int] = field(default_factory=dict)  # requests answered per replica URL
    prefix_groups: int | None = None  # prefix groups scheduled (None: prefix scheduling off)
    cost_usd: float | None = None  # paid this run, when prices are configured
    budget: dict | None = None  # the run's cap and what it spent (teacher.max_tokens_total / max_cost_usd)
    schema_invalid: int = 0  # structured answers still failing their schema after the retries (kept, marked)
    schema_retries: int = 0
    started: float | None = None  # epoch seconds when this run's first teacher call began
    # [seconds since ``started``, completion tokens paid so far] when each answer reached the cache
    timeline: list[list[float]] = field(default_factory=list)

    def add_timeline(self, created: dict[str, float], tokens: dict[str, int]) -> None:
        """Extend the tokens-over-time curve with answers written at ``created`` (key -> epoch seconds)."""
        total = self.timeline[-1][1] if self.timeline else 0
        for key in sorted(created, key=created.get):
            total += tokens.get(key, 0)
            self.timeline.append([round(max(0.0, created[key] - (self.started or created[key])), 3), total])

    @property
    def completion_tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s > 0 else 0.0

    def add_cost(self, cfg: TeacherConfig) -> None:
        """Price this run's paid tokens when the config carries prices (cached tokens cost nothing now)."""
        if cfg.price_prompt_per_mtok is None and cfg.price_completion_per_mtok is None:
            return
        self.cost_usd = round((self.prompt_tokens * (cfg.price_prompt_per_mtok or 0.0)
                               + self.completion_tokens * (cfg.price_completion_per_mtok or 0.0)) / 1e6, 6)

    def to_dict(self, max_points: int = 200) -> dict:
        d = asdict(self) | {"completion_tokens_per_s": round(self.completion_tokens_per_s, 2)}
        if len(self.timeline) > max_points:  # evenly thinned for the report's plot, last point kept
            step = len(self.timeline) / max_points
            d["timeline"] = [self.timeline[int(i * step)] for i in range(max_points - 1)] + [self.timeline[-1]]
        return d


def _run_vllm_worker(pending: list[TeacherRequest], cfg: TeacherConfig, cache_path: Path,
                     budget: Budget | None = None) -> bool:
    """Run the in-process engine in a child Python; it writes every response into the cache.

    Returns False when the child stopped at the budget (what is left of ``budget`` is passed to it)."""
    with tempfile.TemporaryDirectory(prefix="eakd-vllm-") as tmp:
        req_file = Path(tmp) / "requests.jsonl"
        with open(req_file, "w") as f:
            for r in pending:
                f.write(json.dumps(asdict(r)) + "\n")
        cfg_file = Path(tmp) / "teacher.json"
        cfg_file.write_text(cfg.model_dump_json())
        env = os.environ | {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": str(cfg.kv_cache_gib)}
        env |= cpu_thread_env(env)
        cmd = [sys.executable, "-m", "distill.teacher_vllm", str(req_file), str(cfg_file), str(cache_path)]
        if budget is not None:
            left = Path(tmp) / "budget.json"
            left.write_text(json.dumps({
                "max_tokens": None if budget.max_tokens is None else budget.max_tokens - budget.spent_tokens - budget.reserved_tokens,
                "max_cost_usd": None if budget.max_cost_usd is None else budget.max_cost_usd - budget.spent_cost - budget.reserved_cost,
                "price_prompt_per_mtok": budget.price_prompt_per_mtok, "price_completion_per_mtok": budget.price_completion_per_mtok}))
            cmd.append(str(left))
        # its own process group: the engine's worker processes join it, so one killpg cleans them all up
        # (a plain terminate of the child would leave vLLM's EngineCore/Worker running)
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        try:
            proc.wait()
        finally:
            _stop_group(proc)
        if proc.returncode == BUDGET_EXIT:
            return False
        if proc.returncode != 0:
            raise RuntimeError(
                f"the vLLM teacher process exited with code {proc.returncode} (its log is above); "
                "responses it finished are cached — rerun to resume"
            )
    return True


def _stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Stop ``proc``'s process group (the teacher child and the engine processes it started)."""
    import signal

    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return  # the group is gone
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the child exited; engine processes may linger a moment
            time.sleep(0.5)
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return


def cpu_thread_env(env: dict[str, str]) -> dict[str, str]:
    """vLLM-CPU thread settings: use every core and reserve none (measured ~1.5x faster on 2 cores than 'auto').

    Values already in the environment win, so a user can pin differently.
    """
    n = os.cpu_count() or 1
    out = {"VLLM_CPU_OMP_THREADS_BIND": f"0-{n - 1}", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    return {k: env.get(k, v) for k, v in out.items()}


def _send_batch(pending: list[TeacherRequest], cfg: TeacherConfig, cache: ResponseCache, stats: TeacherStats,
                budget: Budget | None, errors: dict[str, TeacherResponse]) -> bool:
    """Batch mode (see :mod:`distill.batch`); with a budget only the head whose worst case fits is sent.
    Returns True when the budget held requests back."""
    from distill.batch import send_batch

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
    Raises :class:`~distill.budget.BudgetExceeded` after saving every answer when the cap stops the run.
    """
    stats = stats if stats is not None else TeacherStats()
    budget = budget if budget is not None else Budget.from_config(cfg)
    t0 = time.perf_counter()
    if stats.started is None:
        stats.started = time.time()
    cache_path = Path(cfg.cache_path) if cfg.cache_path else None
    throwaway = None
    if not cfg.cache:
        # a private throwaway cache keeps one code path (the vLLM worker always writes to a cache)
        throwaway = tempfile.TemporaryDirectory(prefix="eakd-nocache-")
        cache_path = Path(throwaway.name) / "teacher.sqlite"
    cache = ResponseCache(cache_path)
    keys = [r.key() for r in requests]
    found = cache.get_many(list(dict.fromkeys(keys)))
    unique_pending: dict[str, TeacherRequest] = {}
    for k, r in zip(keys, requests):
        if k not in found:
            unique_pending.setdefault(k, r)
    stats.requests += len(requests)
    stats.cache_hits += len(requests) - sum(1 for k in keys if k not in found)
    pending = list(unique_pending.values())
    log.info("teacher: %d requests, %d cached, %d to send (%s)", len(requests), len(requests) - len(pending), len(pending), cfg.backend)

    errors: dict[str, TeacherResponse] = {}
    if pending:
        stats.sent += len(pending)
        if cfg.batch:
            stopped_by_budget = _send_batch(pending, cfg, cache, stats, budget, errors)
        elif cfg.backend == "vllm":
            if cfg.prefix_scheduling:  # the worker orders by the same schedule; count its groups here
                from distill.schedule import prefix_groups, prompt_text

                schedule = prefix_groups([prompt_text(r.messages) for r in pending])
                stats.prefix_groups = (stats.prefix_groups or 0) + len({s.group for s in schedule})
            stopped_by_budget = not _run_vllm_worker(pending, cfg, cache.path, budget)
        else:
            from distill.teacher_openai import send_openai

            stopped_by_budget = False
            for resp in send_openai(pending, cfg, cache, stats, budget, gate):
                if resp.error is not None and resp.error.startswith(BUDGET_ERROR):
                    stopped_by_budget = True
                elif resp.error is not None:
                    errors[resp.key] = resp
        fresh = cache.get_many([r.key() for r in pending])
        found.update(fresh)
        stats.add_timeline(cache.created_many(list(fresh)), {k: d.get("completion_tokens", 0) for k, d in fresh.items()})
        if budget is not None and cfg.backend == "vllm" and not cfg.batch:  # the child kept its own tally
            for d in fresh.values():
                budget.settle(0, 0, d.get("prompt_tokens", 0), d.get("completion_tokens", 0))
        if stopped_by_budget:
            unanswered = sum(1 for r in pending if r.key() not in found)
            if budget is not None and cfg.backend == "vllm" and not cfg.batch:  # refused in the child
                budget.refused += unanswered
            stats.budget = budget.to_dict() if budget is not None else None
            cache.close()
            if throwaway is not None:
                throwaway.cleanup()
            raise BudgetExceeded(
                f"teacher budget reached ({budget.describe() if budget else 'cap'}): {len(pending) - unanswered} of "
                f"{len(pending)} requests sent in this step were answered and saved to the response cache "
                f"({cfg.cache_path or 'default cache'}), {unanswered} were not sent. Nothing is lost: raise "
                "teacher.max_tokens_total / teacher.max_cost_usd (or remove them) and re-run the same command; "
                "cached answers are reused without paying again."
                + ("" if cfg.cache else " (teacher.cache is off, so this run's answers were not kept: turn it on)"))

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
    cache.close()
    if throwaway is not None:
        throwaway.cleanup()
    for resp in out:
        stats.schema_invalid += sum(c.schema_error is not None for c in resp.choices)
        if cfg.backend == "vllm" and not resp.cached:  # the child re-asked these (the openai sender counts its own)
            stats.schema_retries += max(0, resp.attempts - 1)
    stats.wall_s += time.perf_counter() - t0
    stats.add_cost(cfg)
    if budget is not None:
        stats.budget = budget.to_dict()
    return out


def require_api_key(cfg: TeacherConfig) -> str:
    """The key named by the config, from the environment or the secrets file (``distill.credentials``);
    local servers accept any non-empty string."""
    key = get_secret(cfg.api_key_env)
    if key:
        return key
    if cfg.base_url and ("127.0.0.1" in cfg.base_url or "localhost" in cfg.base_url):
        return "EMPTY"
    raise ConfigError(
        f"teacher.api_key_env: environment variable {cfg.api_key_env} is not set; export it, or add a line "
        f"{cfg.api_key_env}=... to the secrets file ${SECRETS_FILE_ENV} or $EAKD_HOME/secrets.env (chmod 600); "
        "the key is never written to configs, logs or caches"
    )
