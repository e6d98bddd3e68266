"""What a training run writes into the student's folder, and what it refuses to overwrite.

Owns the trained student's folder beside :mod:`distill.train.checkpoint` (which owns the checkpoints inside it):
:func:`refuse_trained` keeps a rerun from overwriting a finished student, :func:`save_merged` writes the weights
(the peft adapter when asked, then the LoRA-merged model in ``train.save_dtype``) and the tokenizer,
:func:`training_mode` names the loss for ``metrics.json`` and the README, :func:`loss_ends` and
:func:`student_readme` are the figures and text the README shows. :func:`distill.train.loop.run_training` calls
them and publishes the folder atomically; the Hub card comes later (:mod:`distill.train.card`).

May import: torch, :mod:`distill.config` and the train config; never :mod:`distill.train.loop` (which calls it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from distill.config import ConfigError
from distill.train.config import KDConfig, TrainConfig


def refuse_trained(out_dir: str | Path) -> None:
    """Fail fast when ``out_dir`` already holds a trained student (a rerun never overwrites one)."""
    out = Path(out_dir)
    if (out / "metrics.json").exists():
        raise ConfigError(f"{out} already holds a trained student; remove it or choose another output folder")


def training_mode(kd: KDConfig, xtok: str | None) -> tuple[str, str]:
    """``(the mode id metrics.json records, the sentence the student's README opens with)`` for the loss used;
    ``xtok`` is the cross-tokenizer loss when the run crossed tokenizers, else None."""
    if not kd.enabled:
        return "sft_sequence_kd", "Sequence-level KD (SFT on teacher outputs)"
    if kd.served():
        return (f"logit_kd_served_{kd.method}", f"Online logit KD ({kd.method}, top-{kd.served_top_k} + tail) from "
                f"a served teacher (vLLM prompt_logprobs) on the {'student-sampled and ' if kd.on_policy else ''}teacher outputs")
    if kd.teacher:
        return (f"logit_kd_online_{kd.method}",
                f"Online logit KD ({kd.method}, full vocabulary) from teacher `{kd.teacher}` on the teacher outputs")
    if xtok:
        return ("logit_kd_xtok_uld" if xtok == "uld" else f"logit_kd_xtok_aligned_{kd.method}",
                f"Cross-tokenizer offline KD ({xtok}) on the cached byte-level teacher top-k")
    return f"logit_kd_topk_{kd.method}", f"Offline logit KD ({kd.method}) on the cached teacher top-k"


def save_merged(cfg: TrainConfig, model, tok, tmp: Path):
    """Write the trained student into the fresh folder ``tmp``: the peft adapter first when asked
    (``train.lora.save_adapter``), then the LoRA-merged model in ``train.save_dtype`` and the tokenizer.
    Returns the merged model (on CPU)."""
    shutil.rmtree(tmp, ignore_errors=True)
    if cfg.lora.enabled:
        if cfg.lora.save_adapter:  # the unmerged peft adapter, before merging folds it into the weights
            model.save_pretrained(tmp / "adapter", safe_serialization=True)
        model = model.merge_and_unload()
    model = model.to("cpu", getattr(torch, cfg.save_dtype))
    model.config.dtype = cfg.save_dtype
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    return model


def loss_ends(history: list[dict]) -> tuple[float, float]:
    """The mean training loss over the first and over the last fifth of the steps."""
    fifth = max(1, len(history) // 5)
    first = sum(h["loss"] for h in history[:fifth]) / len(history[:fifth])
    last = sum(h["loss"] for h in history[-fifth:]) / len(history[-fifth:])
    return first, last


def student_readme(cfg: TrainConfig, ds_path: Path, mode_text: str, metrics: dict, first: float, last: float,
            version: str) -> str:
    """The student folder's short README: how it was trained and what changed (the Hub card comes later,
    :mod:`distill.train.card`)."""
    return (
        f"# eakd student\n\n{mode_text} from `{ds_path.name}`; base `{cfg.student}`"
        f" with {metrics['layers']} layers, LoRA={cfg.lora.enabled} (merged).\n\n"
        f"- steps {metrics['steps']}, tokens {metrics['tokens']}, compute {metrics['autocast']}\n"
        f"- train loss {first:.4f} -> {last:.4f}\n"
        f"- validation loss {metrics['val_loss_before']} -> {metrics['val_loss_after']}\n"
        f"- teacher agreement on validation (top-1, KL on top-k): {json.dumps(metrics['teacher_agreement_before'])} -> "
        f"{json.dumps(metrics['teacher_agreement_after'])}\n- eakd {version}\n")
