"""One training run: sequence-level KD — fine-tune a student on the teacher's outputs (Kim & Rush, 2016).

:func:`distill.train.run.train_student` (the stage's entry point) dispatches here, to :mod:`distill.train.born_again` or to
:mod:`distill.train.launch`; this module holds the run they all share, :func:`run_training`, as named phases:
:func:`_load_rows` -> :func:`_setup_model` -> :func:`_start_or_resume` -> :func:`_train_steps` (one
:func:`_train_step` per optimizer step) -> :func:`eval_rows` -> :func:`_save_student`. What one batch costs lives in
:mod:`distill.train.batch_loss`, which rows a step trains on in :mod:`distill.train.batches`, the multi-process
plumbing in :mod:`distill.train.distributed`, row encoding in :mod:`distill.train.encode`.

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
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from distill.config import ConfigError, dump_config
from distill.io import publish_dir
from distill.models import load_causal_lm, load_tokenizer, resolve_dtype, resolve_model_path
from distill.train.batch_loss import assistant_loss, collate, eval_rows
from distill.train.batches import length_grouped_batches, on_policy_rows
from distill.train.checkpoint import checkpoint_root, latest_checkpoint, load_checkpoint, save_checkpoint
from distill.train.config import KDConfig, TrainConfig
from distill.train.data import IGNORE
from distill.train.distributed import all_reduce_grads, join_process_group
from distill.train.encode import encode_splits
from distill.train.outputs import loss_ends, refuse_trained, save_merged, student_readme, training_mode
from distill.train.served import load_served_teacher, served_rows

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


def _lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


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


@dataclass
class _Rows:
    """The run's data, encoded with the student's tokenizer (:func:`_load_rows`)."""

    ds_path: Path
    model_path: str | Path  # the student's folder, resolved from ``train.student``
    tok: object
    pad_id: int
    train_rows: list
    val_rows: list
    xtok_stats: dict[str, dict]  # cross-tokenizer stats per split; empty when the run shares the teacher's tokenizer


@dataclass
class _Setup:
    """The student being trained and what steps it (:func:`_setup_model`)."""

    device: str
    rank: int
    world: int
    model: object
    teacher: object | None  # the online-KD teacher, else None
    served: object | None  # the served teacher (distill.teacher.scoring.ServedTeacher) scoring each batch, else None
    params: list[torch.nn.Parameter]  # the trainable ones
    n_trainable: int
    opt: torch.optim.Optimizer
    compute: str  # the resolved ``train.dtype``
    autocast_dtype: torch.dtype | None


@dataclass
class _Progress:
    """What the step loop carries from step to step; a checkpoint saves it (:func:`_start_or_resume`)."""

    total_steps: int
    warmup: int
    rng: random.Random  # the batch sampler's: epoch order, on-policy draws
    lengths: list[int]  # the train rows' token counts, for length-grouped batches
    ckpt_root: Path
    fingerprint: str  # of the config and the data; a checkpoint of other inputs is refused
    start_step: int = 0
    queue: list[list[int]] = field(default_factory=list)  # the rest of the current epoch's batches
    history: list[dict] = field(default_factory=list)  # one entry per optimizer step, metrics.json's "history"
    before: dict = field(default_factory=dict)  # validation loss and teacher agreement before training
    tokens_seen: int = 0  # this process's, since it started (not since a resumed run's start)
    on_policy_batches: int = 0  # the whole run's, a resumed one's included
    seconds: float = 0.0  # this process's share of the step loop when resumed


def _load_rows(cfg: TrainConfig, ds_path: Path) -> _Rows:
    """The dataset and the student's tokenizer; encode the train and validation splits
    (:func:`distill.train.encode.encode_splits`), refusing a train split with nothing left to learn from."""
    from datasets import load_from_disk

    dd = load_from_disk(str(ds_path))
    model_path = resolve_model_path(cfg.student)
    tok = load_tokenizer(model_path)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    train_rows, val_rows, xtok_stats = encode_splits(cfg, dd, ds_path, tok, model_path)
    if not train_rows:
        raise ConfigError(f"{ds_path}: the train split has no usable rows (see its stats.json for what was removed)")
    return _Rows(ds_path, model_path, tok, pad_id, train_rows, val_rows, xtok_stats)


def _setup_model(cfg: TrainConfig, data: _Rows) -> _Setup:
    """The device (joining the process group under a launcher), the student (depth-pruned, LoRA-wrapped),
    the online-KD teacher and AdamW over the trainable parameters."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is visible; use train.device=cpu or auto")
    rank, world, device = join_process_group(device)
    served = load_served_teacher(cfg.kd, data.tok) if cfg.kd.enabled and cfg.kd.served() else None
    if served is not None:  # validation rows get the teacher's top-k once, as offline KD's rows carry it
        data.val_rows = served_rows(served, data.val_rows)
    torch.manual_seed(cfg.seed)  # the same on every rank: identical initial adapters
    model = load_causal_lm(data.model_path, dtype="float32", device=device)
    if cfg.keep_layers:
        model = depth_prune(model, cfg.keep_layers)
    if cfg.lora.enabled:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        model = get_peft_model(model, PeftLoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM"))
    teacher = load_online_teacher(cfg.kd, data.tok, device, resolve_dtype(cfg.dtype, device.split(":")[0])) \
        if cfg.kd.enabled and cfg.kd.teacher is not None and served is None else None
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    compute = resolve_dtype(cfg.dtype, device.split(":")[0])
    autocast_dtype = torch.bfloat16 if compute == "bfloat16" else None
    return _Setup(device, rank, world, model, teacher, served, params, n_trainable, opt, compute, autocast_dtype)


def _start_or_resume(cfg: TrainConfig, out: Path, data: _Rows, s: _Setup) -> _Progress:
    """The step count and warmup; then the latest checkpoint's state (exact resume), or, on a fresh
    start, the validation figures before training (rank 0; the others wait for it at the first all-reduce)."""
    steps_per_epoch = max(1, math.ceil(len(data.train_rows) / cfg.batch_size / cfg.grad_accum / s.world))
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
    warmup = max(1, int(cfg.warmup_ratio * total_steps))
    log.info("training on %s%s: %d rows (%d validation), %d steps, %d trainable params, compute %s",
             s.device, f" x {s.world} processes" if s.world > 1 else "", len(data.train_rows), len(data.val_rows),
             total_steps, s.n_trainable, s.compute)

    rng = random.Random(cfg.seed)
    lengths = [len(r[0]) for r in data.train_rows]
    fingerprint = hashlib.sha256(json.dumps([cfg.model_dump(mode="json", exclude={"log_every", "save_every"}),
                                             str(data.ds_path.resolve()), lengths, s.world]).encode()).hexdigest()
    prog = _Progress(total_steps, warmup, rng, lengths, checkpoint_root(out), fingerprint)
    latest = latest_checkpoint(prog.ckpt_root)
    if latest is not None:
        meta = load_checkpoint(latest, s.model, s.opt, rng, fingerprint)
        prog.start_step, prog.queue = meta["step"], meta["queue"]
        prog.history, prog.before = meta["history"], meta["before"]
        prog.on_policy_batches = meta.get("on_policy_batches", 0)  # absent from checkpoints written before it was kept
        log.info("resuming from %s (step %d of %d)", latest, prog.start_step, total_steps)
    elif s.rank == 0:  # the others wait for it at the first gradient all-reduce
        ev = eval_rows(s.model, data.val_rows, data.pad_id, cfg.batch_size, s.autocast_dtype, cfg.kd, s.teacher)
        prog.before = {"val_loss": ev["loss"], "agreement": ev["agreement"]}
    else:
        prog.before = {"val_loss": None, "agreement": None}
    return prog


def _train_steps(cfg: TrainConfig, data: _Rows, s: _Setup, prog: _Progress) -> None:
    """The optimizer steps from ``prog.start_step`` on — warmup + cosine learning rate, one history entry per
    step, a log line every ``train.log_every`` steps and a checkpoint every ``train.save_every``."""
    t0 = time.perf_counter()
    window_tokens, window_t = 0, time.perf_counter()
    for step in range(prog.start_step, prog.total_steps):
        lr = _lr_at(step, prog.total_steps, prog.warmup, cfg.lr)
        for g in s.opt.param_groups:
            g["lr"] = lr
        step_loss, step_ce, step_kd, step_tokens, n_total = _train_step(cfg, data, s, prog, step)
        prog.tokens_seen += step_tokens
        window_tokens += step_tokens
        prog.history.append({"step": step + 1, "loss": round(step_loss / n_total, 5),
                             "ce": round(step_ce / n_total, 5),
                             "kd": None if step_kd is None else round(step_kd / n_total, 5), "lr": lr,
                             "tokens": step_tokens})
        if (step + 1) % cfg.log_every == 0 or step + 1 == prog.total_steps:
            rate = window_tokens / max(1e-9, time.perf_counter() - window_t)
            kd_part = "" if step_kd is None else f" | kd {step_kd / n_total:.4f}"
            log.info("step %d | loss %.4f | ce %.4f%s | lr %.2e | tok/s %.0f", step + 1, step_loss / n_total,
                     step_ce / n_total, kd_part, lr, rate)
            window_tokens, window_t = 0, time.perf_counter()
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < prog.total_steps:
            if s.rank == 0:  # every rank holds the same weights and optimizer state
                save_checkpoint(prog.ckpt_root, step + 1, s.model, s.opt, prog.rng, prog.queue, prog.history,
                                prog.before, prog.fingerprint, prog.on_policy_batches)
            if s.world > 1:
                torch.distributed.barrier()
    prog.seconds = time.perf_counter() - t0  # this process's share when resumed


def _micro_batches(cfg: TrainConfig, data: _Rows, s: _Setup, prog: _Progress,
                   step: int) -> list[dict[str, torch.Tensor]]:
    """The step's ``grad_accum x world`` collated micro-batches, drawn from the epoch's queue (a new epoch when it
    runs out); a ``train.kd.on_policy`` share of them answered by the student itself."""
    micro = []
    for i in range(cfg.grad_accum * s.world):  # every rank draws the same batches and keeps its share
        if not prog.queue:
            prog.queue = length_grouped_batches(prog.lengths, cfg.batch_size, prog.rng)
        rows = [data.train_rows[j] for j in prog.queue.pop()]
        if cfg.kd.on_policy and prog.rng.random() < cfg.kd.on_policy:  # the student answers, the teacher scores
            rows = on_policy_rows(s.model, rows, data.tok, cfg.kd.on_policy_max_new_tokens,
                                  cfg.kd.on_policy_temperature, seed=cfg.seed * 1_000_003 + step * 1009 + i)
            prog.on_policy_batches += 1
        if s.served is not None and i % s.world == s.rank:  # the server scores this rank's share
            rows = served_rows(s.served, rows)
        micro.append(collate(rows, data.pad_id))
    return micro


def _train_step(cfg: TrainConfig, data: _Rows, s: _Setup, prog: _Progress,
                step: int) -> tuple[float, float, float | None, int, int]:
    """One optimizer step: this rank's share of the micro-batches, gradients weighted by token count (so accumulation
    equals one big batch) and summed over ranks, clipped to norm 1. Returns the step's token-weighted sums
    ``(loss, ce, kd or None, tokens attended, labelled tokens)`` over every rank."""
    step_loss, step_ce, step_kd, step_tokens = 0.0, 0.0, None, 0
    micro = _micro_batches(cfg, data, s, prog, step)
    n_total = sum(int((m["labels"][:, 1:] != IGNORE).sum()) for m in micro)
    for m in micro[s.rank::s.world]:
        loss, n, terms = assistant_loss(s.model, m, s.autocast_dtype, cfg.kd, s.teacher)
        # weight by token count so accumulation equals one big batch
        (loss * n / n_total).backward()
        step_loss += loss.item() * n
        step_ce += terms["ce"] * n
        if terms["kd"] is not None:
            step_kd = (step_kd or 0.0) + terms["kd"] * n
        step_tokens += int(m["attention_mask"].sum())
    if s.world > 1:  # each rank's gradient is its share of the token-weighted sum: add them up
        import torch.distributed as dist

        all_reduce_grads(s.params)
        totals = torch.tensor([step_loss, step_ce, step_kd or 0.0, float(step_tokens), float(step_kd is not None)],
                              dtype=torch.float64, device=s.device)
        dist.all_reduce(totals)
        step_loss, step_ce, step_tokens = float(totals[0]), float(totals[1]), int(totals[3])
        step_kd = float(totals[2]) if totals[4] > 0 else None
    torch.nn.utils.clip_grad_norm_(s.params, 1.0)
    s.opt.step()
    s.opt.zero_grad(set_to_none=True)
    return step_loss, step_ce, step_kd, step_tokens, n_total


def _save_student(cfg: TrainConfig, out: Path, data: _Rows, s: _Setup, prog: _Progress, after: dict) -> None:
    """The merged student, its ``train_config.yaml``, ``metrics.json`` and README, published
    atomically at ``out``; the checkpoints go, the finished student supersedes them. ``after`` is
    :func:`eval_rows` on the trained student."""
    from distill.provenance import code_version

    run_tokens, tokens_seen = prog.tokens_seen, sum(h["tokens"] for h in prog.history)
    val_before, val_after, agreement_after = prog.before["val_loss"], after["loss"], after["agreement"]
    tmp = out.with_name(out.name + ".tmp")
    model = save_merged(cfg, s.model, data.tok, tmp)
    xtok = cfg.kd.cross_tokenizer if data.xtok_stats else None
    mode, mode_text = training_mode(cfg.kd, xtok)
    first, last = loss_ends(prog.history)
    metrics = {
        "mode": mode, "eakd_version": code_version(), "dataset": str(data.ds_path),
        "base": cfg.student, "layers": model.config.num_hidden_layers,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": s.n_trainable, "steps": prog.total_steps, "train_rows": len(data.train_rows),
        "val_rows": len(data.val_rows), "tokens": tokens_seen, "seconds": round(prog.seconds, 2),
        "tokens_per_s": round(run_tokens / max(1e-9, prog.seconds), 1),
        "resumed_from_step": prog.start_step or None, "processes": s.world,
        "kd_loss": None if not cfg.kd.enabled else "served_topk" if cfg.kd.served() else "online_full_vocab" if cfg.kd.teacher else
        f"xtok_{xtok}" if xtok else "topk_same_tokenizer", "xtok": data.xtok_stats or None,
        "on_policy": cfg.kd.on_policy if cfg.kd.enabled else 0.0, "on_policy_batches": prog.on_policy_batches,
        "teacher_agreement_before": prog.before["agreement"], "teacher_agreement_after": agreement_after,
        "autocast": s.compute, "device": s.device, "loss_first": round(first, 4), "loss_last": round(last, 4),
        "val_loss_before": None if val_before is None else round(val_before, 4),
        "val_loss_after": None if val_after is None else round(val_after, 4), "history": prog.history,
    }
    dump_config(cfg, tmp / "train_config.yaml")
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (tmp / "README.md").write_text(student_readme(cfg, data.ds_path, mode_text, metrics, first, last, code_version()))
    out.parent.mkdir(parents=True, exist_ok=True)
    publish_dir(tmp, out)  # readable as the umask says: safetensors writes its files 0600 (distill.io)
    shutil.rmtree(prog.ckpt_root, ignore_errors=True)  # the finished student supersedes its checkpoints


def run_training(cfg: TrainConfig, dataset_dir: str | Path, out_dir: str | Path) -> Path:
    """One training run of the student on ``dataset_dir``'s train split (this process, or this rank under
    ``accelerate launch``); saves a merged safetensors model at ``out_dir`` and returns it.

    :func:`distill.train.run.train_student` is the entry point: it runs this directly, per Born-Again generation
    (:mod:`distill.train.born_again`) or in every launched process (:mod:`distill.train.launch`).
    """
    check_inputs(cfg, dataset_dir, out_dir)
    out = Path(out_dir)
    data = _load_rows(cfg, Path(dataset_dir))
    s = _setup_model(cfg, data)
    prog = _start_or_resume(cfg, out, data, s)
    _train_steps(cfg, data, s, prog)
    if s.rank != 0:  # rank 0 evaluates and saves; wait for it, so the launcher ends when the student is there
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        return out
    after = eval_rows(s.model, data.val_rows, data.pad_id, cfg.batch_size, s.autocast_dtype, cfg.kd, s.teacher)
    s.teacher = None  # free the online teacher before the merged copy is made
    if s.served is not None:
        log.info("served teacher: %d scoring requests, %d retries", s.served.requests, s.served.retries)
        s.served.close()
    _save_student(cfg, out, data, s, prog, after)
    if s.world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    first, last = loss_ends(prog.history)
    log.info("student saved to %s (loss %.4f -> %.4f)", out, first, last)
    return out
