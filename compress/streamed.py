"""Streamed compression: memory that grows with one decoder block, not with the model.

The whole-model path (:func:`compress.stage.compress_student` with ``compress.streaming: false``) loads the
model in fp32, runs a method over it (:func:`compress.calibrate.run_sequential` for the data-aware ones) and
saves it. This path does the same work in the same order on one block at a time:

1. a weightless skeleton (:func:`compress.streamed_io.skeleton`), then the tensors outside the decoder
   blocks (embeddings, final norm, head) read from the safetensors shard(s);
2. the calibration windows through the embeddings alone: block 0's inputs
   (:func:`compress.calibrate.capture_block_inputs`);
3. for each block: read its weights, collect its linears' statistics
   (:func:`compress.calibrate.block_input_stats`), apply the method's per-block step (the same functions
   the whole-model methods call: :func:`compress.gptq.gptq_block`, :func:`compress.prune.wanda_block`,
   :func:`compress.sparsegpt.sparsegpt_block`, RTN and magnitude on the block), write the block's
   compressed tensors as a part file, run the compressed block to get the next block's inputs, free it;
4. the tensors outside the blocks are written, and the parts are assembled into ``model.safetensors``
   (:class:`compress.streamed_io.PartWriter`), byte-identical to the whole-model path's.

:func:`measure_streamed` scores perplexity the same way (embeddings, then block by block, then norm and
head per window), so measuring needs no more memory than compressing. Task accuracy, EA probes and
latency generate text and need the whole model: the streamed path leaves them out (None).

Supported: ``rtn_int8``, ``rtn``, ``gptq``, ``magnitude``, ``wanda``, ``sparsegpt`` (uniform allocation, no
recovery). :func:`streaming_plan` says which path runs and why. Run: via ``eakd compress`` with
``compress.streaming: true`` (or ``auto`` on a model too large for memory).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from compress.artifact import compressed_tensors, grouped_entry, quant_entry, read_manifest, safetensors_bytes
from compress.calibrate import block_input_stats, block_outputs, capture_block_inputs, decoder_blocks
from compress.config import CompressConfig, EvalConfig, OwlFields, PruneFields, Step, recover_steps
from compress.gptq import gptq_block
from compress.linears import target_linears
from compress.prune import magnitude_mask, nm_mask, resolve_sparsity, sparsity_summary, wanda_block
from compress.quantize import check_model_quant_args, quantize_model, quantize_model_rtn
from compress.sparsegpt import sparsegpt_block
from compress.streamed_io import PartWriter, WeightReader, load_module, release_module, skeleton, tied_aliases
from compress.streamed_resume import BlockCheckpoints, Resumed
from distill.evaluate import window_ids, window_nll
from distill.models import resolve_dtype

log = logging.getLogger(__name__)

STREAMED = {"rtn_int8", "rtn", "gptq", "magnitude", "wanda", "sparsegpt"}
WHOLE_MODEL_FACTOR = 2.0  # the whole-model path peaks near 2x the fp32 weights (model + the tensors being saved)


def step_blocker(step: Step, last: bool) -> str | None:
    """Why ``step`` cannot run streamed (None when it can)."""
    if step.method not in STREAMED:
        return f"{step.method} is not streamed (only {', '.join(sorted(STREAMED))})"
    if recover_steps(step):
        return "recovery distillation trains the whole model"
    if isinstance(step, OwlFields) and step.allocation == "owl":
        return "owl allocation scores every block of the dense model first"
    if step.method == "rtn_int8" and not last:
        return "steps after rtn_int8 re-quantize its layers over the whole model"
    return None


def model_fp32_bytes(folder: str | Path) -> int:
    """The model's parameters in fp32 bytes (from its config, nothing loaded)."""
    return 4 * sum(p.numel() for p in skeleton(folder).parameters())


def _available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 1 << 62  # no /proc/meminfo: never stream on "auto"


def streaming_plan(cfg: CompressConfig, model_dir: Path, source_manifest: dict[str, Any] | None) -> tuple[bool, str]:
    """``(stream?, why)`` for ``cfg.streaming`` on ``model_dir``; the why goes to the log and ``summary.json``."""
    if cfg.streaming is False:
        return False, "compress.streaming is false"
    blockers = [f"steps[{i}]: {why}" for i, s in enumerate(cfg.steps)
                if (why := step_blocker(s, not cfg.chain or i == len(cfg.steps) - 1))]
    if source_manifest and (source_manifest["quantized"] or source_manifest["factorized"]
                            or source_manifest.get("tensorized")):
        blockers.append("the source is a quantized or factorized artifact")
    if blockers:
        return False, f"whole-model path: {'; '.join(blockers)}"
    if cfg.streaming is True:
        return True, "compress.streaming is true"
    try:
        need = WHOLE_MODEL_FACTOR * model_fp32_bytes(model_dir)
    except (ValueError, OSError) as exc:  # an architecture the skeleton cannot build: the whole model it is
        return False, f"whole-model path: {exc}"
    budget = cfg.memory_budget_gb * 2 ** 30 if cfg.memory_budget_gb else _available_bytes()
    where = "compress.memory_budget_gb" if cfg.memory_budget_gb else "available memory"
    if need > budget:
        return True, f"streaming auto: the whole-model path needs ~{need / 2 ** 30:.1f} GiB, more than the {budget / 2 ** 30:.1f} GiB of {where}"
    return False, f"streaming auto: the whole-model path (~{need / 2 ** 30:.1f} GiB) fits the {budget / 2 ** 30:.1f} GiB of {where}"


def source_configs(model_dir: Path) -> tuple[Any, Any]:
    """``(config, generation config)`` as the whole-model path's loaded model carries them (a plain Hugging Face
    folder's ``generation_config.json`` when it has one), for :func:`compress.artifact.write_folder_files`."""
    from transformers import GenerationConfig

    model = skeleton(model_dir)
    generation = model.generation_config
    if read_manifest(model_dir) is None and (Path(model_dir) / "generation_config.json").is_file():
        generation = GenerationConfig.from_pretrained(model_dir)
    return model.config, generation


@contextlib.contextmanager
def _quiet(*names: str):
    """Silence the per-call INFO lines of whole-model helpers run once per block (one summary line instead)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _block_prefix(model: nn.Module) -> str:
    blocks = decoder_blocks(model)
    return next(n for n, m in model.named_modules() if m is blocks)


def _outside_modules(model: nn.Module, layers: str, tied: dict[str, str]) -> list[str]:
    """Names of the modules that own the tensors outside the decoder blocks (embeddings, norm, untied head)."""
    names = [n for n in model.state_dict() if not n.startswith(layers + ".") and n not in tied]
    return list(dict.fromkeys(n.rsplit(".", 1)[0] for n in names))


def _retie(model: nn.Module, tied: dict[str, str]) -> None:
    for alias, source in tied.items():  # the head is the embedding again (loading or freeing replaced it)
        parent, _, leaf = alias.rpartition(".")
        setattr(model.get_submodule(parent), leaf, model.get_parameter(source))


def _load_outside(model: nn.Module, reader: WeightReader, owners: list[str], tied: dict[str, str]) -> None:
    for owner in owners:
        load_module(model.get_submodule(owner), reader.module_state(model, owner))
    _retie(model, tied)


def _release_outside(model: nn.Module, owners: list[str], tied: dict[str, str]) -> None:
    for owner in owners:
        release_module(model.get_submodule(owner))
    _retie(model, tied)


@dataclass
class _Tally:
    """What a method's summary counts, summed over blocks."""

    layers: int = 0
    zeros: int = 0
    weights: int = 0
    obs_loss: list | None = None

    def add(self, linears: list[nn.Linear]) -> None:
        self.layers += len(linears)
        self.zeros += sum(int((lin.weight == 0).sum()) for lin in linears)
        self.weights += sum(lin.weight.numel() for lin in linears)


@torch.no_grad()
def _compress_block(step: Step, block: nn.Module, prefix: str, stats: dict, manifest: dict[str, Any],
                    codes: dict[str, tuple], tally: _Tally) -> None:
    """One block of ``step``, in place: the per-block step of its whole-model method (same order, same math)."""
    m, nm = step.method, step.nm_tuple() if isinstance(step, PruneFields) else None
    if m in ("rtn", "gptq"):
        if m == "rtn":
            with _quiet("compress.quantize"):
                result = {f"{prefix}.{n}": e for n, e in
                          quantize_model_rtn(block, step.bits, step.group_size, step.symmetric).items()}
        else:
            result = gptq_block(block, stats, prefix, step.bits, step.group_size, step.symmetric, step.damp,
                                step.act_order)
        for name, entry in result.items():
            codes[name] = entry[:3]
            manifest["quantized"][name] = grouped_entry(step.bits, step.group_size, step.symmetric, m,
                                                        step.entropy_coding)
        tally.layers += len(result)
    elif m == "rtn_int8":
        with _quiet("compress.quantize"):
            for name in quantize_model(block):
                manifest["quantized"][f"{prefix}.{name}"] = quant_entry()
    elif m == "magnitude":
        linears = [lin for _n, lin in target_linears(block)]
        for lin in linears:
            mask = (nm_mask(lin.weight.abs(), *nm) if nm is not None
                    else magnitude_mask(lin.weight, step.sparsity))
            lin.weight.mul_(mask.to(lin.weight.dtype))
        tally.add(linears)
    elif m == "wanda":
        tally.add(wanda_block(block, stats, resolve_sparsity(step.sparsity, nm), nm))
    else:  # sparsegpt
        pruned = sparsegpt_block(block, stats, resolve_sparsity(step.sparsity, nm), nm, step.damp)
        tally.add([lin for lin, _loss in pruned])
        tally.obs_loss = (tally.obs_loss or []) + [loss for _lin, loss in pruned]


def _step_stats(step: Step, tally: _Tally, manifest: dict[str, Any], n_blocks: int) -> dict[str, Any]:
    """The stats dict the whole-model method returns (what :func:`compress.methods._run_method` records)."""
    m, nm = step.method, step.nm_tuple() if isinstance(step, PruneFields) else None
    if m in ("rtn", "gptq"):
        log.info("%s: int%d %s, quantized %d linear layers, streamed", m, step.bits,
                 "per-channel" if step.group_size is None else f"g{step.group_size}", tally.layers)
        return {"layers_quantized": tally.layers, "bits": step.bits, "group_size": step.group_size}
    if m == "rtn_int8":
        log.info("rtn_int8: quantized %d linear layers, streamed", len(manifest["quantized"]))
        return {"layers_quantized": len(manifest["quantized"])}
    if m == "magnitude" and nm is None:  # compress.prune.prune_model's dict
        realized = tally.zeros / tally.weights if tally.weights else 0.0
        log.info("magnitude: pruned %d linear layers to sparsity %.4f (target %.4f)", tally.layers, realized,
                 step.sparsity)
        return {"sparsity_target": step.sparsity, "sparsity_realized": realized, "layers": tally.layers,
                "zeros": tally.zeros, "weights": tally.weights}
    target = resolve_sparsity(step.sparsity, nm)
    out = sparsity_summary(m, target, tally.layers, tally.zeros, tally.weights, nm)
    if m == "magnitude":
        return out
    if m == "sparsegpt":
        out["obs_loss"] = float(sum(tally.obs_loss or []))
    return out | {"allocation": step.allocation, "block_sparsity": [target] * n_blocks}


@dataclass
class StreamedStep:
    stats: dict[str, Any]
    tied: dict[str, str]
    seconds: float  # the method and the writing (the whole-model path times the method alone)


def _block_tensors(block: nn.Module, prefix: str, manifest: dict[str, Any], codes: dict[str, tuple],
                   storage: str) -> dict[str, Tensor]:
    """The artifact tensors of one module (:func:`compress.artifact.compressed_tensors` on it), full names."""
    cut = len(prefix) + 1
    sub = {"quantized": {n[cut:]: e for n, e in manifest["quantized"].items() if n.startswith(prefix + ".")}}
    tensors, _ = compressed_tensors(block, sub, storage, {n[cut:]: c for n, c in codes.items()
                                                         if n.startswith(prefix + ".")})
    return {f"{prefix}.{n}": t for n, t in tensors.items()}


@torch.no_grad()
def stream_step(source: Path, out: Path, step: Step, manifest: dict[str, Any], calib: Tensor | None,
                storage: str, batch_size: int = 8, work: BlockCheckpoints | None = None) -> StreamedStep:
    """Apply ``step`` to the model at ``source`` block by block, writing ``out/model.safetensors``.

    Adds the step's quantized layers to ``manifest["quantized"]`` as the whole-model path does; the caller
    records the step and writes the rest of the folder (:func:`compress.artifact.write_folder_files`).
    ``work``: keep the parts there and checkpoint (:mod:`compress.streamed_resume`), taking up a killed run's last
    checkpoint. Raises ValueError (before any block is changed) on arguments the layers cannot take.
    """
    start = time.perf_counter()
    model, reader = skeleton(source), WeightReader(source)
    layers, tied = _block_prefix(model), tied_aliases(model)
    if step.method in ("rtn", "gptq"):
        check_model_quant_args(target_linears(model), step.bits, step.group_size)
    if isinstance(step, PruneFields):
        resolve_sparsity(step.sparsity, step.nm_tuple())
    owners = _outside_modules(model, layers, tied)
    _load_outside(model, reader, owners, tied)
    states = capture_block_inputs(model, calib, batch_size) if step.calibrated else None
    resumed = work.load() if work is not None else None
    writer, tally, blocks = PartWriter(out, work.parts if work is not None else None), _Tally(), decoder_blocks(model)
    if resumed is None:
        for owner in owners:  # written and freed now: a large vocabulary's embeddings need not sit beside a block
            writer.add(_block_tensors(model.get_submodule(owner), owner, manifest, {}, storage))
    else:
        states = _take_up(resumed, writer, manifest, tally, states, len(blocks))
    _release_outside(model, owners, tied)
    for i in range(resumed.block + 1 if resumed else 0, len(blocks)):
        block, prefix = blocks[i], f"{layers}.{i}"
        load_module(block, reader.module_state(model, prefix))
        stats = block_input_stats(block, states, gram=step.reads_gram) if states is not None else {}
        codes: dict[str, tuple] = {}
        _compress_block(step, block, prefix, stats, manifest, codes, tally)
        writer.add(_block_tensors(block, prefix, manifest, codes, storage))
        if states is not None and i + 1 < len(blocks):
            states = block_outputs(block, states)
        release_module(block)
        if work is not None:
            work.maybe_save(i, writer.count, manifest["quantized"], asdict(tally),
                            [h for h, _kw in states] if states is not None else None, last=i + 1 == len(blocks))
        log.debug("streamed %s: block %d/%d written", step.method, i + 1, len(blocks))
    writer.assemble({"format": "pt"})
    if work is not None:
        work.clear()
    return StreamedStep(_step_stats(step, tally, manifest, len(blocks)), tied, time.perf_counter() - start)


def _take_up(resumed: Resumed, writer: PartWriter, manifest: dict[str, Any], tally: _Tally,
             states: list[tuple[Tensor, dict]] | None, n_blocks: int) -> list[tuple[Tensor, dict]] | None:
    """Restore a killed run's checkpoint: its parts, quantized entries and tallies; the next block's hidden states
    with this run's block kwargs (the same for every block). Returns the states."""
    log.info("streamed: resuming after block %d/%d from %s", resumed.block + 1, n_blocks, writer.parts.parent)
    writer.reopen(resumed.parts)
    manifest["quantized"] = resumed.quantized
    for name, value in resumed.tally.items():
        setattr(tally, name, value)
    if states is None:
        return None
    return [(h, kwargs) for h, (_old, kwargs) in zip(resumed.hiddens, states, strict=True)]


@torch.no_grad()
def measure_streamed(folder: Path, tokenizer: Any, text: str, eval_cfg: EvalConfig) -> dict[str, Any]:
    """:func:`compress.eval.measure`'s dict for the model at ``folder``, block by block: parameters, bytes on
    disk and perplexity (the protocol of :func:`distill.evaluate.perplexity`); accuracy, probes and latency
    None (they generate text with the whole model)."""
    dtype = resolve_dtype(eval_cfg.dtype, "cpu")
    ids = torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long)
    windows = window_ids(ids, eval_cfg.window, eval_cfg.max_windows)
    if windows.shape[0] == 0:
        raise ValueError(f"eval text has {ids.numel()} tokens, fewer than one window of {eval_cfg.window}")
    model, reader = skeleton(folder), WeightReader(folder)
    layers, tied = _block_prefix(model), tied_aliases(model)
    owners = _outside_modules(model, layers, tied)
    autocast = (torch.autocast(device_type="cpu", dtype=torch.bfloat16) if dtype == "bfloat16"
                else contextlib.nullcontext())
    start = time.perf_counter()
    _load_outside(model, reader, owners, tied)
    total = nonzero = 0
    for owner in owners:
        for p in model.get_submodule(owner).parameters():
            total, nonzero = total + p.numel(), nonzero + int(torch.count_nonzero(p))
    with autocast:
        states = capture_block_inputs(model, windows, batch_size=1)
        _release_outside(model, owners, tied)  # back for the head at the end: not beside every block
        for i, block in enumerate(decoder_blocks(model)):
            load_module(block, reader.module_state(model, f"{layers}.{i}"))
            for p in block.parameters():
                total, nonzero = total + p.numel(), nonzero + int(torch.count_nonzero(p))
            states = block_outputs(block, states)
            release_module(block)
        _load_outside(model, reader, owners, tied)
        nll = torch.zeros((), dtype=torch.float64)
        head, norm = model.get_output_embeddings(), model.model.norm
        for (hidden, _kw), row in zip(states, windows):
            nll += window_nll(head(norm(hidden))[0], row).double()
    seconds = time.perf_counter() - start
    tokens = windows.shape[0] * (eval_cfg.window - 1)
    mean = float(nll) / tokens
    return {"params_total": total, "params_nonzero": nonzero, "bytes_on_disk": safetensors_bytes(folder),
            "perplexity": math.exp(mean), "nll": mean, "tokens": tokens, "windows": int(windows.shape[0]),
            "dtype": dtype, "seconds": seconds, "tokens_per_s": windows.numel() / seconds if seconds > 0 else float("inf"),
            "accuracy": None, "probes": None, "latency": None}
