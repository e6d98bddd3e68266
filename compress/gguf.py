"""Export a Llama-architecture eakd model as one GGUF file that llama.cpp (``llama-cli``, ``llama-server``,
``llama-cpp-python``) runs with no other file.

:func:`export_gguf` reads a Hugging Face safetensors folder (the bundled SmolLM2, a student from
``eakd train``) or an eakd-compressed artifact (:mod:`compress.artifact`) and writes:

* the ``llama`` architecture metadata (``llama.context_length``, ``embedding_length``, ``block_count``,
  ``feed_forward_length``, ``attention.head_count``/``head_count_kv``/``layer_norm_rms_epsilon``,
  ``rope.freq_base``/``dimension_count``, ``vocab_size``), ``general.file_type`` and the quantization version;
* the tensors under llama.cpp's names (``token_embd``, ``blk.N.attn_q`` ... ``output``; the ``gguf``
  package's ``TensorNameMap``), with the rows of ``attn_q``/``attn_k`` permuted: Hugging Face's Llama
  rotates the two halves of each head (``rotate_half``), llama.cpp's ``llama`` rope rotates adjacent pairs,
  so head rows ``[x0 .. x(h/2-1) | y0 .. y(h/2-1)]`` are stored as ``[x0 y0 x1 y1 ...]`` (:func:`rope_row_order`);
* the tokenizer and chat template (:mod:`compress.gguf_vocab`);
* beside it, ``OUT.json``: per tensor how it was converted, and the totals.

Types (``--type``): ``f16``, ``bf16`` (every matrix in that float type), ``q8_0``, ``q4_0``, ``q4_1`` (every
matrix in 32-weight blocks; with q4_0/q4_1 the embedding/output matrix is q8_0, as llama.cpp's own
``llama-quantize`` keeps that matrix at higher precision: q6_K there, which the ``gguf`` package cannot
write). Norm vectors are always f32. A matrix whose rows are not a multiple of 32 falls back to f16.

An eakd artifact's integer codes go in unchanged where the grids agree (:mod:`compress.gguf_blocks`):
symmetric int4 with group 32, 64, ... or per channel becomes Q4_0 blocks with ``q + 8`` and the f16-rounded
scale (the same for Q8_0 from symmetric int8 codes, and Q4_1 from any int4); the JSON counts the scales that
f16 holds exactly and the largest weight change the rounding caused. Every other quantized layer is
dequantized and re-quantized with llama.cpp's reference rounding, and the JSON says why.

Refused with one line (ConfigError: ``eakd export`` exits 2): another architecture, rope scaling other than
none/linear, biases, factorized (svd/asvd/svdllm) or tensorized (cp/tucker) artifacts, N:M sparse artifacts
(llama.cpp has no N:M kernels: the file would be as large and as slow as the dense model), an unknown type,
an existing output.

Followed: the GGUF spec (ggml ``docs/gguf.md``), the ``gguf`` package (``GGUFWriter``, ``quants``,
``constants``, ``tensor_mapping``) and llama.cpp's ``src/llama-vocab.cpp``/``llama-model.cpp`` for what the
loader reads; ``convert_hf_to_gguf.py`` only as a reference for the rope permutation, not copied.

Run: ``eakd export runs/x/student student-q8_0.gguf --format gguf --type q8_0`` then
``llama-server -m student-q8_0.gguf``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from compress.card import write_gguf_card
from compress.gguf_blocks import CodeGrid, exact_reason, pack_codes, quantize_floats
from compress.gguf_vocab import Vocab, add_vocab, read_vocab
from compress.servable import check_servable
from distill.config import ConfigError

if TYPE_CHECKING:
    import gguf

log = logging.getLogger(__name__)

# --type -> (block type of the matrices, llama.cpp file type name)
TYPES = {"f16": ("F16", "MOSTLY_F16"), "bf16": ("BF16", "MOSTLY_BF16"), "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
         "q4_0": ("Q4_0", "MOSTLY_Q4_0"), "q4_1": ("Q4_1", "MOSTLY_Q4_1")}
F16_MAX = 65504.0


def record_path(out: str | Path) -> Path:
    """The JSON written beside a GGUF file: ``model.gguf`` -> ``model.gguf.json``."""
    return Path(str(out) + ".json")


def rope_row_order(n_rows: int, n_head: int) -> Tensor:
    """Row order [n_rows] taking a Hugging Face q/k projection to llama.cpp's: within each head, the rows of
    the two rotated halves are interleaved (new row ``2i`` is old row ``i``, new ``2i + 1`` is old ``h/2 + i``)."""
    head = n_rows // n_head
    return torch.arange(n_rows).reshape(n_head, 2, head // 2).transpose(1, 2).reshape(-1)


def _check_config(folder: Path, cfg: Any) -> None:
    """ConfigError unless ``cfg`` is a Llama this exporter writes faithfully."""
    arch = getattr(cfg, "model_type", None)
    if arch != "llama":
        raise ConfigError(f"{folder / 'config.json'}: model_type {arch!r}; eakd's GGUF export writes the llama "
                          "architecture only; convert other models with llama.cpp's convert_hf_to_gguf.py")
    rope = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ("default", "linear"):
        raise ConfigError(f"{folder / 'config.json'}: rope_type {kind!r} is not written by eakd's GGUF export "
                          "(default and linear are); convert with llama.cpp's convert_hf_to_gguf.py")
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        raise ConfigError(f"{folder / 'config.json'}: attention_bias/mlp_bias are set; eakd's GGUF export writes "
                          "bias-free Llamas only; convert with llama.cpp's convert_hf_to_gguf.py")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise ConfigError(f"{folder / 'config.json'}: hidden_act {cfg.hidden_act!r}; llama.cpp's llama runs silu")


def read_source(folder: Path) -> tuple[Any, dict[str, Tensor], dict[str, CodeGrid], str]:
    """``(config, float tensors, quantized linears by weight name, kind)`` of a model folder. A QAF layer
    (codes plus adapters) comes back as a float weight: its adapters make it leave the grid."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from compress.artifact import (
        INT8_SUFFIX,
        LORA_A_SUFFIX,
        LORA_B_SUFFIX,
        SCALE_SUFFIX,
        WEIGHTS_NAME,
        ZERO_SUFFIX,
        code_key,
        is_grouped_entry,
        meta_model,
        read_codes,
        read_manifest,
    )
    from distill.models import check_model_dir

    check_model_dir(folder)
    cfg = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    _check_config(folder, cfg)
    manifest = read_manifest(folder)
    if manifest is None:
        tensors: dict[str, Tensor] = {}
        for path in sorted(folder.glob("*.safetensors")):
            tensors.update(load_file(str(path)))
        return cfg, tensors, {}, "hf-safetensors"
    check_servable(folder, manifest, "llama.cpp")
    shapes = {n: (m.out_features, m.in_features) for n, m in meta_model(folder).named_modules()
              if isinstance(m, torch.nn.Linear)}
    tensors = load_file(str(folder / WEIGHTS_NAME))
    grids: dict[str, CodeGrid] = {}
    for name, entry in manifest["quantized"].items():
        try:
            if is_grouped_entry(entry):
                codes = read_codes(tensors.pop(code_key(name, entry)), entry, shapes[name])
                grid = CodeGrid(codes, tensors.pop(name + SCALE_SUFFIX).float(), tensors.pop(name + ZERO_SUFFIX, None),
                                int(entry["bits"]), entry["group_size"])
            else:  # legacy rtn_int8: symmetric per channel, scale [out]
                grid = CodeGrid(tensors.pop(name + INT8_SUFFIX).to(torch.int16),
                                tensors.pop(name + SCALE_SUFFIX).float().reshape(-1, 1), None, 8, None)
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"{folder}: quantized layer {name!r} is incomplete or unreadable ({exc}); "
                              "the artifact is damaged, re-run the compress step") from None
        if entry.get("lora_rank"):
            a, b = tensors.pop(name + LORA_A_SUFFIX).float(), tensors.pop(name + LORA_B_SUFFIX).float()
            tensors[f"{name}.weight"] = grid.dequantize() + b @ a
        else:
            grids[f"{name}.weight"] = grid
    for alias, source in manifest["tied"].items():
        if not (alias == "lm_head.weight" and cfg.tie_word_embeddings):
            tensors[alias] = tensors[source]
    return cfg, tensors, grids, "eakd-compressed"


def _matrix_type(gguf_name: str, qtype: str, in_features: int) -> tuple[str, str | None]:
    """The GGUF type of one 2-D tensor under ``--type`` and, when it differs from ``qtype``, why."""
    if qtype in ("Q4_0", "Q4_1") and gguf_name in ("token_embd.weight", "output.weight"):
        return "Q8_0", "embedding/output matrix kept at 8 bits, as llama-quantize keeps it above 4 bits"
    if qtype in ("Q4_0", "Q4_1", "Q8_0") and in_features % 32:
        return "F16", f"{in_features} columns are not a multiple of the 32-weight block"
    return qtype, None


def convert_tensor(gguf_name: str, weight: Tensor | None, grid: CodeGrid | None, qtype: str) -> tuple[Any, str, dict]:
    """One tensor -> (data for ``GGUFWriter.add_tensor``, its GGUF type, its record). ``weight`` is a float
    tensor (any shape) or None when ``grid`` holds the codes; 2-D shapes are [out, in] (rows already in
    llama.cpp's order)."""
    if grid is None and weight.dim() == 1:
        return weight.float().numpy(), "F32", {"type": "F32", "how": "cast"}
    in_features = (grid.codes if grid is not None else weight).shape[1]
    target, why = _matrix_type(gguf_name, qtype, in_features)
    rec: dict[str, Any] = {"type": target} | ({"note": why} if why else {})
    if grid is not None:
        reason = exact_reason(grid, target)
        if reason is None:
            data, stats = pack_codes(grid, target)
            return data, target, rec | {"how": "exact codes", **stats}
        rec |= {"how": "dequantized" if target in ("F16", "BF16") else "re-quantized", "why": reason}
        weight = grid.dequantize()
    else:
        rec["how"] = "cast" if target in ("F16", "BF16") else "quantized"
    w = weight.float()
    if target == "F16" and w.abs().max() > F16_MAX:
        raise ConfigError(f"{gguf_name}: |w| reaches {float(w.abs().max()):.3g}, beyond f16's {F16_MAX:g}; export "
                          "with --type bf16 (same exponent range as the weights) instead")
    return quantize_floats(w, target), target, rec


def _file_types(type: str) -> tuple[str, str]:
    """``(block type of the matrices, llama.cpp file type name)`` of ``--type``; ConfigError for an unknown one."""
    if type not in TYPES:
        raise ConfigError(f"export --type must be one of {', '.join(TYPES)}, got {type!r}")
    return TYPES[type]


def _check_output(out: Path, overwrite: bool) -> None:
    """ConfigError when ``out`` is a folder, or exists and ``overwrite`` is off."""
    if out.is_dir():
        raise ConfigError(f"export output {out} is a folder; name the .gguf file to write, e.g. {out / 'model.gguf'}")
    if out.exists() and not overwrite:
        raise ConfigError(f"export output {out} exists; pick a new file name or pass --overwrite")


def _tensor_plan(folder: Path, cfg: Any, tensors: dict[str, Tensor],
                 grids: dict[str, CodeGrid]) -> list[tuple[str, str]]:
    """``(Hugging Face name, llama.cpp name)`` of every tensor to write, in the source's order (floats, then codes).

    A tied ``lm_head`` is left out; a tensor with no llama.cpp name is a ConfigError."""
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    plan: list[tuple[str, str]] = []
    for hf_name in [*tensors, *grids]:
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # llama.cpp uses token_embd as the output matrix when output.weight is absent
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ConfigError(f"{folder}: tensor {hf_name!r} has no llama.cpp name in the llama architecture; "
                              "this is not a plain Llama checkpoint")
        plan.append((hf_name, gguf_name))
    return plan


def _add_metadata(writer: gguf.GGUFWriter, folder: Path, cfg: Any, ftype: str, vocab: Vocab) -> None:
    """The ``general.*`` and ``llama.*`` keys (architecture, rope, file type) and the tokenizer."""
    import gguf

    n_head = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    rope = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    writer.add_name(folder.resolve().name)
    writer.add_quantized_by("eakd")
    writer.add_file_type(int(gguf.LlamaFileType[ftype]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    writer.add_rope_dimension_count(head_dim)
    if rope.get("rope_type", rope.get("type")) == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    if head_dim != cfg.hidden_size // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(cfg.vocab_size)
    add_vocab(writer, vocab)


def _add_tensors(writer: gguf.GGUFWriter, plan: list[tuple[str, str]], tensors: dict[str, Tensor],
                 grids: dict[str, CodeGrid], cfg: Any, qtype: str, type: str) -> dict[str, dict[str, Any]]:
    """Convert and add every planned tensor (q/k rows in llama.cpp's rope order); returns the records by GGUF name."""
    import gguf
    from tqdm import tqdm

    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    per_tensor: dict[str, dict[str, Any]] = {}
    for hf_name, gguf_name in tqdm(plan, desc=f"gguf {type}", unit="tensor", disable=None):
        weight, grid = tensors.get(hf_name), grids.get(hf_name)
        heads = n_head if gguf_name.endswith("attn_q.weight") else n_kv if gguf_name.endswith("attn_k.weight") else 0
        if heads:
            order = rope_row_order((grid.codes if grid is not None else weight).shape[0], heads)
            grid, weight = (grid.rows(order), None) if grid is not None else (None, weight[order])
        data, target, rec = convert_tensor(gguf_name, weight, grid, qtype)
        raw = None if target in ("F32", "F16") else gguf.GGMLQuantizationType[target]
        writer.add_tensor(gguf_name, data, raw_dtype=raw)
        per_tensor[gguf_name] = {"source": hf_name, **rec} | ({"rope_permuted": True} if heads else {})
    return per_tensor


def _export_record(out: Path, tmp: Path, type: str, ftype: str, folder: Path, kind: str, vocab: Vocab,
                   per_tensor: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The ``OUT.json`` written beside the GGUF file (``tmp``, already written): the source, the types and how
    each tensor was converted."""
    from distill.provenance import code_version

    hows = [r["how"] for r in per_tensor.values()]
    return {
        "format": "gguf", "file": out.name, "bytes": tmp.stat().st_size, "type": type, "file_type": ftype,
        "architecture": "llama", "source": str(folder.resolve()), "source_kind": kind, "eakd_version": code_version(),
        "tensors": {h: hows.count(h) for h in dict.fromkeys(hows)},
        "exact_codes": sorted(n for n, r in per_tensor.items() if r["how"] == "exact codes"),
        "requantized": {n: r["why"] for n, r in per_tensor.items() if r["how"] == "re-quantized"},
        "max_abs_weight_change_exact": max((r["max_abs_weight_change"] for r in per_tensor.values()
                                            if r["how"] == "exact codes"), default=None),
        "tokenizer": vocab.record(), "per_tensor": per_tensor,
    }


def export_gguf(src: str | Path, out: str | Path, type: str = "q8_0", overwrite: bool = False) -> Path:
    """Write the model folder ``src`` as the GGUF file ``out`` (and ``out + '.json'``); returns ``out``.

    ``type`` is one of :data:`TYPES`. Every check (architecture, artifact structure, tokenizer, type,
    existing output) runs before anything is written; the file appears complete or not at all.
    Steps: :func:`_file_types`, :func:`_check_output` -> :func:`read_source`, :func:`~compress.gguf_vocab.read_vocab` ->
    :func:`_tensor_plan` -> :func:`_add_metadata` -> :func:`_add_tensors` -> write -> :func:`_export_record` ->
    both files renamed into place.
    """
    import gguf

    qtype, ftype = _file_types(type)
    folder, out = Path(src), Path(out)
    _check_output(out, overwrite)
    cfg, tensors, grids, kind = read_source(folder)
    vocab = read_vocab(folder, cfg.vocab_size)
    plan = _tensor_plan(folder, cfg, tensors, grids)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    rec_tmp = tmp.with_name(tmp.name + ".json")
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    _add_metadata(writer, folder, cfg, ftype, vocab)
    try:
        per_tensor = _add_tensors(writer, plan, tensors, grids, cfg, qtype, type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        record = _export_record(out, tmp, type, ftype, folder, kind, vocab, per_tensor)
        rec_tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, out)
        os.replace(rec_tmp, record_path(out))
    finally:
        writer.close()
        for leftover in (tmp, rec_tmp):
            leftover.unlink(missing_ok=True)
    log.info("gguf %s: %d tensors (%s) -> %s (%.1f MB)", type, len(per_tensor), record["tensors"], out,
             record["bytes"] / 1e6)
    write_gguf_card(out)  # README.md of the folder: every eakd GGUF in it, lineage, how to run
    return out


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: python -m compress.gguf MODEL_DIR OUT.gguf [f16|bf16|q8_0|q4_0|q4_1]")
    print(export_gguf(sys.argv[1], sys.argv[2], *sys.argv[3:]))
