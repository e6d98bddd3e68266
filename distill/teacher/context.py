"""Refuse, before any teacher call, a prompt that leaves no room for its answer in the teacher's context.

vLLM's in-process engine rejects a prompt of ``max_model_len`` tokens or more (and the whole batch with
it), its batch runner and OpenAI server reject one whose prompt plus ``max_tokens`` does not fit, and
an engine that accepts it cuts the answer short. So for the ``vllm`` backend (whose context is
``teacher.max_model_len``; an HTTP endpoint's is not known here) every rendered request must satisfy
``prompt tokens + sampling.max_tokens <= teacher.max_model_len``; the error names the seed file, line,
seed id and style, and the fix.

Kept cheap: a token covers at least one byte of the prompt, so only prompts whose UTF-8 size plus a
chat-template allowance plus ``max_tokens`` exceeds the context are counted with the teacher's
tokenizer and chat template (:func:`distill.teacher.schedule.chat_token_count`).

Run: called by :func:`distill.data.dataset.generate_dataset` and :func:`distill.data.dryrun.dry_run`, with their
plans (:class:`distill.data.plan.Plan`). The teacher client never imports :mod:`distill.data`, so a plan is typed here
by what this check reads of it (:class:`PlannedRequest`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from distill.config import ConfigError
from distill.teacher.query import TeacherConfig, TeacherRequest
from distill.teacher.schedule import chat_token_count, prompt_text

log = logging.getLogger(__name__)

# What a chat template adds around the messages (a default system prompt, role markers, special
# tokens), as an upper bound in tokens: generous, since it only decides which prompts get counted exactly.
CHAT_FRAME_TOKENS = 256
PER_MESSAGE_TOKENS = 16

TokenCounter = Callable[[list[dict[str, str]]], int]


class _SeedId(Protocol):
    """A seed, as far as the error message reads it."""

    @property
    def id(self) -> str: ...


class PlannedRequest(Protocol):
    """What :func:`check_context` reads of a plan (:class:`distill.data.plan.Plan` has these and more)."""

    @property
    def seed(self) -> _SeedId: ...  # the seed asked about: its id names it in the error

    @property
    def style(self) -> str: ...

    @property
    def request(self) -> TeacherRequest: ...  # the rendered request whose messages + max_tokens must fit

    @property
    def origin(self) -> str: ...  # ``seed`` (then the error names the seed file's line) or where else it came from


def teacher_token_counter(teacher_cfg: TeacherConfig, fetch: bool = True) -> TokenCounter | None:
    """count(messages) with the vllm teacher's tokenizer and chat template; None when none is on disk
    (``fetch=False``: the bundled teacher only if already fetched)."""
    from distill.models import BUNDLED_ALIAS, bundled_teacher_dir, fetch_bundled_teacher, load_tokenizer

    if teacher_cfg.tokenizer:
        path = Path(teacher_cfg.tokenizer).expanduser()
    elif teacher_cfg.model == BUNDLED_ALIAS:
        path = fetch_bundled_teacher() if fetch else bundled_teacher_dir()
    else:
        path = Path(teacher_cfg.model).expanduser()
    if not ((path / "tokenizer_config.json").is_file() or (path / "tokenizer.json").is_file()):
        return None
    tok = load_tokenizer(path)
    if tok.chat_template:
        return lambda m: chat_token_count(tok, m)
    return lambda m: len(tok("\n".join(x["content"] for x in m))["input_ids"])


def _seed_line(seeds_path: str, seed_id: str) -> str:
    """``file:line`` of the JSONL seed row with ``seed_id`` (GSM8K rows: id ``gsm8k-<line>``), else the path."""
    p = Path(seeds_path)
    if p.is_file():
        with open(p, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and str(row.get("id", f"gsm8k-{lineno}")) == seed_id:
                    return f"{p}:{lineno}"
    return str(p)


def check_context(plans: list[PlannedRequest], seeds_path: str, teacher_cfg: TeacherConfig,
                  count: TokenCounter | None = None) -> None:
    """Raise ConfigError when a planned request does not fit ``teacher.max_model_len`` with its ``max_tokens``.
    ``plans``: the plans of :func:`distill.data.plan.build_requests` that carry a request (skipped ones left
    out). ``count``: the token counter to use (default: the teacher's tokenizer, fetched if needed). No-op for
    the openai backend."""
    if teacher_cfg.backend != "vllm":
        return
    limit = teacher_cfg.max_model_len
    suspects = [p for p in plans
                if len(prompt_text(p.request.messages).encode("utf-8")) + CHAT_FRAME_TOKENS
                + PER_MESSAGE_TOKENS * len(p.request.messages) + p.request.max_tokens > limit]
    if not suspects:
        return
    count = count or teacher_token_counter(teacher_cfg)
    if count is None:
        log.warning("no tokenizer on disk for %s: prompt lengths not checked against teacher.max_model_len",
                    teacher_cfg.model)
        return
    over = []
    for p in suspects:
        n = count(p.request.messages)
        if n + p.request.max_tokens > limit:
            over.append((p, n))
    if not over:
        return
    p, n = over[0]
    seed, req = p.seed, p.request
    where = _seed_line(seeds_path, seed.id) if p.origin == "seed" else f"{seeds_path} ({p.origin})"
    more = f" (and {len(over) - 1} more prompts)" if len(over) > 1 else ""
    raise ConfigError(
        f"{where}: seed {seed.id!r} ({p.style} prompt): {n} prompt tokens + generate.sampling.max_tokens "
        f"{req.max_tokens} exceed teacher.max_model_len {limit}{more}; raise teacher.max_model_len, lower "
        "generate.sampling.max_tokens or generate.num_demos, or shorten or drop the seed")
