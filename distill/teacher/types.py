"""The teacher's contracts: its config, a request, a response and its choices, the run's statistics.

Every backend (:mod:`distill.teacher.vllm_backend`, :mod:`distill.teacher.openai_backend`, :mod:`distill.teacher.batch`) and the
dispatcher :func:`distill.teacher.query.query_teacher` import these from here; this module imports no backend and no
client library, so the backends depend on the types and never on each other or on the dispatcher.

A request's cache key is the SHA-256 of its canonical JSON (:meth:`TeacherRequest.canonical`), not of the
Python object. Run: ``python -c "from distill.teacher.types import TeacherConfig; print(TeacherConfig())"``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from distill.config import ConfigError, StageConfig
from distill.credentials import SECRETS_FILE_ENV, get_secret
from distill.models import BUNDLED_ALIAS, BUNDLED_NAME

BUDGET_EXIT = 3  # exit code of the vLLM child when it stopped at the budget
BUDGET_ERROR = "budget:"  # error prefix of a request the budget did not let out
REQUEST_VERSION = 2  # bump when the request's canonical form or the stored response format changes (invalidates cache keys)


class TeacherUnavailable(RuntimeError):
    """The endpoint refuses every request (auth, unknown model, wrong URL): no point in continuing."""


class BatchPending(RuntimeError):
    """A submitted batch is still running after ``teacher.batch_wait_s``; a rerun collects it."""


class BudgetExceeded(RuntimeError):
    """The run stopped at its spending cap; everything answered so far is in the response cache."""


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
    # top-k per generated token, packed by distill.logprobs: byte strings + float16 + byte offsets
    # (topk-bytes/v1, any student tokenizer), with the teacher's ids too from the vllm backend (same-tokenizer KD)
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


def cpu_thread_env(env: dict[str, str]) -> dict[str, str]:
    """vLLM-CPU thread settings: use every core and reserve none (measured ~1.5x faster on 2 cores than 'auto').

    Values already in the environment win, so a user can pin differently.
    """
    n = os.cpu_count() or 1
    out = {"VLLM_CPU_OMP_THREADS_BIND": f"0-{n - 1}", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    return {k: env.get(k, v) for k, v in out.items()}



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
