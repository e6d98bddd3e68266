"""Recovery distillation after structured pruning or factorization: the compressed model learns back
from the model it was cut from.

Minitron (Muralidharan et al. 2024, arXiv 2407.14679) prunes depth/width and then retrains the smaller
model with logit distillation from the unpruned one — far cheaper than training from scratch and better
than plain fine-tuning. Here: forward KL(teacher ‖ student) on every next-token position of the
calibration windows (:func:`distill.train.losses.kd_loss`, the same loss the distill stage uses), AdamW with a
cosine schedule, full fine-tuning of the compressed model in fp32. The teacher is the pre-compression
model already in memory, so nothing is generated or downloaded.

Feature distillation on top (optional, both measured against logit KD alone in
``bench/compress_hints.py``):

* **hints** (FitNets, Romero et al. 2015, arXiv 1412.6550): each student block's output regresses, through a
  learned projection (a per-block ``Linear(H, H)`` initialised to the identity, trained with the student and
  then discarded), onto the output of the teacher block it came from (``layer_map``; for a depth-pruned
  student the kept blocks' original indices); normalised MSE ``||P h_s - h_t||^2 / ||h_t||^2`` per block,
  averaged, weighted by ``hint_weight``;
* **attention maps** (TinyBERT, Jiao et al. 2020, arXiv 1909.10351): MSE between the student's and the mapped
  teacher block's attention probabilities (same heads), weighted by ``attention_weight``; both models run
  eager attention for it (SDPA does not return the maps).

Adversarial distillation on top (optional, measured the same way):

* **discriminator** (as in the GAN-style KD of Wang et al. 2018, arXiv 1709.00513, on hidden states): a small
  MLP ``Discriminator`` reads each position's final hidden state and learns to tell the teacher's (label 1)
  from the student's (label 0) with binary cross-entropy, one AdamW step per training step; the student adds
  ``adversarial_weight`` times the non-saturating generator loss ``BCE(D(h_s), 1)`` to its KD loss, i.e. it
  learns to make its states look like the teacher's. The discriminator is discarded afterwards; its
  accuracy over the last fifth of the steps is reported (0.5 = fooled).

Sparsity-preserving recovery after unstructured or N:M pruning (``magnitude``/``wanda``/``sparsegpt``): the
pruned weights' zero pattern is taken as a mask before training and re-applied after every optimizer step, so
the recovered model has exactly the zeros that were measured and exported (the masked fine-tuning that
follows pruning in SparseGPT/Wanda's own recovery experiments; the mask, not the values, is what pruning
chose).

Run: set ``recover_steps`` on a ``depth``/``width``/``svd``/``asvd``/``svdllm``/``cp``/``tucker`` or a
``magnitude``/``wanda``/``sparsegpt`` step of ``eakd compress`` (``recover_hint_weight``,
``recover_attention_weight`` for the feature terms, ``recover_adversarial_weight``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm import tqdm

from distill.train.losses import kd_loss

log = logging.getLogger(__name__)


def hint_loss(student_hidden: tuple[Tensor, ...], teacher_hidden: tuple[Tensor, ...], layer_map: list[int],
              projections: nn.ModuleList) -> Tensor:
    """FitNets hint term: mean over student blocks ``j`` of ``||P_j h_s[j] - h_t[layer_map[j]]||^2 / ||h_t||^2``.

    ``*_hidden`` are ``output_hidden_states`` tuples (embeddings first, then each block's output [B, T, H])."""
    terms = []
    for j, t in enumerate(layer_map):
        target = teacher_hidden[t + 1].float()
        pred = projections[j](student_hidden[j + 1].float())
        terms.append((pred - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-12))
    return torch.stack(terms).mean()


def attention_loss(student_attn: tuple[Tensor, ...], teacher_attn: tuple[Tensor, ...], layer_map: list[int]) -> Tensor:
    """TinyBERT attention term: mean over student blocks of the MSE between attention probabilities
    [B, heads, T, T] of the student block and its mapped teacher block, scaled by T (a row sums to 1)."""
    terms = []
    for j, t in enumerate(layer_map):
        a, b = student_attn[j].float(), teacher_attn[t].float()
        if a.shape != b.shape:
            raise ValueError(f"attention maps differ in shape: student block {j} {tuple(a.shape)}, teacher block {t} "
                             f"{tuple(b.shape)}; attention transfer needs the same number of heads")
        terms.append((a - b).pow(2).sum(-1).mean() * a.shape[-1])
    return torch.stack(terms).mean()


class Discriminator(nn.Module):
    """Per-position teacher-vs-student classifier: ``h`` [..., H] -> logit [...] (teacher = 1).

    The input is layer-normalised without affine parameters, so the two models' overall scale is not a
    give-away the student could only fix by rescaling."""

    def __init__(self, hidden: int, width: int = 256):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.net = nn.Sequential(nn.Linear(hidden, width), nn.GELU(), nn.Linear(width, 1))

    def forward(self, h: Tensor) -> Tensor:
        return self.net(self.norm(h.float())).squeeze(-1)


def adversarial_terms(disc: nn.Module, student_h: Tensor, teacher_h: Tensor) -> tuple[Tensor, Tensor, float]:
    """``(generator term, discriminator term, discriminator accuracy)`` for hidden states [B, T, H] of both.

    generator: ``BCE(D(h_s), 1)`` (gradient to the student, the non-saturating GAN loss);
    discriminator: ``BCE(D(h_t), 1) + BCE(D(h_s.detach()), 0)`` (gradient to ``disc`` only, halved)."""
    bce = nn.functional.binary_cross_entropy_with_logits
    s_logit = disc(student_h)
    generator = bce(s_logit, torch.ones_like(s_logit))
    t_logit, s_fixed = disc(teacher_h.detach()), disc(student_h.detach())
    discriminator = 0.5 * (bce(t_logit, torch.ones_like(t_logit)) + bce(s_fixed, torch.zeros_like(s_fixed)))
    accuracy = 0.5 * (float((t_logit > 0).float().mean()) + float((s_fixed <= 0).float().mean()))
    return generator, discriminator, accuracy


def zero_masks(model: nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> dict[str, Tensor]:
    """``{parameter name: bool mask of its non-zero entries}`` for every 2-D ``nn.Linear`` weight of ``model`` with
    at least one zero (the layers a pruning step sparsified), except names containing one of ``skip``."""
    masks = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not any(k in name for k in skip):
            mask = module.weight.detach() != 0
            if not bool(mask.all()):
                masks[f"{name}.weight"] = mask
    return masks


def _apply_masks(params: dict[str, nn.Parameter], masks: dict[str, Tensor]) -> None:
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)


def _eager(model: nn.Module) -> str | None:
    """Switch ``model`` to eager attention (returns the previous implementation, to restore)."""
    previous = getattr(model.config, "_attn_implementation", None)
    if previous != "eager":
        model.set_attn_implementation("eager")
    return previous


def recover(student: nn.Module, teacher: nn.Module, batches: Tensor, steps: int, lr: float = 1e-4,
            batch_size: int = 4, seed: int = 0, chunk_size: int | None = 128, hint_weight: float = 0.0,
            attention_weight: float = 0.0, layer_map: list[int] | None = None,
            adversarial_weight: float = 0.0, masks: dict[str, Tensor] | None = None) -> dict:
    """Distil ``teacher`` into ``student`` (in place) for ``steps`` AdamW steps on ``batches`` [n, T] ids.

    Micro-batches of ``batch_size`` windows are drawn in a seeded order (cycling over ``batches``). With
    ``hint_weight``/``attention_weight`` > 0 the feature terms join the forward KL (see the module docstring);
    ``layer_map[j]`` is the teacher block student block ``j`` learns from (default: the same index). With
    ``adversarial_weight`` > 0 a :class:`Discriminator` on the final hidden states trains alongside. ``masks``
    (``{parameter name: bool mask}``, e.g. :func:`zero_masks` after pruning) are re-applied after every step, so
    a masked weight stays exactly zero.
    Returns ``{"steps", "lr", "loss_first", "loss_last", "seconds", "tokens"}`` (losses averaged over the
    first/last fifth of the steps; the KL term alone as ``kd_first``/``kd_last`` when feature terms are on).

    Phases: :func:`_check_settings` and :func:`_resolve_layer_map` (before any change), :func:`_setup` (feature
    modules, optimizers, eager attention where needed), :func:`_train` (the steps, one :func:`_train_step` each),
    :func:`_summarize`.
    """
    _check_settings(steps, lr, hint_weight, attention_weight, adversarial_weight)
    device = next(student.parameters()).device
    layer_map = _resolve_layer_map(student, teacher, layer_map, hint_weight > 0 or attention_weight > 0)
    trainer = _setup(student, teacher, batches, steps, lr, seed, (hint_weight, attention_weight, adversarial_weight),
                     layer_map, masks, device)
    start = time.perf_counter()
    losses, kds, accuracies = _train(trainer, student, teacher, batches, steps, batch_size, chunk_size, device)
    return _summarize(trainer, steps, lr, batch_size * batches.shape[1], time.perf_counter() - start, losses, kds,
                      accuracies)


def _check_settings(steps: int, lr: float, hint_weight: float, attention_weight: float,
                    adversarial_weight: float) -> None:
    """Refuse settings recovery cannot run with, before anything changes."""
    if steps < 1:
        raise ValueError(f"recover_steps must be >= 1, got {steps}")
    if lr <= 0:
        raise ValueError(f"recover_lr must be > 0, got {lr}")
    if hint_weight < 0 or attention_weight < 0 or adversarial_weight < 0:
        raise ValueError("hint_weight, attention_weight and adversarial_weight must be >= 0")


def _resolve_layer_map(student: nn.Module, teacher: nn.Module, layer_map: list[int] | None,
                       features: bool) -> list[int]:
    """``layer_map`` (default: block ``j`` learns from teacher block ``j``), checked when feature terms use it."""
    n_student = student.config.num_hidden_layers
    layer_map = list(range(n_student)) if layer_map is None else list(layer_map)
    if features and (len(layer_map) != n_student or not all(0 <= t < teacher.config.num_hidden_layers for t in layer_map)):
        raise ValueError(f"layer_map must name one teacher block (0..{teacher.config.num_hidden_layers - 1}) for each "
                         f"of the student's {n_student} blocks, got {layer_map} (feature terms after an earlier "
                         "depth step in a chain: put the recovery on the depth step)")
    return layer_map


@dataclass
class _Trainer:
    """What the recovery steps read and update (built by :func:`_setup`)."""

    hint_weight: float
    attention_weight: float
    adversarial_weight: float
    layer_map: list[int]  # the teacher block each student block learns from
    projections: nn.ModuleList  # FitNets projections, one per student block (empty without hints)
    disc: Discriminator | None  # None without the adversarial term
    disc_opt: torch.optim.Optimizer | None
    opt: torch.optim.Optimizer  # AdamW over the student and the projections
    sched: torch.optim.lr_scheduler.LambdaLR  # warmup over the first tenth, then cosine
    params: list[nn.Parameter]  # what ``opt`` updates (clipped together)
    named: dict[str, nn.Parameter]  # the student's parameters by name, for ``masks``
    masks: dict[str, Tensor]
    order: Tensor  # the seeded order the windows are drawn in
    extra: dict[str, bool]  # output_hidden_states / output_attentions, for both forwards
    restore: tuple[str | None, str | None] | None  # (student, teacher) attention implementations to restore


def _setup(student: nn.Module, teacher: nn.Module, batches: Tensor, steps: int, lr: float, seed: int,
           weights: tuple[float, float, float], layer_map: list[int], masks: dict[str, Tensor] | None,
           device: torch.device) -> _Trainer:
    """Build the projections, discriminator, optimizers and window order; switch both models to eager
    attention for the attention term, the teacher to eval and the student to train mode."""
    hint_weight, attention_weight, adversarial_weight = weights
    gen = torch.Generator().manual_seed(seed)
    hidden = student.config.hidden_size
    n_projections = student.config.num_hidden_layers if hint_weight else 0
    projections = nn.ModuleList(nn.Linear(hidden, hidden, bias=False) for _ in range(n_projections))
    for proj in projections:
        nn.init.eye_(proj.weight)
    projections.to(device)
    disc = Discriminator(hidden).to(device) if adversarial_weight else None
    disc_opt = torch.optim.AdamW(disc.parameters(), lr=lr, weight_decay=0.0) if disc is not None else None
    restore = (_eager(student), _eager(teacher)) if attention_weight else None
    teacher.eval()
    student.train()
    named = dict(student.named_parameters())
    masks = masks or {}
    if unknown := sorted(set(masks) - set(named)):
        raise ValueError(f"recover: masks name parameters the student does not have: {unknown[:3]}")
    params = [p for p in student.parameters() if p.requires_grad] + list(projections.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    order = torch.randperm(batches.shape[0], generator=gen)
    extra = {"output_hidden_states": bool(hint_weight or adversarial_weight), "output_attentions": bool(attention_weight)}
    return _Trainer(hint_weight, attention_weight, adversarial_weight, layer_map, projections, disc, disc_opt, opt,
                    sched, params, named, masks, order, extra, restore)


def _train(t: _Trainer, student: nn.Module, teacher: nn.Module, batches: Tensor, steps: int, batch_size: int,
           chunk_size: int | None, device: torch.device) -> tuple[list[float], list[float], list[float]]:
    """Run the ``steps`` steps on micro-batches drawn in ``t.order`` (cycling); returns the per-step total loss,
    KL term and discriminator accuracy. The student ends in eval mode and both models' attention as it was."""
    losses: list[float] = []
    kds: list[float] = []
    accuracies: list[float] = []
    try:
        for step in tqdm(range(steps), desc="recover", unit="step", leave=False):
            idx = t.order[(torch.arange(batch_size) + step * batch_size) % batches.shape[0]]
            loss, kd, accuracy = _train_step(t, student, teacher, batches[idx].to(device), chunk_size)
            kds.append(kd)
            if accuracy is not None:
                accuracies.append(accuracy)
            losses.append(loss)
            if step % 10 == 0 or step == steps - 1:
                log.info("recover step %d | kd %.4f | lr %.2e", step, losses[-1], t.sched.get_last_lr()[0])
    finally:
        student.eval()
        if t.restore is not None:
            for model, previous in zip((student, teacher), t.restore):
                if previous and previous != "eager":
                    model.set_attn_implementation(previous)
    return losses, kds, accuracies


def _train_step(t: _Trainer, student: nn.Module, teacher: nn.Module, ids: Tensor,
                chunk_size: int | None) -> tuple[float, float, float | None]:
    """One AdamW step of the student (masks re-applied) and one of the discriminator on ``ids`` [B, T];
    returns ``(total loss, KL term, discriminator accuracy or None)``."""
    with torch.no_grad():
        t_out = teacher(input_ids=ids, use_cache=False, **t.extra)
    s_out = student(input_ids=ids, use_cache=False, **t.extra)
    loss = kd_loss(s_out.logits[:, :-1], t_out.logits[:, :-1], ids[:, 1:], method="forward_kl",
                   chunk_size=chunk_size)
    kd = float(loss.detach())
    if t.hint_weight:
        loss = loss + t.hint_weight * hint_loss(s_out.hidden_states, t_out.hidden_states, t.layer_map, t.projections)
    if t.attention_weight:
        loss = loss + t.attention_weight * attention_loss(s_out.attentions, t_out.attentions, t.layer_map)
    d_loss = accuracy = None
    if t.disc is not None:
        generator, d_loss, accuracy = adversarial_terms(t.disc, s_out.hidden_states[-1], t_out.hidden_states[-1])
        loss = loss + t.adversarial_weight * generator
    del t_out, s_out
    t.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(t.params, 1.0)
    t.opt.step()
    _apply_masks(t.named, t.masks)
    if t.disc is not None:  # the generator's backward also reached disc: start its step clean
        t.disc_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        t.disc_opt.step()
    t.sched.step()
    return float(loss.detach()), kd, accuracy


def _summarize(t: _Trainer, steps: int, lr: float, tokens_per_step: int, seconds: float, losses: list[float],
               kds: list[float], accuracies: list[float]) -> dict:
    """The stats :func:`recover` returns: averages over the first and last fifth of the steps."""
    fifth = max(1, steps // 5)
    stats = {"steps": steps, "lr": lr, "loss_first": sum(losses[:fifth]) / fifth,
             "loss_last": sum(losses[-fifth:]) / fifth, "seconds": seconds,
             "tokens": steps * tokens_per_step}
    if t.hint_weight > 0 or t.attention_weight > 0 or t.disc is not None:
        stats |= {"hint_weight": t.hint_weight, "attention_weight": t.attention_weight,
                  "kd_first": sum(kds[:fifth]) / fifth, "kd_last": sum(kds[-fifth:]) / fifth}
    if t.masks:
        stats["masked_layers"] = len(t.masks)
    if t.disc is not None:
        stats |= {"adversarial_weight": t.adversarial_weight,
                  "discriminator_accuracy_first": sum(accuracies[:fifth]) / fifth,
                  "discriminator_accuracy_last": sum(accuracies[-fifth:]) / fifth}
    return stats
