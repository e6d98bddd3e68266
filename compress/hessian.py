"""The inverse-Hessian Cholesky factor GPTQ and SparseGPT read, computed inside the Hessian's own memory.

Both methods need the upper Cholesky factor ``U`` of ``(H + λI)^-1`` for a layer's Hessian ``H`` [in, in]
(``λ = damp * mean(diag H)``, retried with 10x damping while ``H + λI`` is not positive definite). For a
large model's ``down_proj`` ``H`` is the biggest thing a block holds (``intermediate²`` fp32: 321 MB at a
1.5B model's 8,960, 810 MB at an 8B model's 14,336), and the straightforward torch chain (``clone``,
``cholesky``, ``cholesky_inverse``, ``cholesky(upper=True)``) keeps three or four of them alive at once:
even ``torch.linalg.cholesky_ex(h, out=h)`` copies internally (measured: one extra matrix).

:func:`inverse_cholesky_` holds one. On CPU it calls LAPACK through SciPy with ``overwrite_a`` on the
tensor's own buffer (a C-ordered symmetric matrix is its own Fortran-ordered transpose):

LAPACK's "lower" triangle of that Fortran view is ``h``'s upper triangle, so each step reads and writes
``h``'s upper triangle (with the diagonal) and never touches its strict lower one:

1. ``potrf``: the Cholesky factor of ``H + λI``;
2. ``potri``: ``(H + λI)^-1`` from it;
3. ``potrf`` again: ``U`` with ``Uᵀ U = (H + λI)^-1``, upper triangular in ``h``'s own row-major layout.

So afterwards ``h``'s upper triangle is ``U`` and its strict lower triangle still holds ``H``, whose
diagonal is returned: enough to retry with more damping (:func:`_refill_upper`) and to measure output errors
with :func:`quadratic_error`, with no second matrix. ``U``'s strict lower triangle is therefore ``H``, not
zeros: callers read only the upper triangle (both methods do; :func:`upper_rows` zeroes a block's lower part
for a caller that reads it whole). Other devices (CUDA) take torch's chain on a copy. Hand-written because neither torch nor SciPy exposes the in-place chain, and
it is a dozen lines of LAPACK calls.
"""

from __future__ import annotations

import logging
from functools import partial

import torch
from torch import Tensor

log = logging.getLogger(__name__)

_BLOCK = 1024  # rows per step of the blockwise copies (a [1024, in] temporary, not an [in, in] one)


def inverse_cholesky_(h: Tensor, damp: float, tries: int, method: str) -> tuple[Tensor, Tensor, float]:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) I)^-1`` for the symmetric fp32 ``h`` [in, in].

    Returns ``(U, diag, used_damp)``: ``U`` [in, in] (read its upper triangle only), ``diag`` [in] the
    diagonal of ``H`` as given, ``used_damp`` after the retries (x10 each, ``tries`` attempts). On CPU ``h``
    is overwritten and returned as ``U`` (its strict lower triangle keeps ``H``); elsewhere it is left as is.
    Raises ValueError naming ``method`` when ``H`` stays indefinite.
    """
    if h.dim() != 2 or h.shape[0] != h.shape[1] or h.dtype != torch.float32:
        raise ValueError(f"{method}: the Hessian must be a square float32 matrix, got {tuple(h.shape)} {h.dtype}")
    diag = torch.diagonal(h).clone()
    mean_diag = float(diag.mean())
    in_place = h.device.type == "cpu" and h.is_contiguous()
    for attempt in range(tries):
        if attempt:
            log.warning("%s: Hessian not positive definite with damp=%g, retrying with %g", method, damp / 10, damp)
        u = _factor_in_place(h, diag, damp * mean_diag) if in_place else _factor_copy(h, damp * mean_diag)
        if u is not None:
            return u, diag, damp
        damp *= 10
    raise ValueError(f"{method}: Hessian stays singular even with damp={damp / 10:g}; the calibration inputs are "
                     "degenerate (too few tokens, or NaN/inf?) — use more calibration samples or a larger damp")


def _factor_in_place(h: Tensor, diag: Tensor, shift: float) -> Tensor | None:
    """Steps 1-3 of the module docstring on ``h``'s buffer; None (``h`` restored to ``H``) when a factorization
    fails."""
    from scipy.linalg import lapack

    a = h.numpy().T  # the same buffer in Fortran order: LAPACK's lower triangle of ``a`` is h's upper one
    torch.diagonal(h).copy_(diag).add_(shift)
    factor = partial(lapack.spotrf, lower=1, clean=0, overwrite_a=1)  # clean=0: leave h's lower triangle (H) alone
    for step in (factor, partial(lapack.spotri, lower=1, overwrite_c=1), factor):
        out, info = step(a)
        if out.ctypes.data != a.ctypes.data:  # SciPy copies a buffer it cannot use in place: never silently
            raise RuntimeError("LAPACK did not work in place on the Hessian (unexpected memory layout)")
        if info != 0:
            _refill_upper(h, diag)
            return None
    return h


def _factor_copy(h: Tensor, shift: float) -> Tensor | None:
    """torch's chain on a copy of ``h`` (devices SciPy cannot reach); None when a factorization fails."""
    damped = h.clone()
    damped.diagonal().add_(shift)
    lower, info = torch.linalg.cholesky_ex(damped)
    del damped
    if int(info):
        return None
    inverse = torch.cholesky_inverse(lower)
    del lower
    upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
    return None if int(info) else upper


def _refill_upper(h: Tensor, diag: Tensor) -> None:
    """Make ``h`` [in, in] the symmetric ``H`` again from its strict lower triangle and ``diag`` [in]."""
    n = h.shape[0]
    for r0 in range(0, n, _BLOCK):
        r1 = min(r0 + _BLOCK, n)
        lower = h[r0:r1, r0:r1].tril(-1)
        h[r0:r1, r0:r1] = lower + lower.T  # the diagonal block (its diagonal is set below)
        h[r0:r1, r1:] = h[r1:, r0:r1].T  # right of it, from below it: disjoint memory
    torch.diagonal(h).copy_(diag)


def permute_symmetric_(h: Tensor, perm: Tensor) -> None:
    """``h[:] = h[perm][:, perm]`` for ``h`` [in, in] and ``perm`` [in], in place: columns row block by row block,
    then rows along the permutation's cycles with one spare row (no second ``[in, in]`` matrix)."""
    n = h.shape[0]
    for r0 in range(0, n, _BLOCK):
        h[r0:r0 + _BLOCK] = h[r0:r0 + _BLOCK][:, perm]
    order = perm.tolist()
    done = [False] * n
    for start in range(n):
        if done[start] or order[start] == start:
            continue
        spare, i = h[start].clone(), start
        while order[i] != start:  # row i takes row order[i], which is still unmoved
            done[i] = True
            h[i] = h[order[i]]
            i = order[i]
        done[i] = True
        h[i] = spare


def upper_rows(u: Tensor, r0: int, r1: int) -> Tensor:
    """Rows ``r0:r1`` of the upper-triangular ``u`` [in, in] from column ``r0`` on, with the part below the
    diagonal zeroed: ``[r1 - r0, in - r0]`` (``u`` may be :func:`inverse_cholesky_`'s, ``H`` below it)."""
    rows = u[r0:r1, r0:].clone()
    rows[:, : r1 - r0].triu_()
    return rows


def quadratic_error(e: Tensor, h: Tensor, diag: Tensor) -> Tensor:
    """``tr(E H Eᵀ)`` for ``e`` [out, in], from ``H``'s strict lower triangle in ``h`` [in, in] and its ``diag``
    [in] (what :func:`inverse_cholesky_` leaves): ``Σ_i diag_i |E_i|² + 2 Σ_{i>j} H_ij E_i·E_j``, in column
    blocks of ``h`` (no ``[in, in]`` temporary)."""
    e = e.to(torch.float32)
    total = e.new_zeros(())
    n = h.shape[0]
    for c0 in range(0, n, _BLOCK):
        c1 = min(c0 + _BLOCK, n)
        lower = h[c0:, c0:c1].tril(-1)  # H_ij for i > j, columns j in c0:c1: [in - c0, b]
        total = total + (e[:, c0:c1].square().sum(0) * diag[c0:c1]).sum()
        total = total + 2.0 * ((e[:, c0:] @ lower) * e[:, c0:c1]).sum()
    return total
