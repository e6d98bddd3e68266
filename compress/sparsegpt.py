"""SparseGPT: one-shot pruning with an OBS weight update, per linear layer.

Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot"
(arXiv 2301.00774). For a layer ``W`` [out, in] with inputs ``X`` the goal is a sparse ``W_p`` minimising
``||W X - W_p X||^2``; its Hessian is ``H = 2 X X^T / n`` (:meth:`compress.calibrate.InputStats.hessian`).
The algorithm (paper Alg. 1, and its reference code):

1. dampen ``H += damp * mean(diag H) * I``; columns never seen (``H_jj = 0``, "dead") get ``H_jj = 1``
   and ``W[:, j] = 0``;
2. ``U`` = upper Cholesky factor of ``H^-1``; row ``j`` of ``U`` is the (scaled) OBS update direction for
   column ``j`` after columns ``< j`` have been fixed (the "Hessian sequence" trick, Sec. 3.2);
3. walk the columns left to right in blocks of ``block_size``. At the start of a block choose its mask
   *adaptively* from the OBS error ``w^2 / U_jj^2`` of the current (already updated) weights (Sec. 3.3):
   the lowest-error ``sparsity`` fraction of the block, jointly over all rows. For N:M choose, every ``m``
   columns, the ``m - n`` lowest-error weights of each row in that group (Sec. 3.4);
4. for each column zero the masked weights and spread the error ``(w - q) / U_jj`` over the remaining
   columns of the block with row ``j`` of ``U``; after the block, apply the accumulated errors to all
   later columns in one matmul ("lazy batch updates", as in GPTQ).

The per-block mask counts are cumulative roundings of ``sparsity * out * in`` so the layer ends with
exactly ``round(sparsity * numel)`` zeros (the reference's ``<=`` threshold is off by one or more on ties).

Written by hand: the algorithm is ~60 lines of torch, and the packaged versions (llm-compressor, the
authors' repo) come with their own model-loading and session machinery.

Run: ``python -c "from compress.sparsegpt import sparsegpt_model; ..."`` — normally via ``eakd compress``.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from compress.calibrate import InputStats, run_sequential
from compress.hessian import inverse_cholesky_, upper_rows
from compress.prune import block_progress, block_sparsities, resolve_sparsity, sparsity_report

log = logging.getLogger(__name__)


@torch.no_grad()
def sparsegpt_prune_weight(w: Tensor, H: Tensor, sparsity: float, nm: tuple[int, int] | None = None,
                           damp: float = 0.01, block_size: int = 128, overwrite_h: bool = False) -> tuple[Tensor, dict]:
    """Prune ``w`` [out, in] given the layer Hessian ``H`` [in, in]; returns ``(w_pruned, stats)``.

    ``w_pruned`` has ``w``'s dtype and device and, unstructured, exactly ``round(sparsity * numel)``
    zeros (dead columns are zero already and are normally among them); with ``nm=(n, m)`` at most ``n``
    nonzeros in every group of ``m`` consecutive inputs of a row.
    ``stats``: ``{"sparsity" (realized), "obs_loss" (sum of the OBS errors w^2/U_jj^2 / 2), "dead" (unseen
    inputs), "target_zeros"}``.
    ``damp`` is the fraction of ``mean(diag H)`` added to the diagonal; ``block_size`` the number of
    columns per lazy-update block (and per adaptive-mask choice). ``overwrite_h``: work inside a float32 ``H``
    (garbage afterwards) instead of a copy, as :func:`sparsegpt_block` does with the Hessian it took
    (:mod:`compress.hessian`: one ``[in, in]`` matrix in all).
    """
    sparsity = resolve_sparsity(sparsity, nm)
    if w.dim() != 2 or H.shape != (w.shape[1], w.shape[1]):
        raise ValueError(f"sparsegpt: need w [out, in] and H [in, in], got {tuple(w.shape)} and {tuple(H.shape)}")
    if damp <= 0 or block_size < 1:
        raise ValueError(f"sparsegpt: damp must be > 0 and block_size >= 1, got {damp}, {block_size}")
    rows, cols = w.shape
    if nm is not None:
        n_keep, m = int(nm[0]), int(nm[1])
        if cols % m:
            raise ValueError(f"N:M {n_keep}:{m} needs the input size to be a multiple of m={m}, got {cols}")
        if block_size % m:
            block_size = max(m, block_size // m * m)  # an N:M group must not straddle two blocks
    W = w.detach().float().clone()
    H = H.detach().to(W.device, torch.float32, copy=not overwrite_h)
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    U, _, _ = inverse_cholesky_(H, damp, tries=6, method="sparsegpt")  # U is H on CPU
    obs_loss = torch.zeros(rows, device=W.device)
    total_target = int(round(sparsity * rows * cols))

    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        u_rows = upper_rows(U, i1, i2)  # [b, cols - i1]: U's lower triangle is not zero (compress.hessian)
        U1 = u_rows[:, : i2 - i1]
        d = torch.diagonal(U1)
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        prune1 = torch.zeros_like(W1, dtype=torch.bool)  # True = set to zero
        if nm is None:
            # cumulative rounding, so the blocks' counts add up to exactly round(sparsity * numel)
            k = int(round(sparsity * rows * i2)) - int(round(sparsity * rows * i1))
            if k > 0:
                err = (W1 ** 2 / d[None, :] ** 2).flatten()
                prune1.view(-1)[torch.topk(err, k, largest=False, sorted=False).indices] = True
        for i in range(i2 - i1):
            if nm is not None and i % m == 0:
                err = W1[:, i:i + m] ** 2 / d[None, i:i + m] ** 2
                drop = torch.topk(err, m - n_keep, dim=1, largest=False, sorted=False).indices
                prune1[:, i:i + m].scatter_(1, drop, True)
            col = W1[:, i]
            q = torch.where(prune1[:, i], torch.zeros_like(col), col)
            Q1[:, i] = q
            e = (col - q) / d[i]
            obs_loss += e ** 2 / 2
            W1[:, i:] -= e[:, None] * U1[i, i:][None, :]
            Err1[:, i] = e
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ u_rows[:, i2 - i1:]

    out = W.to(dtype=w.dtype)
    zeros = int((out == 0).sum())
    stats = {"sparsity": zeros / out.numel(), "obs_loss": float(obs_loss.sum()), "dead": int(dead.sum()),
             "target_zeros": total_target if nm is None else rows * cols * (m - n_keep) // m}
    return out, stats


@torch.no_grad()
def sparsegpt_block(block: nn.Module, stats: dict[str, InputStats], sparsity: float,
                    nm: tuple[int, int] | None = None, damp: float = 0.01,
                    block_size: int = 128) -> list[tuple[nn.Linear, float]]:
    """SparseGPT-prune the linears of one decoder ``block`` named in ``stats`` in place; returns ``[(linear, OBS
    loss)]`` (the per-block step of :func:`sparsegpt_model` and :mod:`compress.streamed`)."""
    out = []
    for name, s in stats.items():
        lin = block.get_submodule(name)
        new, st = sparsegpt_prune_weight(lin.weight, s.take_hessian(), sparsity, nm, damp, block_size,
                                         overwrite_h=True)
        lin.weight.copy_(new)
        out.append((lin, st["obs_loss"]))
        log.debug("sparsegpt: %s | obs loss %.4g | dead %d", name, st["obs_loss"], st["dead"])
    return out


@torch.no_grad()
def sparsegpt_model(model: nn.Module, batches: Tensor, sparsity: float = 0.5, nm: tuple[int, int] | None = None,
                    damp: float = 0.01, block_size: int = 128, batch_size: int = 8, allocation: str = "uniform",
                    owl_m: float = 5.0, owl_lambda: float = 0.08) -> dict:
    """SparseGPT-prune every linear of every decoder block in place, calibrating on ``batches`` [n, T].

    Block ``i`` is calibrated on the outputs of the already-pruned blocks ``< i``; all linears of a block
    see the block's unpruned inputs (the reference's order). Returns the dict of
    :func:`compress.prune.magnitude_model` (``method="sparsegpt"``) plus ``"obs_loss"`` (summed).
    """
    target = resolve_sparsity(sparsity, nm)
    per_block = block_sparsities(model, batches, target, nm, allocation, owl_m, owl_lambda, batch_size)
    pruned: list[nn.Linear] = []
    losses: list[float] = []
    bar = block_progress(model, "sparsegpt")

    def prune_block(i: int, block: nn.Module, stats: dict[str, InputStats]) -> None:
        for lin, loss in sparsegpt_block(block, stats, per_block[i], nm, damp, block_size):
            pruned.append(lin)
            losses.append(loss)
        bar.update(1)

    try:
        run_sequential(model, batches, prune_block, batch_size=batch_size)
    finally:
        bar.close()
    result = sparsity_report("sparsegpt", target, pruned, nm)
    result["obs_loss"] = float(sum(losses))
    return result | {"allocation": allocation, "block_sparsity": per_block}
