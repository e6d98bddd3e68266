"""Every metric of one model, as the evaluate stage reports it (``eval.json``'s ``base``, ``start``, ``student``).

:func:`measure_model` loads one model (the student's start: its base depth-pruned as ``train.keep_layers`` prunes
it) and measures, in order: perplexity on the held-out text (:mod:`distill.eval.perplexity`); validation loss and
agreement with the teacher on the validation split, encoded as training encodes it (:func:`encode_validation`,
:func:`distill.train.run.eval_rows`); task accuracy, greedy answers graded by :mod:`distill.eval.grading`; then the
EA probes (:mod:`distill.probes.run`) and lm-eval tasks (:mod:`distill.lmeval.run`) when configured.
:class:`EvalInputs` holds what every model is measured on.

May import: torch, the shared core (``distill.config``, ``distill.models``, ``distill.generation``,
``distill.logprobs``), the other ``distill.eval`` modules; function-local, ``distill.train.run``,
``distill.probes.run`` and ``distill.lmeval.run``. Never :mod:`distill.evaluate` (the stage, which calls it).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.answers import ExtractionConfig
from distill.config import ConfigError
from distill.eval.config import EvaluateConfig
from distill.eval.grading import score_answers
from distill.eval.perplexity import count_parameters, perplexity
from distill.generation import generate_greedy
from distill.models import load_causal_lm, load_tokenizer, resolve_dtype

log = logging.getLogger("distill.evaluate")  # the evaluate stage's logger: its lines read as before the split


@dataclass(frozen=True)
class EvalInputs:
    """What every model of one evaluation is measured on."""

    text: str | None  # the perplexity text; None: perplexity skipped, ``text_skip`` says why
    text_skip: str | None
    split: Any  # the dataset's validation split (a ``datasets.Dataset``)
    task_rows: list[dict]  # validation rows with a gold answer, asked for task accuracy (select_task_rows)
    extraction: ExtractionConfig  # how the dataset builder parsed the teacher's answers
    structured_cot: bool
    extraction_from: str  # where ``extraction`` came from (eval.json's ``extraction.from``)
    device: str


def measure_model(path: Path, cfg: EvaluateConfig, inputs: EvalInputs, probe_prompts: list | None = None,
                  keep_layers: int | None = None, lm_tasks: Any = None) -> dict[str, Any]:
    """Every metric of one model; the task accuracy's per-row records under ``"per_row"``, the probes' under
    ``"probe_records"`` (the stage pops both into their own files). ``lm_tasks``: prepared lm-eval tasks
    (:class:`distill.lmeval.run.PreparedTasks`)."""
    t0 = time.perf_counter()
    tok = load_tokenizer(path)
    model = load_causal_lm(path, dtype="float32", device=inputs.device)
    if keep_layers is not None:  # the student's start: its base depth-pruned as train.keep_layers prunes it
        from distill.train.run import depth_prune

        depth_prune(model, keep_layers)
    compute = resolve_dtype(cfg.dtype, inputs.device)
    autocast = torch.bfloat16 if compute == "bfloat16" else None
    out: dict[str, Any] = {"model": str(path) + (f" pruned to {keep_layers} layers" if keep_layers else ""),
                           "layers": getattr(model.config, "num_hidden_layers", None),
                           "parameters": count_parameters(model)["total"], "device": inputs.device, "dtype": compute}
    out["perplexity"] = _perplexity_block(model, tok, cfg, inputs, compute)
    out["validation"] = _validation_block(model, tok, cfg, inputs.split, autocast)
    out["accuracy"] = _task_accuracy(model, tok, cfg, inputs, autocast)
    if probe_prompts:
        from distill.probes.run import probe_model

        t = time.perf_counter()
        out["probes"], out["probe_records"] = probe_model(model, tok, probe_prompts, cfg.probes, cfg.batch_size, autocast)
        out["probes"]["seconds"] = round(time.perf_counter() - t, 2)
    if lm_tasks is not None:  # distill.lmeval.run.PreparedTasks
        from distill.lmeval.run import run_tasks

        out["lm_eval"] = run_tasks(model, tok, lm_tasks, cfg.lm_eval, compute)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    acc = out["accuracy"]
    log.info("%s: perplexity %s | val loss %s | top-1 %s | accuracy %s | %.1f s", path, out["perplexity"]["perplexity"],
             out["validation"]["loss"], out["validation"]["top1_agreement"],
             "n/a" if acc["accuracy"] is None else f"{acc['correct']}/{acc['rows']}", out["seconds"])
    return out


def _perplexity_block(model: nn.Module, tok: Any, cfg: EvaluateConfig, inputs: EvalInputs,
                      compute: str) -> dict[str, Any]:
    """``eval.json``'s ``perplexity`` of one model (floats to 4 places), or why there is none."""
    if inputs.text is None:
        return {"perplexity": None, "reason": inputs.text_skip}
    ppl = perplexity(model, tok, inputs.text, cfg.window, cfg.max_windows, compute)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in ppl.items()}


def _validation_block(model: nn.Module, tok: Any, cfg: EvaluateConfig, split: Any,
                      autocast: torch.dtype | None) -> dict[str, Any]:
    """Validation loss (CE on the teacher's tokens), top-1 agreement and KL on the cached top-k."""
    from distill.train.run import eval_rows

    t = time.perf_counter()
    rows, kl_note = encode_validation(tok, split, cfg.max_length)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ev = eval_rows(model, rows, pad, cfg.batch_size, autocast, None)  # kd=None: the loss is CE on the teacher's tokens
    block = {"rows": len(rows), "loss": None if ev["loss"] is None else round(ev["loss"], 4),
             **(ev["agreement"] or {"top1_agreement": None, "kl_topk": None, "tokens": 0}),
             "kl_note": kl_note, "seconds": round(time.perf_counter() - t, 2)}
    if not rows:
        block["reason"] = kl_note
    return block


def _task_accuracy(model: nn.Module, tok: Any, cfg: EvaluateConfig, inputs: EvalInputs,
                   autocast: torch.dtype | None) -> dict[str, Any]:
    """Greedy answers to the task rows' prompts, graded (:func:`distill.eval.grading.score_answers`), or why not."""
    task_rows = inputs.task_rows
    if not task_rows:
        return {"accuracy": None, "reason": "evaluate.max_examples is 0" if cfg.max_examples == 0 else
                "no validation row has a gold answer (column 'gold') and an assistant turn"}
    t = time.perf_counter()
    outputs, truncated = generate_greedy(model, tok, [r["messages"][:-1] for r in task_rows], cfg.max_new_tokens,
                                         cfg.batch_size, autocast, [r.get("style") != "cot" for r in task_rows])
    return score_answers(outputs, task_rows, inputs.extraction, inputs.structured_cot) | {
        "truncated": truncated, "max_new_tokens": cfg.max_new_tokens, "seconds": round(time.perf_counter() - t, 2)}


def encode_validation(tokenizer: Any, split: Any, max_length: int) -> tuple[list, str | None]:
    """The validation split as :func:`distill.train.run.train_student` encodes it: on the teacher's own token ids
    with its cached top-k where the split has them (so KL is measurable), else on the chat text.
    Returns (rows, why there is no KL — None when there is)."""
    from distill.logprobs import is_packed
    from distill.train.run import check_same_tokenizer, tokenize_row, tokenize_row_kd

    cols = split.column_names
    if split.num_rows == 0 or "messages" not in cols:
        return [], "the validation split is empty" if split.num_rows == 0 else "the validation split has no messages"
    msgs = split["messages"]
    why = "the dataset has no cached teacher top-k log-probs (generate.sampling.top_logprobs)"
    if "teacher_token_ids" in cols and "teacher_logprobs" in cols:
        ids, lps = split["teacher_token_ids"], split["teacher_logprobs"]
        packed = [json.loads(lp) for lp in lps[:8] if lp is not None]
        if any(x is None for x in ids) or any(x is None for x in lps):
            why = "some validation rows lack the teacher's token ids or top-k log-probs"
        elif not all(is_packed(p) for p in packed):
            why = "the teacher's log-probs name tokens as strings (an OpenAI-compatible endpoint), not ids"
        else:
            try:
                check_same_tokenizer(tokenizer, ids, [m[-1]["content"] for m in msgs])
            except ConfigError:
                why = "the model's tokenizer does not match the teacher's"
            else:
                k = max(int(p["k"]) for p in packed) or 1
                rows = (tokenize_row_kd(tokenizer, m, t, lp, max_length, k) for m, t, lp in zip(msgs, ids, lps))
                return [r for r in rows if r], None
    return [r for r in (tokenize_row(tokenizer, m, max_length) for m in msgs) if r], why
