"""The linear layers compression works on: which ones it may touch, how to find and swap one by name, and
:class:`LowRankLinear`, the factorized layer every low-rank method (SVD, ASVD, SVD-LLM) produces.

Every compression module imports these from here; the package :mod:`compress` re-exports them. Run: ``python -c "from compress.linears import target_linears"``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LowRankLinear(nn.Module):
    """``x [..., in] -> up(down(x)) [..., out]`` with ``down: in -> rank`` and ``up: rank -> out``."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False, dtype=dtype, device=device)
        self.up = nn.Linear(rank, out_features, bias=bias, dtype=dtype, device=device)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.down(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def target_linears(model: nn.Module, skip: tuple[str, ...] = ("lm_head",),
                   include_low_rank: bool = True) -> list[tuple[str, nn.Linear]]:
    """The ``nn.Linear`` layers compression may touch, as ``(qualified name, module)`` in model order.

    Excludes the output embedding (whatever it is called), any module whose last name component is in
    ``skip``, and — when ``include_low_rank`` is False — the ``down``/``up`` factors of a
    :class:`LowRankLinear` (factorizing a factor again makes no sense).
    """
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    low_rank_children: set[int] = set()
    if not include_low_rank:
        for module in model.modules():
            if isinstance(module, LowRankLinear):
                low_rank_children.update((id(module.down), id(module.up)))
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or module is output:
            continue
        if name.rsplit(".", 1)[-1] in skip or id(module) in low_rank_children:
            continue
        out.append((name, module))
    return out


def manifest_linear(model: nn.Module, name: str, kind: str) -> nn.Linear:
    """The ``nn.Linear`` at ``name`` that an artifact's manifest lists as ``kind`` (e.g. "factorized");
    ValueError when the model has no such module or it is not a plain linear."""
    try:
        linear = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"manifest names {kind} module {name!r}, which this model does not have; "
                         "the artifact's config.json and eakd_compression.json disagree") from None
    if not isinstance(linear, nn.Linear):
        raise ValueError(f"manifest names {kind} module {name!r}, but it is a {type(linear).__name__}, not nn.Linear")
    return linear


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Swap the submodule at dotted ``name`` for ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
