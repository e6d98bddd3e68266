"""Calibration data and per-layer activation statistics for the data-aware compression methods.

GPTQ, SparseGPT, Wanda, AWQ, ASVD and SVD-LLM all need, for each ``nn.Linear``, statistics of the
inputs it sees on calibration text: the Gram matrix ``H = sum_t x_t x_t^T`` (GPTQ/SparseGPT Hessian,
SVD-LLM whitening), the sum of squares per input channel (Wanda's ``||X_j||^2``) and the mean absolute
activation per input channel (AWQ, ASVD). This module produces them once, in one readable place. A method that
reads no Gram (Wanda) asks for the per-channel sums alone (``gram=False``): the Gram of one wide linear is
``in^2`` floats (a 1.5B model's ``down_proj``: 8960^2 fp32 = 321 MB), the sums ``in``.

:func:`run_sequential` is the layer-by-layer scheme of GPTQ (Frantar et al. 2023, Sec. 4 "Step 3"):
capture the inputs of decoder block 0 once, then for each block collect its linears' statistics,
let the caller compress the block in place, and re-run the *compressed* block to produce the next
block's inputs — so each block is calibrated on what the compressed model actually feeds it, at the
cost of one pass per block instead of one full forward per block. Written by hand because neither
transformers nor torch offers it, and llm-compressor's version is tied to its own modifiers.

Run: ``python -c "from compress.calibrate import calibration_batches; ..."`` — used by the compress methods.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


def calibration_batches(tokenizer: Any, text: str, n_samples: int = 64, seq_len: int = 512,
                        seed: int = 0) -> Tensor:
    """``n_samples`` random windows of ``seq_len`` token ids from ``text`` -> ``[n_samples, seq_len]`` long.

    Windows start at seeded random offsets (the GPTQ/AWQ convention for WikiText/C4 calibration), so the
    same text, size and seed always give the same batch. Raises ValueError when the text is shorter than
    one window.
    """
    ids = torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long)
    if ids.numel() <= seq_len:
        raise ValueError(f"calibration text has {ids.numel()} tokens, need more than seq_len={seq_len}; "
                         "use a longer text or a smaller calibration seq_len")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len, (n_samples,), generator=gen)
    return torch.stack([ids[s: s + seq_len] for s in starts.tolist()])


def conversation_text(tokenizer: Any, dataset_dir: str | Path) -> str:
    """The training conversations of an eakd dataset (prompt and teacher answer) rendered with the
    tokenizer's chat template, joined: calibration on what the student reads when it does its tasks.

    Task-matched calibration keeps more of a task ability through quantization and pruning than generic
    web text (Williams & Aletras 2024, "On the Impact of Calibration Data in Post-training Quantization and
    Pruning"); ``bench/ea_compress.py`` measures it on the EA probes. Raises ValueError when the dataset has
    no train conversations.
    """
    from datasets import load_from_disk

    train = load_from_disk(str(dataset_dir))["train"]
    if "messages" not in train.column_names or not len(train):
        raise ValueError(f"{dataset_dir}: no train split with a messages column (an eakd dataset has one)")
    return "\n".join(tokenizer.apply_chat_template(list(m), tokenize=False) for m in train["messages"])


@dataclass
class InputStats:
    """Running statistics of one linear layer's inputs ``x`` [*, in]."""

    gram: Tensor | None  # [in, in] fp32, sum_t x_t x_t^T; None when collected with gram=False
    abs_sum: Tensor  # [in] fp32, sum_t |x_t|
    count: int = 0  # number of token vectors seen
    sq_sum: Tensor | None = None  # [in] fp32, sum_t x_t^2 (None: read the Gram's diagonal)

    @property
    def abs_mean(self) -> Tensor:
        """Mean |x| per input channel [in] (AWQ / ASVD activation scale)."""
        return self.abs_sum / max(self.count, 1)

    @property
    def sq_norm(self) -> Tensor:
        """``||X_j||_2^2`` per input channel [in] (Wanda's activation norm, squared)."""
        return self.sq_sum.clone() if self.sq_sum is not None else torch.diagonal(self.gram).clone()

    def _own_gram(self) -> Tensor:
        if self.gram is None:
            raise ValueError("these statistics were collected without the Gram (gram=False); collect with gram=True")
        return self.gram

    def hessian(self) -> Tensor:
        """``2 H / n`` [in, in]: the layer-wise reconstruction Hessian GPTQ/SparseGPT use."""
        return 2.0 * self._own_gram() / max(self.count, 1)

    def take_hessian(self) -> Tensor:
        """:meth:`hessian` (the same values), computed in the Gram's own memory: the statistics give up their Gram
        (None afterwards), so a caller that needs the Hessian alone holds one ``[in, in]`` matrix, not two."""
        h = self._own_gram().mul_(2.0).div_(max(self.count, 1))
        self.gram = None
        return h


@dataclass
class _Collector:
    gram: bool = True  # accumulate each linear's Gram (False: the per-channel sums alone)
    stats: dict[str, InputStats] = field(default_factory=dict)

    def hook(self, name: str) -> Callable:
        def fn(_module: nn.Module, args: tuple, _kwargs: dict | None = None) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float32)
            s = self.stats.get(name)
            if s is None:
                n = x.shape[-1]
                gram = torch.zeros(n, n, device=x.device) if self.gram else None
                s = self.stats[name] = InputStats(gram, torch.zeros(n, device=x.device),
                                                  sq_sum=None if self.gram else torch.zeros(n, device=x.device))
            if s.gram is not None:
                s.gram.addmm_(x.T, x)
            else:
                s.sq_sum.add_(x.square().sum(0))
            s.abs_sum.add_(x.abs().sum(0))
            s.count += x.shape[0]
        return fn


def _hooked(modules: dict[str, nn.Module], collector: _Collector) -> list:
    return [m.register_forward_pre_hook(collector.hook(n)) for n, m in modules.items()]


@torch.no_grad()
def collect_input_stats(model: nn.Module, batches: Tensor, modules: dict[str, nn.Module],
                        batch_size: int = 8, gram: bool = True) -> dict[str, InputStats]:
    """One full forward over ``batches`` [n, T]; returns ``{name: InputStats}`` for each of ``modules``
    (``gram=False``: without the Gram, see :class:`InputStats`)."""
    collector = _Collector(gram)
    forward_with_hooks(model, batches, _hooked(modules, collector), batch_size)
    return collector.stats


def forward_with_hooks(model: nn.Module, batches: Tensor, handles: list, batch_size: int = 8) -> None:
    """One forward over ``batches`` [n, T], ``batch_size`` rows at a time, for what the hook ``handles`` record;
    the hooks are removed afterwards, also when the forward fails."""
    device = next(model.parameters()).device
    try:
        for chunk in batches.split(batch_size):
            model(input_ids=chunk.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a Hugging Face causal LM (``model.model.layers`` for Llama-likes)."""
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(model).__name__} has no model.layers ModuleList; sequential calibration "
                         "supports Llama-style decoder models")
    return layers


class _Stop(Exception):
    pass


@torch.no_grad()
def capture_block_inputs(model: nn.Module, batches: Tensor, batch_size: int = 8) -> list[tuple[Tensor, dict]]:
    """Run the embeddings only and return, per micro-batch, block 0's ``(hidden_states, kwargs)``.

    The kwargs (position embeddings, attention mask, cache position…) are what the model passes every
    block, so replaying them into each block in turn reproduces the model's forward.
    """
    block0 = decoder_blocks(model)[0]
    captured: list[tuple[Tensor, dict]] = []

    def grab(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured.append((hidden, {k: v for k, v in kwargs.items() if k != "hidden_states"}))
        raise _Stop

    handle = block0.register_forward_pre_hook(grab, with_kwargs=True)
    device = next(model.parameters()).device
    try:
        for chunk in batches.split(batch_size):
            try:
                model(input_ids=chunk.to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return captured


def _block_out(out: Any) -> Tensor:
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def block_input_stats(block: nn.Module, states: list[tuple[Tensor, dict]],
                      linear_filter: Callable[[str, nn.Linear], bool] | None = None,
                      gram: bool = True) -> dict[str, InputStats]:
    """Run ``block`` on ``states`` (``[(hidden [b, T, d], kwargs)]``) and return :class:`InputStats` for its
    ``nn.Linear`` children (names relative to the block, in the order they first ran; ``gram=False``: without
    the Gram)."""
    linears = {n: m for n, m in block.named_modules() if isinstance(m, nn.Linear)
               and (linear_filter is None or linear_filter(n, m))}
    collector = _Collector(gram)
    handles = _hooked(linears, collector)
    try:
        for hidden, kwargs in states:
            block(hidden, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return collector.stats


@torch.no_grad()
def block_outputs(block: nn.Module, states: list[tuple[Tensor, dict]]) -> list[tuple[Tensor, dict]]:
    """``states`` run through ``block``: the next block's ``[(hidden, kwargs)]``."""
    return [(_block_out(block(hidden, **kwargs)), kwargs) for hidden, kwargs in states]


@torch.no_grad()
def run_sequential(model: nn.Module, batches: Tensor,
                   compress_block: Callable[[int, nn.Module, dict[str, InputStats]], Any],
                   linear_filter: Callable[[str, nn.Linear], bool] | None = None,
                   batch_size: int = 8, gram: bool = True) -> list[Any]:
    """Calibrate and compress block by block (GPTQ's sequential scheme); returns the callbacks' results.

    For block ``i``: collect :class:`InputStats` for its ``nn.Linear`` children (names relative to the
    block, e.g. ``"mlp.up_proj"``; ``linear_filter(name, module)`` may exclude some), call
    ``compress_block(i, block, stats)`` which modifies the block in place, then re-run the block to get
    block ``i+1``'s inputs. ``gram=False``: the statistics carry no Gram (a method that reads none). (:mod:`compress.streamed` runs the same two steps on one loaded block at a time.)
    """
    states = capture_block_inputs(model, batches, batch_size)
    results = []
    for i, block in enumerate(decoder_blocks(model)):
        results.append(compress_block(i, block, block_input_stats(block, states, linear_filter, gram)))
        states = block_outputs(block, states)
    return results


def iter_block_linears(block: nn.Module, names: Iterable[str]) -> list[tuple[str, nn.Linear]]:
    """``[(name, linear)]`` for ``names`` inside ``block`` (helper for ``compress_block`` callbacks)."""
    return [(n, block.get_submodule(n)) for n in names]
