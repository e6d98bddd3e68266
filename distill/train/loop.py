"""One training run: sequence-level KD — fine-tune a student on the teacher's outputs (Kim & Rush, 2016).

:func:`distill.train.run.train_student` (the stage's entry point) dispatches here, to :mod:`distill.train.born_again` or to
:mod:`distill.train.launch`; this module holds the data encoding, the losses' plumbing and the loop they all run.

The loss is next-token cross-entropy on the assistant tokens only (the prompt is context, not a
target). LoRA via ``peft`` (or full fine-tuning), bf16 autocast on CPU (this CPU does bf16 matmuls
~4x faster than fp32; the loss itself is computed in fp32).

A compact loop rather than ``transformers.Trainer``: the whole step fits on one screen, and the loss
projects only the assistant positions through the LM head (prompt positions never build
``vocab``-wide logits), which is where most of a step's memory would go on few-shot prompts.

The student starts from ``train.student`` (a model folder or ``bundled``), optionally depth-pruned
to ``keep_layers`` evenly spaced decoder layers, so the distilled model is smaller than its teacher.

Run: ``eakd train flows/configs/demo.yaml`` (through :func:`distill.train.run.train_student`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from pathlib import Path

import torch

from distill.config import ConfigError, dump_config
from distill.io import publish_dir
from distill.models import eos_ids, load_causal_lm, load_tokenizer, resolve_dtype, resolve_model_path
from distill.train.checkpoint import checkpoint_root, latest_checkpoint, load_checkpoint, save_checkpoint
from distill.train.config import KDConfig, TrainConfig
from distill.train.data import (  # noqa: F401  (re-exported: evaluate, xtok_train and the tests import them from here)
    IGNORE,
    check_same_tokenizer,
    render_turns,
    same_tokenizer,
    tokenize_row,
    tokenize_row_kd,
)
from distill.train.encode import encode_splits

log = logging.getLogger(__name__)



def depth_prune(model, keep: int):
    """Keep ``keep`` evenly spaced decoder layers (first and last included); returns the model."""
    layers = model.model.layers
    n = len(layers)
    if keep > n:
        raise ConfigError(f"train.keep_layers={keep} but the student has only {n} layers")
    if keep == n:
        return model
    idx = sorted({round(i * (n - 1) / max(1, keep - 1)) for i in range(keep)}) if keep > 1 else [0]
    model.model.layers = torch.nn.ModuleList([layers[i] for i in idx])
    for new_i, layer in enumerate(model.model.layers):
        if hasattr(layer.self_attn, "layer_idx"):
            layer.self_attn.layer_idx = new_i
    model.config.num_hidden_layers = len(idx)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in idx]
    log.info("student depth-pruned: kept layers %s of %d", idx, n)
    return model


def collate(rows: list[tuple], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        x, y = r[0], r[1]
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    if len(rows[0]) == 4:  # KD rows: top-k per labelled position, concatenated in row-major order
        batch["topk_ids"] = torch.tensor([t for r in rows for t in r[2]], dtype=torch.long)
        batch["topk_logprobs"] = torch.tensor([t for r in rows for t in r[3]], dtype=torch.float32)
    elif len(rows[0]) == 3:  # cross-tokenizer KD rows (distill.train.xtok_train)
        from distill.train.xtok_train import collate_xtok

        batch.update(collate_xtok([r[2] for r in rows]))
    return batch


def load_online_teacher(kd: KDConfig, student_tok, device: str, compute: str):
    """The online-KD teacher in eval mode with no gradients, on ``device``; refuses a teacher whose tokenizer
    differs from the student's (logit KD compares the two distributions token id by token id)."""
    path = resolve_model_path(kd.teacher)
    teacher_tok = load_tokenizer(path)
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        raise ConfigError(f"train.kd.teacher: {path}'s tokenizer differs from the student's ({len(teacher_tok)} vs "
                          f"{len(student_tok)} tokens); logit KD needs a shared vocabulary — use sequence-level KD "
                          "(train.kd.enabled=false) on the teacher's generated answers instead")
    dtype = compute if kd.teacher_dtype == "auto" else kd.teacher_dtype
    teacher = load_causal_lm(path, dtype=dtype, device=device).eval().requires_grad_(False)
    log.info("online KD teacher %s (%s, %s), method %s", path, dtype, device, kd.method)
    return teacher


def labelled_hidden(model, batch: dict[str, torch.Tensor], autocast_dtype: torch.dtype | None):
    """Final hidden states at the labelled positions: ``(hidden [N, H], targets [N], batch on the model's
    device, the base model)`` (a peft model's base, whose ``lm_head`` maps hidden -> logits)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    device = next(base.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    with _autocast(device, autocast_dtype):
        hidden = base.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    return hidden[:, :-1][keep], targets[keep], batch, base


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype else torch.autocast(device.type, enabled=False)


def labelled_logits(model, batch: dict[str, torch.Tensor], autocast_dtype: torch.dtype | None):
    """Logits at the labelled positions only: hidden [B, L, H] -> selected [N, H] -> logits [N, V].

    Returns ``(logits [N, V], targets [N], batch on the model's device)``; prompt positions never build
    vocab-wide logits.
    """
    hidden, targets, batch, base = labelled_hidden(model, batch, autocast_dtype)
    with _autocast(hidden.device, autocast_dtype):
        logits = base.lm_head(hidden)
    return logits, targets, batch


def online_kd_terms(student_head, hidden: torch.Tensor, teacher_head, teacher_hidden: torch.Tensor,
                    targets: torch.Tensor, kd: KDConfig, autocast_dtype: torch.dtype | None):
    """Online KD without vocab-wide tensors for every position: student ``hidden`` [N, H] (with grad), the
    teacher's ``teacher_hidden`` [N, H] (no grad), ``targets`` [N] -> ``(loss, ce, kd_term)`` as
    :func:`mixed_loss_terms` computes them from full logits.

    ``kd.chunk_size`` positions at a time build both models' ``[n, V]`` logits through their LM heads, and,
    under non-reentrant activation checkpointing, rebuild them in backward: the largest tensors are
    ``O(chunk x V)`` instead of the student's and the teacher's ``[N, V]`` fp32 logits plus the student's
    gradient of them (3 x 400 MB for 2,000 positions of a 49k vocabulary), for one more LM-head matmul.
    """
    from torch.utils.checkpoint import checkpoint

    from distill.train.losses import kd_loss

    n = targets.numel()
    step = kd.chunk_size or max(n, 1)

    def chunk(h: torch.Tensor, ht: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with _autocast(h.device, autocast_dtype):
            logits = student_head(h)
            with torch.no_grad():
                t_logits = teacher_head(ht)
        ce = torch.nn.functional.cross_entropy(logits.float(), t, reduction="sum")
        div = kd_loss(logits[None], t_logits[None].to(logits.dtype), t[None], method=kd.method,
                      temperature=kd.temperature, reduction="sum", **kd.method_kw())
        return torch.stack([ce, div])

    total = hidden[:0].float().sum().expand(2)  # 0.0, still attached to the graph when nothing is labelled
    for i in range(0, n, step):
        args = (hidden[i:i + step], teacher_hidden[i:i + step], targets[i:i + step])
        if torch.is_grad_enabled() and hidden.requires_grad:
            total = total + checkpoint(chunk, *args, use_reentrant=False, preserve_rng_state=False)
        else:
            total = total + chunk(*args)
    ce, kd_term = total[0] / max(n, 1), total[1] / max(n, 1)
    return (1 - kd.alpha_ce) * kd_term + kd.alpha_ce * ce, ce, kd_term


@torch.no_grad()
def on_policy_rows(model, rows: list[tuple], tok, max_new_tokens: int, temperature: float,
                   seed: int) -> list[tuple[list[int], list[int]]]:
    """GKD's on-policy data (Agarwal et al. 2024, arXiv 2306.13649): each row's prompt (its tokens before the
    first label) continued by the student itself, sampled at ``temperature`` for up to ``max_new_tokens``
    (up to and including its end-of-turn token); labels on the sampled tokens only, so the online teacher
    scores what the student says. Sampling is seeded by ``seed`` (the step), so a resumed run resamples the same."""
    prompts = [list(ids[: next(i for i, lab in enumerate(labels) if lab != IGNORE)]) for ids, labels, *_ in rows]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eos = eos_ids(model, tok)
    width = max(len(p) for p in prompts)
    device = next(model.parameters()).device
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for j, p in enumerate(prompts):  # left padding: every prompt ends where sampling starts
        ids[j, width - len(p):] = torch.tensor(p)
        mask[j, width - len(p):] = 1
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    try:
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True,
                             temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                             pad_token_id=pad, eos_token_id=eos)
    finally:
        model.train(was_training)
    result = []
    for j, p in enumerate(prompts):
        new = out[j, width:].tolist()
        end = next((k + 1 for k, t in enumerate(new) if t in eos), len(new))  # keep the end token: it is learned too
        result.append((p + new[:end], [IGNORE] * len(p) + new[:end]))
    return result


@torch.no_grad()
def teacher_logits(teacher, batch: dict[str, torch.Tensor], autocast_dtype: torch.dtype | None) -> torch.Tensor:
    """The online teacher's logits [N, V] at the batch's labelled positions (the student's positions)."""
    return labelled_logits(teacher, batch, autocast_dtype)[0]


def mixed_loss_terms(logits: torch.Tensor, targets: torch.Tensor, batch: dict[str, torch.Tensor],
                     kd: KDConfig | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(loss, ce, kd_term): mean CE on ``targets`` [N]; with ``kd`` and the teacher's full logits
    (``teacher_logits`` [N, V], online KD) or its top-k in the batch the loss is
    ``(1 - alpha_ce) * KD + alpha_ce * CE`` and ``kd_term`` is the KD term, else None."""
    ce = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="mean")
    if kd is not None and kd.enabled and "teacher_logits" in batch:
        from distill.train.losses import kd_loss

        kd_term = kd_loss(logits[None], batch["teacher_logits"][None].to(logits.dtype), targets[None], method=kd.method,
                          temperature=kd.temperature, chunk_size=kd.chunk_size, **kd.method_kw())
        return (1 - kd.alpha_ce) * kd_term + kd.alpha_ce * ce, ce, kd_term
    if kd is not None and kd.enabled and "topk_ids" in batch:
        from distill.train.losses import topk_kd_loss

        kd_term = topk_kd_loss(logits[None], batch["topk_ids"][None], batch["topk_logprobs"][None],
                               targets[None], method=kd.method, temperature=kd.temperature)
        return (1 - kd.alpha_ce) * kd_term + kd.alpha_ce * ce, ce, kd_term
    if kd is not None and kd.enabled and "xt_ids" in batch:
        from distill.train.xtok_train import xtok_kd_term

        kd_term = xtok_kd_term(logits, targets, batch, kd)
        return (1 - kd.alpha_ce) * kd_term + kd.alpha_ce * ce, ce, kd_term
    return ce, ce, None


def mixed_loss(logits: torch.Tensor, targets: torch.Tensor, batch: dict[str, torch.Tensor], kd: KDConfig | None) -> torch.Tensor:
    """The training loss of :func:`mixed_loss_terms` alone."""
    return mixed_loss_terms(logits, targets, batch, kd)[0]


def assistant_loss(model, batch: dict[str, torch.Tensor], autocast_dtype: torch.dtype | None,
                   kd: KDConfig | None = None, teacher=None) -> tuple[torch.Tensor, int, dict[str, float | None]]:
    """Mean training loss over labelled positions; (loss, n_tokens, {"ce", "kd"} as floats for the log).
    With an online ``teacher`` both models' logits are built chunk by chunk from their hidden states at the
    labelled positions (see :func:`online_kd_terms`); otherwise as in :func:`mixed_loss_terms`."""
    if teacher is not None and kd is not None and kd.enabled:
        with torch.no_grad():
            t_hidden, _, _, t_base = labelled_hidden(teacher, batch, autocast_dtype)
        hidden, targets, batch, base = labelled_hidden(model, batch, autocast_dtype)
        loss, ce, kd_term = online_kd_terms(base.lm_head, hidden, t_base.lm_head, t_hidden, targets, kd,
                                            autocast_dtype)
    else:
        logits, targets, batch = labelled_logits(model, batch, autocast_dtype)
        loss, ce, kd_term = mixed_loss_terms(logits, targets, batch, kd)
    return loss, int(targets.numel()), {"ce": ce.item(), "kd": None if kd_term is None else kd_term.item()}


@torch.no_grad()
def eval_rows(model, rows: list, pad_id: int, batch_size: int, autocast_dtype, kd: KDConfig | None = None,
              teacher=None) -> dict:
    """One pass over held-out rows: the training loss and the agreement with the teacher's tokens.

    ``{"loss", "agreement": {"top1_agreement" (student argmax == teacher token), "kl_topk" (mean
    KL(teacher || student) over the cached top-k + tail buckets; None without top-k), "kl_full" (mean
    full-vocabulary KL(teacher || student); None without an online ``teacher``), "tokens"}}``;
    both None when there are no rows.
    """
    if not rows:
        return {"loss": None, "agreement": None}
    from distill.train.losses import kd_loss, topk_kd_loss

    was_training = model.training
    model.eval()
    loss_sum, agree, total, kl_sum, kl_full = 0.0, 0, 0, 0.0, 0.0
    for i in range(0, len(rows), batch_size):
        batch = collate(rows[i : i + batch_size], pad_id)
        if teacher is not None:
            batch["teacher_logits"] = teacher_logits(teacher, batch, autocast_dtype)
        logits, targets, batch = labelled_logits(model, batch, autocast_dtype)
        n = int(targets.numel())
        loss_sum += float(mixed_loss(logits, targets, batch, kd)) * n
        agree += int((logits.argmax(-1) == targets).sum())
        total += n
        if "topk_ids" in batch:
            kl_sum += float(topk_kd_loss(logits[None].float(), batch["topk_ids"][None], batch["topk_logprobs"][None],
                                         targets[None], reduction="sum"))
        if "teacher_logits" in batch:
            kl_full += float(kd_loss(logits[None], batch["teacher_logits"][None].to(logits.dtype), targets[None],
                                     reduction="sum", chunk_size=256))
    model.train(was_training)
    has_topk = len(rows[0]) == 4
    return {"loss": loss_sum / max(1, total),
            "agreement": {"top1_agreement": round(agree / max(1, total), 4),
                          "kl_topk": round(kl_sum / max(1, total), 4) if has_topk else None,
                          "kl_full": round(kl_full / max(1, total), 4) if teacher is not None else None, "tokens": total}}


def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random, group: int = 8) -> list[list[int]]:
    """One epoch of batches: shuffle, sort within groups of ``group`` batches by length, shuffle the batches.

    Batches then hold sequences of similar length, so little compute goes to padding (ICL prompts are
    several times longer than instruction prompts); the order stays random across the epoch.
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = batch_size * group
    batches = []
    for i in range(0, len(order), span):
        chunk = sorted(order[i : i + span], key=lambda j: lengths[j])
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def _lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _join_process_group(device: str) -> tuple[int, int, str]:
    """(rank, world size, this process's device). One process: (0, 1, device). Under a launcher that set
    ``WORLD_SIZE`` > 1 (``accelerate launch``, ``torchrun``): join the process group — NCCL with the
    GPU ``LOCAL_RANK`` on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    import torch.distributed as dist

    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def _all_reduce_grads(params: list[torch.nn.Parameter], bucket: int = 1 << 24) -> None:
    """Sum every rank's gradients in place (flattened into buckets of ``bucket`` elements, few calls)."""
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    start = 0
    while start < len(grads):
        end, size = start, 0
        while end < len(grads) and (end == start or size + grads[end].numel() <= bucket):
            size += grads[end].numel()
            end += 1
        flat = torch.cat([g.reshape(-1) for g in grads[start:end]])
        dist.all_reduce(flat)
        offset = 0
        for g in grads[start:end]:
            g.copy_(flat[offset: offset + g.numel()].view_as(g))
            offset += g.numel()
        start = end


def refuse_trained(out_dir: str | Path) -> None:
    """Fail fast when ``out_dir`` already holds a trained student (a rerun never overwrites one)."""
    out = Path(out_dir)
    if (out / "metrics.json").exists():
        raise ConfigError(f"{out} already holds a trained student; remove it or choose another output folder")


def check_inputs(cfg: TrainConfig, dataset_dir: str | Path, out_dir: str | Path) -> None:
    """What a run refuses before loading anything: a trained output folder, a folder that is no eakd dataset,
    on-policy KD across processes."""
    refuse_trained(out_dir)
    ds_path = Path(dataset_dir)
    if not (ds_path / "dataset_dict.json").exists():
        raise ConfigError(f"{ds_path} is not an eakd dataset (no dataset_dict.json); run `eakd generate` first")
    if cfg.processes > 1 and cfg.kd.enabled and cfg.kd.on_policy:
        raise ConfigError("train.kd.on_policy with train.processes > 1 is not supported yet (each process would have "
                          "to sample every micro-batch to weight the step); train on-policy in one process")


def training_mode(kd: KDConfig, xtok: str | None) -> tuple[str, str]:
    """``(the mode id metrics.json records, the sentence the student's README opens with)`` for the loss used;
    ``xtok`` is the cross-tokenizer loss when the run crossed tokenizers, else None."""
    if not kd.enabled:
        return "sft_sequence_kd", "Sequence-level KD (SFT on teacher outputs)"
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


def run_training(cfg: TrainConfig, dataset_dir: str | Path, out_dir: str | Path) -> Path:
    """One training run of the student on ``dataset_dir``'s train split (this process, or this rank under
    ``accelerate launch``); saves a merged safetensors model at ``out_dir`` and returns it.

    :func:`distill.train.run.train_student` is the entry point: it runs this directly, per Born-Again generation
    (:mod:`distill.train.born_again`) or in every launched process (:mod:`distill.train.launch`).
    """
    from datasets import load_from_disk

    from distill.provenance import code_version

    check_inputs(cfg, dataset_dir, out_dir)
    out, ds_path = Path(out_dir), Path(dataset_dir)
    dd = load_from_disk(str(ds_path))
    model_path = resolve_model_path(cfg.student)
    tok = load_tokenizer(model_path)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    train_rows, val_rows, xtok_stats = encode_splits(cfg, dd, ds_path, tok, model_path)
    if not train_rows:
        raise ConfigError(f"{ds_path}: the train split has no usable rows (see its stats.json for what was removed)")

    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=cpu or auto")
    rank, world, device = _join_process_group(device)
    torch.manual_seed(cfg.seed)  # the same on every rank: identical initial adapters
    model = load_causal_lm(model_path, dtype="float32", device=device)
    if cfg.keep_layers:
        model = depth_prune(model, cfg.keep_layers)
    if cfg.lora.enabled:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        model = get_peft_model(model, PeftLoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM"))
    teacher = load_online_teacher(cfg.kd, tok, device, resolve_dtype(cfg.dtype, device.split(":")[0])) \
        if cfg.kd.enabled and cfg.kd.teacher is not None else None
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    compute = resolve_dtype(cfg.dtype, device.split(":")[0])
    autocast_dtype = torch.bfloat16 if compute == "bfloat16" else None

    steps_per_epoch = max(1, math.ceil(len(train_rows) / cfg.batch_size / cfg.grad_accum / world))
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
    warmup = max(1, int(cfg.warmup_ratio * total_steps))
    log.info("training on %s%s: %d rows (%d validation), %d steps, %d trainable params, compute %s",
             device, f" x {world} processes" if world > 1 else "", len(train_rows), len(val_rows), total_steps,
             n_trainable, compute)

    rng = random.Random(cfg.seed)
    lengths = [len(r[0]) for r in train_rows]
    queue: list[list[int]] = []
    history: list[dict] = []
    ckpt_root = checkpoint_root(out)
    fingerprint = hashlib.sha256(json.dumps([cfg.model_dump(mode="json", exclude={"log_every", "save_every"}),
                                             str(ds_path.resolve()), lengths, world]).encode()).hexdigest()
    start_step = 0
    latest = latest_checkpoint(ckpt_root)
    if latest is not None:
        meta = load_checkpoint(latest, model, opt, rng, fingerprint)
        start_step, queue, history, before = meta["step"], meta["queue"], meta["history"], meta["before"]
        log.info("resuming from %s (step %d of %d)", latest, start_step, total_steps)
    elif rank == 0:  # the others wait for it at the first gradient all-reduce
        ev = eval_rows(model, val_rows, pad_id, cfg.batch_size, autocast_dtype, cfg.kd, teacher)
        before = {"val_loss": ev["loss"], "agreement": ev["agreement"]}
    else:
        before = {"val_loss": None, "agreement": None}
    val_before = before["val_loss"]
    t0 = time.perf_counter()
    tokens_seen, on_policy_batches = 0, 0
    window_tokens, window_t = 0, time.perf_counter()
    for step in range(start_step, total_steps):
        lr = _lr_at(step, total_steps, warmup, cfg.lr)
        for g in opt.param_groups:
            g["lr"] = lr
        step_loss, step_ce, step_kd, step_tokens = 0.0, 0.0, None, 0
        micro = []
        for i in range(cfg.grad_accum * world):  # every rank draws the same batches and keeps its share
            if not queue:
                queue = length_grouped_batches(lengths, cfg.batch_size, rng)
            rows = [train_rows[j] for j in queue.pop()]
            if cfg.kd.on_policy and rng.random() < cfg.kd.on_policy:  # the student answers, the teacher scores
                rows = on_policy_rows(model, rows, tok, cfg.kd.on_policy_max_new_tokens, cfg.kd.on_policy_temperature,
                                      seed=cfg.seed * 1_000_003 + step * 1009 + i)
                on_policy_batches += 1
            micro.append(collate(rows, pad_id))
        n_total = sum(int((m["labels"][:, 1:] != IGNORE).sum()) for m in micro)
        for m in micro[rank::world]:
            loss, n, terms = assistant_loss(model, m, autocast_dtype, cfg.kd, teacher)
            # weight by token count so accumulation equals one big batch
            (loss * n / n_total).backward()
            step_loss += loss.item() * n
            step_ce += terms["ce"] * n
            if terms["kd"] is not None:
                step_kd = (step_kd or 0.0) + terms["kd"] * n
            step_tokens += int(m["attention_mask"].sum())
        if world > 1:  # each rank's gradient is its share of the token-weighted sum: add them up
            import torch.distributed as dist

            _all_reduce_grads(params)
            totals = torch.tensor([step_loss, step_ce, step_kd or 0.0, float(step_tokens), float(step_kd is not None)],
                                  dtype=torch.float64, device=device)
            dist.all_reduce(totals)
            step_loss, step_ce, step_tokens = float(totals[0]), float(totals[1]), int(totals[3])
            step_kd = float(totals[2]) if totals[4] > 0 else None
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens_seen += step_tokens
        window_tokens += step_tokens
        history.append({"step": step + 1, "loss": round(step_loss / n_total, 5), "ce": round(step_ce / n_total, 5),
                        "kd": None if step_kd is None else round(step_kd / n_total, 5), "lr": lr, "tokens": step_tokens})
        if (step + 1) % cfg.log_every == 0 or step + 1 == total_steps:
            rate = window_tokens / max(1e-9, time.perf_counter() - window_t)
            kd_part = "" if step_kd is None else f" | kd {step_kd / n_total:.4f}"
            log.info("step %d | loss %.4f | ce %.4f%s | lr %.2e | tok/s %.0f", step + 1, step_loss / n_total,
                     step_ce / n_total, kd_part, lr, rate)
            window_tokens, window_t = 0, time.perf_counter()
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total_steps:
            if rank == 0:  # every rank holds the same weights and optimizer state
                save_checkpoint(ckpt_root, step + 1, model, opt, rng, queue, history, before, fingerprint)
            if world > 1:
                torch.distributed.barrier()
    seconds = time.perf_counter() - t0  # this process's share when resumed
    run_tokens, tokens_seen = tokens_seen, sum(h["tokens"] for h in history)
    if rank != 0:  # rank 0 evaluates and saves; wait for it, so the launcher ends when the student is there
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        return out
    ev = eval_rows(model, val_rows, pad_id, cfg.batch_size, autocast_dtype, cfg.kd, teacher)
    val_after, agreement_after = ev["loss"], ev["agreement"]
    del teacher

    tmp = out.with_name(out.name + ".tmp")
    model = save_merged(cfg, model, tok, tmp)
    xtok = cfg.kd.cross_tokenizer if xtok_stats else None
    mode, mode_text = training_mode(cfg.kd, xtok)
    fifth = max(1, len(history) // 5)  # mean loss over the first and the last fifth of the steps
    first = sum(h["loss"] for h in history[:fifth]) / len(history[:fifth])
    last = sum(h["loss"] for h in history[-fifth:]) / len(history[-fifth:])
    metrics = {
        "mode": mode, "eakd_version": code_version(), "dataset": str(ds_path),
        "base": cfg.student, "layers": model.config.num_hidden_layers, "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": n_trainable, "steps": total_steps, "train_rows": len(train_rows), "val_rows": len(val_rows),
        "tokens": tokens_seen, "seconds": round(seconds, 2), "tokens_per_s": round(run_tokens / max(1e-9, seconds), 1),
        "resumed_from_step": start_step or None, "processes": world,
        "kd_loss": None if not cfg.kd.enabled else "online_full_vocab" if cfg.kd.teacher else
        f"xtok_{xtok}" if xtok else "topk_same_tokenizer", "xtok": xtok_stats or None,
        "on_policy": cfg.kd.on_policy if cfg.kd.enabled else 0.0, "on_policy_batches": on_policy_batches,
        "teacher_agreement_before": before["agreement"], "teacher_agreement_after": agreement_after,
        "autocast": compute, "device": device, "loss_first": round(first, 4), "loss_last": round(last, 4),
        "val_loss_before": None if val_before is None else round(val_before, 4),
        "val_loss_after": None if val_after is None else round(val_after, 4), "history": history,
    }
    dump_config(cfg, tmp / "train_config.yaml")
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (tmp / "README.md").write_text(
        f"# eakd student\n\n{mode_text} from `{ds_path.name}`; base `{cfg.student}`"
        f" with {model.config.num_hidden_layers} layers, LoRA={cfg.lora.enabled} (merged).\n\n"
        f"- steps {total_steps}, tokens {tokens_seen}, compute {compute}\n- train loss {first:.4f} -> {last:.4f}\n"
        f"- validation loss {metrics['val_loss_before']} -> {metrics['val_loss_after']}\n"
        f"- teacher agreement on validation (top-1, KL on top-k): {json.dumps(before['agreement'])} -> "
        f"{json.dumps(agreement_after)}\n- eakd {code_version()}\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    publish_dir(tmp, out)  # readable as the umask says: safetensors writes its files 0600 (distill.io)
    shutil.rmtree(ckpt_root, ignore_errors=True)  # the finished student supersedes its checkpoints
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    log.info("student saved to %s (loss %.4f -> %.4f)", out, first, last)
    return out
