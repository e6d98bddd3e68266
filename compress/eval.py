"""Measure a (compressed) model: parameters, bytes on disk, perplexity, task accuracy and CPU latency.

- Perplexity comes from :func:`distill.evaluate.perplexity` (its docstring documents the protocol), so the
  numbers compare with those of the distillation stages.
- Bytes are the ``*.safetensors`` files of the saved artifact — the honest size measure, since pruning
  zeros are stored densely and int8 only shrinks files.
- Task accuracy: greedy answers to held-out prompts with a gold answer (the validation split of an eakd
  dataset), graded with the dataset builder's own answer extraction (:func:`distill.evaluate.score_answers`).
- Latency: greedy decoding of a fixed prompt in PyTorch on this machine, one stream and a batch. The model
  is measured as it sits in memory: quantized weights are dequantized and zeros are stored, so
  quantization and unstructured sparsity do **not** speed it up here (that needs an engine with int4/sparse
  kernels, e.g. vLLM loading the compressed-tensors export); depth, width and low-rank steps do.

Run: ``python -c "from compress.eval import measure; ..."`` — normally via :mod:`compress.stage`.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from compress.artifact import safetensors_bytes
from compress.config import EvalConfig
from distill.config import ConfigError
from distill.evaluate import count_parameters, generate_greedy, perplexity, score_answers

if TYPE_CHECKING:
    from distill.data.dataset import ExtractionConfig

log = logging.getLogger(__name__)


@dataclass
class TaskSet:
    """Held-out prompts with gold answers, and how the dataset that holds them parses an answer."""

    rows: list[dict]
    extraction: ExtractionConfig
    structured_cot: bool
    source: str


def load_tasks(dataset_dir: str | Path, max_examples: int) -> TaskSet:
    """Up to ``max_examples`` validation rows of the eakd dataset at ``dataset_dir`` that carry a gold answer
    (one per prompt, round-robin over styles: :func:`distill.evaluate.select_task_rows`)."""
    from datasets import load_from_disk

    from distill.evaluate import dataset_extraction, select_task_rows

    path = Path(dataset_dir)
    if not (path / "dataset_dict.json").is_file():
        raise ConfigError(f"compress.eval.tasks_dataset: {path} is not an eakd dataset (no dataset_dict.json); "
                          "point it at the output of `eakd generate`")
    dd = load_from_disk(str(path))
    if "validation" not in dd:
        raise ConfigError(f"compress.eval.tasks_dataset: {path} has no validation split (it has {', '.join(dd)}); "
                          "generate with generate.validation_fraction > 0")
    val = dd["validation"]
    cols = [c for c in ("id", "style", "gold", "answer", "messages") if c in val.column_names]
    rows = select_task_rows(val.select_columns(cols).to_list() if cols else [], max_examples)
    if not rows:
        raise ConfigError(f"compress.eval.tasks_dataset: no validation row of {path} has a gold answer (column "
                          "'gold') and an assistant turn; use seeds with answers, or set compress.eval.max_examples: 0")
    extraction, structured, _ = dataset_extraction(path)
    return TaskSet(rows, extraction, structured, str(path))


def task_accuracy(model: nn.Module, tokenizer: Any, tasks: TaskSet, max_new_tokens: int,
                  batch_size: int = 8) -> dict[str, Any]:
    """``{"rows", "correct", "accuracy", "no_answer", "per_style", "truncated", "seconds"}`` for greedy answers."""
    t = time.perf_counter()
    outputs, truncated = generate_greedy(model, tokenizer, [r["messages"][:-1] for r in tasks.rows], max_new_tokens,
                                         batch_size, None, [r.get("style") != "cot" for r in tasks.rows])
    scored = score_answers(outputs, tasks.rows, tasks.extraction, tasks.structured_cot)
    scored.pop("per_row")
    return scored | {"truncated": truncated, "max_new_tokens": max_new_tokens, "seconds": round(time.perf_counter() - t, 2)}


@torch.no_grad()
def _timed_generate(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> float:
    """Seconds for greedy decoding of exactly ``new_tokens`` tokens after ``ids`` [batch, prompt] (EOS ignored)."""
    t = time.perf_counter()
    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens,
                   min_new_tokens=new_tokens, pad_token_id=0)
    return time.perf_counter() - t


@torch.no_grad()
def _timed_decode(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> float:
    """Seconds for the ``new_tokens - 1`` KV-cached greedy steps after the prefill of ``ids`` [1, prompt] (the
    prefill, which yields the first token, is not timed): decode measured directly, not as a difference."""
    out = model(input_ids=ids, use_cache=True)
    past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    t = time.perf_counter()
    for _ in range(new_tokens - 1):
        out = model(input_ids=nxt, past_key_values=past, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
    return time.perf_counter() - t


@torch.no_grad()
def latency(model: nn.Module, tokenizer: Any, text: str, prompt_tokens: int = 128, new_tokens: int = 32,
            batch: int = 8, repeats: int = 3) -> dict[str, Any]:
    """Greedy decoding latency of the in-memory model on its current device, median of ``repeats`` after a
    warm-up: the prompt is the first ``prompt_tokens`` tokens of ``text``.

    Returns ``{"prefill_ms"`` (one forward over the prompt, one stream), ``"single_ms_per_token"`` (decode
    time per generated token, one stream: the KV-cached steps timed on their own), ``"single_tokens_per_s"``,
    ``"batched_tokens_per_s"`` (``batch`` copies of the prompt decoded together), ``"batch"``,
    ``"prompt_tokens"``, ``"new_tokens"``, ``"threads"``, ``"device"``, ``"dtype"}``.
    """
    if prompt_tokens < 1 or new_tokens < 2 or batch < 1 or repeats < 1:
        raise ValueError(f"latency: need prompt_tokens >= 1, new_tokens >= 2, batch >= 1, repeats >= 1; got "
                         f"{prompt_tokens}, {new_tokens}, {batch}, {repeats}")
    device = next(model.parameters()).device
    ids = tokenizer(text[: 16 * prompt_tokens], add_special_tokens=False, verbose=False)["input_ids"][:prompt_tokens]
    if len(ids) < prompt_tokens:
        raise ValueError(f"latency: the eval text has {len(ids)} tokens, fewer than prompt_tokens={prompt_tokens}")
    one = torch.tensor([ids], device=device)
    was_training = model.training
    model.eval()
    try:
        _timed_generate(model, one, 2)  # warm-up: first-call allocations, thread pool start
        prefill, single, steps, batched = [], [], [], []
        for _ in range(repeats):
            t = time.perf_counter()
            model(input_ids=one, use_cache=False)
            prefill.append(time.perf_counter() - t)
            single.append(_timed_generate(model, one, new_tokens))
            steps.append(_timed_decode(model, one, new_tokens))
            batched.append(_timed_generate(model, one.expand(batch, -1).contiguous(), new_tokens))
    finally:
        model.train(was_training)
    p, s, b = statistics.median(prefill), statistics.median(single), statistics.median(batched)
    decode = statistics.median(steps) / (new_tokens - 1)  # the first new token comes out of the prefill
    return {"prefill_ms": round(1e3 * p, 2), "single_ms_per_token": round(1e3 * decode, 2),
            "single_tokens_per_s": round(new_tokens / s, 2), "batched_tokens_per_s": round(batch * new_tokens / b, 2),
            "batch": batch, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "repeats": repeats,
            "threads": torch.get_num_threads(), "device": str(device),
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}


def task_acc(m: dict | None) -> str:
    """A compress measurement's task accuracy as "correct/rows", or "—" when none was measured."""
    acc = (m or {}).get("accuracy")
    return "—" if not acc or acc.get("accuracy") is None else f"{acc['correct']}/{acc['rows']}"


def decode_latency(m: dict | None) -> str:
    """A compress measurement's latency as "ms/token one stream · tokens/s batched", or "—"."""
    lat = (m or {}).get("latency")
    return "—" if not lat else f"{lat['single_ms_per_token']:.1f} ms/tok · {lat['batched_tokens_per_s']:.0f} tok/s ×{lat['batch']}"


def probe_prompts(cfg: Any, dataset_dir: str | Path | None) -> list | None:
    """The EA probe prompts of ``compress.eval.probes`` (None when unset), skipping every item whose input a
    training row of ``dataset_dir`` used (:func:`distill.probes.run.dataset_inputs`)."""
    if cfg is None:
        return None
    from distill.probes.run import build_prompts, dataset_inputs

    seen: set[str] = set()
    if dataset_dir is not None and (Path(dataset_dir) / "dataset_dict.json").is_file():
        from datasets import load_from_disk

        seen = dataset_inputs(load_from_disk(str(dataset_dir)))
    try:
        return build_prompts(cfg, seen)
    except ValueError as exc:
        raise ConfigError(f"compress.eval.probes: {exc}") from None


ABILITY_KEYS = (("ICL", ("icl", "zero_shot", "strict")), ("CoT", ("cot", "cot", "strict")),
                ("IF", ("if", "prompt_loose")), ("ctl", ("control", "zero_shot", "lenient")))


def ability_scores(m: dict | None) -> dict[str, float]:
    """A measurement's headline probe scores ``{"ICL": 0-shot, "CoT": 0-shot CoT, "IF": loose, "ctl": controls}``."""
    out = {}
    for name, path in ABILITY_KEYS:
        node: Any = (m or {}).get("probes")
        for k in path:
            node = node.get(k) if isinstance(node, dict) else None
        if node is not None:
            out[name] = node
    return out


def abilities(m: dict | None, baseline: dict | None = None) -> str:
    """Probe scores as "ICL 45.8% (98%) · IF 12.5% (100%)": each with the share of the baseline's kept, or "—"."""
    now, base = ability_scores(m), ability_scores(baseline)
    if not now:
        return "—"
    kept = lambda k: f" ({now[k] / base[k]:.0%})" if base.get(k) else ""  # noqa: E731
    return " · ".join(f"{k} {v:.1%}" + (kept(k) if baseline is not None else "") for k, v in now.items())


def measure(model: nn.Module, tokenizer: Any, text: str, out_dir: Path | None, eval_cfg: EvalConfig,
            tasks: TaskSet | None = None, probes: list | None = None) -> dict[str, Any]:
    """``{"params_total", "params_nonzero", "bytes_on_disk" (None without out_dir), "perplexity", "nll",
    "tokens", "windows", "seconds", "tokens_per_s", "accuracy" (None without tasks), "latency" (None when
    ``eval_cfg.latency`` is off), "probes" (per-ability scores, None without ``probes`` prompts)}``."""
    params = count_parameters(model)
    ppl = perplexity(model, tokenizer, text, window=eval_cfg.window, max_windows=eval_cfg.max_windows,
                     dtype=eval_cfg.dtype)
    acc = None if tasks is None else task_accuracy(model, tokenizer, tasks, eval_cfg.max_new_tokens, eval_cfg.batch_size)
    scores = None
    if probes:
        from distill.probes.run import probe_model

        t = time.perf_counter()
        autocast = torch.bfloat16 if ppl["dtype"] == "bfloat16" else None  # the same compute as the perplexity
        scores, _ = probe_model(model, tokenizer, probes, eval_cfg.probes, eval_cfg.batch_size, autocast)
        scores["seconds"] = round(time.perf_counter() - t, 2)
    lat = None
    if eval_cfg.latency:
        lat = latency(model, tokenizer, text, eval_cfg.latency_prompt_tokens, eval_cfg.latency_new_tokens,
                      eval_cfg.latency_batch, eval_cfg.latency_repeats)
    return {
        "params_total": params["total"],
        "params_nonzero": params["nonzero"],
        "bytes_on_disk": safetensors_bytes(out_dir) if out_dir is not None else None,
        "perplexity": ppl["perplexity"],
        "nll": ppl["nll"],
        "tokens": ppl["tokens"],
        "windows": ppl["windows"],
        "dtype": ppl["dtype"],  # the resolved compute dtype ("auto" never reaches a report)
        "seconds": ppl["seconds"],
        "tokens_per_s": ppl["tokens_per_s"],
        "accuracy": acc,
        "probes": scores,
        "latency": lat,
    }
