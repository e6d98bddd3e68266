"""Structured pruning: remove whole decoder blocks (depth) or MLP channels / attention heads (width).

Unlike :mod:`compress.prune` the result is a genuinely smaller *standard* Hugging Face model: the config
is rewritten (``num_hidden_layers``, ``intermediate_size``, ``num_attention_heads``,
``num_key_value_heads``, explicit ``head_dim``), so ``save_pretrained`` writes a folder that
``AutoModelForCausalLM.from_pretrained`` loads with no custom code.

* **Depth** — a block's importance is the angular distance between its input and output hidden states,
  ``arccos(cos(h_in, h_out)) / pi`` averaged over calibration tokens (Gromov et al. 2024, "The
  Unreasonable Ineffectiveness of the Deeper Layers", with n = 1 block; ShortGPT's "Block Influence"
  ``1 - cos``, Men et al. 2024, orders blocks the same way per token since arccos is monotone). The
  least important blocks are dropped. By default the first and the last block are never dropped: block 0
  turns token embeddings into the residual stream's working basis and the last block writes the
  features the (tied) LM head reads — both papers measure them as by far the most important, and
  dropping either is catastrophic (Men et al. Fig. 3; Gromov et al. keep the final layer).
* **Width** (Minitron: Muralidharan et al. 2024, "Compact Language Models via Pruning and Knowledge
  Distillation", arXiv 2407.14679, activation-based importance from one forward pass) — MLP channel
  ``j``'s importance is the mean over calibration tokens of ``|act(gate(x)) * up(x)|_j`` (or its L2);
  an attention head's is its output norm before ``o_proj``. With grouped-query attention a KV head and
  the query heads that share it go together, so heads are ranked per KV group (sum over its query
  heads). Every layer keeps the same number of channels / groups (HF configs are uniform) but each layer
  keeps its own most important ones, in their original order.

Written by hand: slicing a Llama's linears and rewriting its config is short, and pruning libraries
(torch-pruning, NeMo's Minitron) either produce non-standard modules or need their own runtime.

Run: ``python -c "from compress.structured import depth_prune, width_prune; ..."``.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch
from torch import Tensor, nn

from compress.calibrate import capture_block_inputs, decoder_blocks, forward_with_hooks

log = logging.getLogger(__name__)

Aggregation = Literal["mean", "l2"]


# --- depth --------------------------------------------------------------------------------------------

@torch.no_grad()
def block_importance(model: nn.Module, batches: Tensor, batch_size: int = 8) -> list[float]:
    """Angular distance ``arccos(cos(h_in, h_out)) / pi`` in [0, 1] of each decoder block, mean over tokens.

    ``batches`` [n, T] token ids. 0 means the block leaves its input direction unchanged (it could be
    dropped at no cost to the direction of the residual stream); blocks run on the unpruned model.
    """
    blocks = decoder_blocks(model)
    states = capture_block_inputs(model, batches, batch_size)
    scores = []
    for block in blocks:
        total, count, nxt = 0.0, 0, []
        for hidden, kwargs in states:
            out = block(hidden, **kwargs)
            out = out[0] if isinstance(out, tuple) else out
            cos = nn.functional.cosine_similarity(hidden.double(), out.double(), dim=-1, eps=1e-12)
            total += float(torch.arccos(cos.clamp(-1.0, 1.0)).sum() / math.pi)
            count += cos.numel()
            nxt.append((out, kwargs))
        states = nxt
        scores.append(total / max(count, 1))
    log.info("block importance (angular distance): %s", " ".join(f"{s:.3f}" for s in scores))
    return scores


def drop_layers(model: nn.Module, indices: list[int]) -> nn.Module:
    """Remove decoder blocks ``indices`` in place and fix the config; returns ``model``.

    Renumbers every remaining submodule's ``layer_idx`` (the KV-cache slot each attention writes), sets
    ``config.num_hidden_layers`` and trims ``config.layer_types`` when the config has one, so generation
    with a cache works and ``save_pretrained`` writes a standard, smaller folder.
    """
    blocks = decoder_blocks(model)
    n = len(blocks)
    drop = sorted(set(int(i) for i in indices))
    if len(drop) != len(indices):
        raise ValueError(f"drop_layers: duplicate indices in {indices}")
    if any(i < 0 or i >= n for i in drop):
        raise ValueError(f"drop_layers: indices must be in [0, {n}), got {indices}")
    if len(drop) >= n:
        raise ValueError(f"drop_layers: cannot drop all {n} blocks")
    keep = [i for i in range(n) if i not in set(drop)]
    model.model.layers = nn.ModuleList([blocks[i] for i in keep])
    for new_idx, block in enumerate(model.model.layers):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    cfg = model.config
    cfg.num_hidden_layers = len(keep)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[i] for i in keep]
    log.info("dropped blocks %s of %d; %d remain", drop, n, len(keep))
    return model


@torch.no_grad()
def depth_prune(model: nn.Module, batches: Tensor, fraction: float = 0.25, keep_first: bool = True,
                keep_last: bool = True, batch_size: int = 8) -> dict:
    """Drop the ``round(fraction * n_blocks)`` blocks of lowest angular distance, in place.

    ``keep_first`` / ``keep_last`` exclude block 0 / the last block from the candidates (see the module
    docstring). Returns ``{"importance" (per original block), "dropped", "num_hidden_layers"}``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"depth_prune: fraction must be in [0, 1), got {fraction}")
    n = len(decoder_blocks(model))
    k = int(round(fraction * n))
    candidates = [i for i in range(n) if not (keep_first and i == 0) and not (keep_last and i == n - 1)]
    if k > len(candidates):
        raise ValueError(f"depth_prune: fraction={fraction} drops {k} of {n} blocks but only "
                         f"{len(candidates)} may be dropped (keep_first={keep_first}, keep_last={keep_last})")
    importance = block_importance(model, batches, batch_size)
    dropped = sorted(sorted(candidates, key=lambda i: importance[i])[:k])
    if dropped:
        drop_layers(model, dropped)
    return {"importance": importance, "dropped": dropped, "num_hidden_layers": n - len(dropped)}


# --- width --------------------------------------------------------------------------------------------

def _attn(block: nn.Module) -> nn.Module:
    return block.self_attn


def _head_layout(model: nn.Module) -> tuple[int, int, int]:
    """``(num_attention_heads, num_key_value_heads, head_dim)`` from the config."""
    cfg = model.config
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return heads, kv, head_dim


@torch.no_grad()
def width_importance(model: nn.Module, batches: Tensor, agg: Aggregation = "mean",
                     batch_size: int = 8) -> dict[str, list[Tensor]]:
    """Minitron activation importances from one forward over ``batches`` [n, T].

    Returns ``{"mlp": [Tensor[intermediate] per block], "kv_groups": [Tensor[num_kv_heads] per block]}``:
    MLP channel ``j`` — ``|act(gate(x)) * up(x)|_j`` (the input of ``down_proj``); KV group ``g`` — sum over
    its query heads of the per-token L2 norm of the head's attention output (the input of ``o_proj``).
    ``agg`` aggregates over tokens: ``"mean"`` (mean) or ``"l2"`` (sqrt of the sum of squares).
    """
    if agg not in ("mean", "l2"):
        raise ValueError(f"width_importance: agg must be 'mean' or 'l2', got {agg!r}")
    heads, kv, head_dim = _head_layout(model)
    blocks = decoder_blocks(model)
    mlp_acc = [None] * len(blocks)
    head_acc = [None] * len(blocks)
    count = [0]

    def reduce(x: Tensor) -> Tensor:  # [tokens, k] -> [k]
        return (x.abs() if agg == "mean" else x.square()).sum(0, dtype=torch.float64)

    def mlp_hook(i: int):
        def fn(_m: nn.Module, args: tuple) -> None:
            a = args[0].detach().reshape(-1, args[0].shape[-1])
            mlp_acc[i] = reduce(a) if mlp_acc[i] is None else mlp_acc[i] + reduce(a)
        return fn

    def head_hook(i: int):
        def fn(_m: nn.Module, args: tuple) -> None:
            a = args[0].detach().reshape(-1, heads, head_dim).float().norm(dim=-1)  # [tokens, heads]
            head_acc[i] = reduce(a) if head_acc[i] is None else head_acc[i] + reduce(a)
            if i == 0:
                count[0] += a.shape[0]
        return fn

    handles = []
    for i, block in enumerate(blocks):
        handles.append(block.mlp.down_proj.register_forward_pre_hook(mlp_hook(i)))
        handles.append(_attn(block).o_proj.register_forward_pre_hook(head_hook(i)))
    forward_with_hooks(model, batches, handles, batch_size)
    finish = (lambda s: s / max(count[0], 1)) if agg == "mean" else torch.sqrt
    mlp = [finish(s).float() for s in mlp_acc]
    groups = [finish(s).float().view(kv, heads // kv).sum(-1) for s in head_acc]
    return {"mlp": mlp, "kv_groups": groups}


def _slice_linear(linear: nn.Linear, idx: Tensor, dim: int) -> None:
    """Keep rows (``dim=0``, outputs) or columns (``dim=1``, inputs) ``idx`` of ``linear`` in place."""
    idx = idx.to(linear.weight.device)
    linear.weight = nn.Parameter(linear.weight.detach().index_select(dim, idx).clone(),
                                 requires_grad=linear.weight.requires_grad)
    if dim == 0:
        linear.out_features = idx.numel()
        if linear.bias is not None:
            linear.bias = nn.Parameter(linear.bias.detach()[idx].clone(), requires_grad=linear.bias.requires_grad)
    else:
        linear.in_features = idx.numel()


def _top_sorted(score: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` largest scores, in ascending index order (ties to the lower index)."""
    order = torch.sort(score, descending=True, stable=True).indices[:k]
    return torch.sort(order).values


@torch.no_grad()
def prune_mlp_channels(model: nn.Module, importance: list[Tensor], keep: int) -> None:
    """Keep the ``keep`` most important intermediate channels of every block's MLP, in place.

    ``importance``: one Tensor[intermediate] per block. Slices gate/up rows and down columns and sets
    ``config.intermediate_size = keep``.
    """
    blocks = decoder_blocks(model)
    inter = model.config.intermediate_size
    if not 0 < keep <= inter:
        raise ValueError(f"prune_mlp_channels: keep must be in [1, {inter}], got {keep}")
    if len(importance) != len(blocks):
        raise ValueError(f"prune_mlp_channels: got {len(importance)} importance vectors for {len(blocks)} blocks")
    for block, score in zip(blocks, importance):
        idx = _top_sorted(score, keep)
        _slice_linear(block.mlp.gate_proj, idx, 0)
        _slice_linear(block.mlp.up_proj, idx, 0)
        _slice_linear(block.mlp.down_proj, idx, 1)
        if hasattr(block.mlp, "intermediate_size"):
            block.mlp.intermediate_size = keep
    model.config.intermediate_size = keep


def _check_kv_keep(model: nn.Module, keep: int) -> None:
    heads, kv, _ = _head_layout(model)
    rep, hidden = heads // kv, model.config.hidden_size
    if not 0 < keep <= kv:
        raise ValueError(f"prune_kv_groups: keep must be in [1, {kv}] KV heads, got {keep}")
    if hidden % (keep * rep):
        valid = [g for g in range(1, kv + 1) if hidden % (g * rep) == 0]
        raise ValueError(f"prune_kv_groups: keeping {keep} KV heads gives {keep * rep} attention heads, which "
                         f"does not divide hidden_size={hidden} (transformers rejects such a config); "
                         f"valid KV-head counts: {valid}")


@torch.no_grad()
def prune_kv_groups(model: nn.Module, importance: list[Tensor], keep: int) -> None:
    """Keep the ``keep`` most important KV groups (a KV head + its query heads) per block, in place.

    ``importance``: one Tensor[num_kv_heads] per block. Slices q/k/v rows and o columns; sets
    ``num_key_value_heads = keep``, ``num_attention_heads = keep * heads_per_group`` and ``head_dim``
    explicitly (so it is not recomputed as ``hidden_size / heads`` on reload).
    """
    heads, kv, head_dim = _head_layout(model)
    rep = heads // kv
    cfg = model.config
    _check_kv_keep(model, keep)
    blocks = decoder_blocks(model)
    if len(importance) != len(blocks):
        raise ValueError(f"prune_kv_groups: got {len(importance)} importance vectors for {len(blocks)} blocks")
    ar = torch.arange(head_dim)
    for block, score in zip(blocks, importance):
        groups = _top_sorted(score, keep)
        kv_rows = (groups[:, None] * head_dim + ar).flatten()
        q_heads = (groups[:, None] * rep + torch.arange(rep)).flatten()
        q_rows = (q_heads[:, None] * head_dim + ar).flatten()
        attn = _attn(block)
        _slice_linear(attn.q_proj, q_rows, 0)
        _slice_linear(attn.k_proj, kv_rows, 0)
        _slice_linear(attn.v_proj, kv_rows, 0)
        _slice_linear(attn.o_proj, q_rows, 1)
        for name, value in (("num_heads", keep * rep), ("num_key_value_heads", keep)):
            if hasattr(attn, name):
                setattr(attn, name, value)
    cfg.num_attention_heads = keep * rep
    cfg.num_key_value_heads = keep
    cfg.head_dim = head_dim


def round_to_multiple(x: float, multiple: int, upper: int) -> int:
    """``x`` rounded to the nearest multiple of ``multiple``, clamped to ``[multiple, upper]`` (or ``upper``)."""
    if upper <= multiple:
        return upper
    return min(upper, max(multiple, int(round(x / multiple)) * multiple))


@torch.no_grad()
def width_prune(model: nn.Module, batches: Tensor, mlp_fraction: float = 0.0, kv_head_fraction: float = 0.0,
                multiple_of: int = 32, agg: Aggregation = "mean", batch_size: int = 8) -> dict:
    """Minitron width pruning in place: remove ``mlp_fraction`` of the MLP channels and
    ``kv_head_fraction`` of the KV groups of every block, ranked on ``batches`` [n, T].

    The kept channel count is ``round((1 - mlp_fraction) * intermediate)`` rounded to a multiple of
    ``multiple_of`` (hardware-friendly matmul shapes); KV heads ``round((1 - kv_head_fraction) * kv)``,
    at least 1. Fractions of 0 keep everything in the original order (the model is unchanged).
    Returns ``{"intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim"}`` (before -> after
    as ``[old, new]`` pairs).
    """
    for name, f in (("mlp_fraction", mlp_fraction), ("kv_head_fraction", kv_head_fraction)):
        if not 0.0 <= f < 1.0:
            raise ValueError(f"width_prune: {name} must be in [0, 1), got {f}")
    if multiple_of < 1:
        raise ValueError(f"width_prune: multiple_of must be >= 1, got {multiple_of}")
    cfg = model.config
    heads, kv, head_dim = _head_layout(model)
    inter = cfg.intermediate_size
    keep_inter = inter if mlp_fraction == 0 else round_to_multiple((1 - mlp_fraction) * inter, multiple_of, inter)
    keep_kv = max(1, int(round((1 - kv_head_fraction) * kv)))
    _check_kv_keep(model, keep_kv)  # fail before the forward pass
    importance = width_importance(model, batches, agg, batch_size)
    if keep_inter < inter:
        prune_mlp_channels(model, importance["mlp"], keep_inter)
    if keep_kv < kv:
        prune_kv_groups(model, importance["kv_groups"], keep_kv)
    cfg.head_dim = head_dim
    result = {"intermediate_size": [inter, cfg.intermediate_size], "num_attention_heads": [heads, cfg.num_attention_heads],
              "num_key_value_heads": [kv, cfg.num_key_value_heads], "head_dim": [head_dim, cfg.head_dim]}
    log.info("width pruned: %s", result)
    return result
