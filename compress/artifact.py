"""Save and load compressed models as safetensors plus a JSON manifest — never pickle.

A compressed model folder holds:

* ``model.safetensors`` — the state dict, except that each quantized linear stores
  ``<name>.weight_int8`` (int8 [out, in]) and ``<name>.weight_scale`` (fp32 [out]) instead of
  ``<name>.weight`` (so the bytes on disk really shrink), factorized linears store ``<name>.down.weight``
  and ``<name>.up.weight``/``.bias``, and a tied tensor (``lm_head.weight`` = ``embed_tokens.weight``)
  is stored once;
* ``config.json`` (+ ``generation_config.json``) — the unchanged Hugging Face architecture config;
* the tokenizer files;
* grouped RTN/GPTQ/AWQ linears store ``<name>.weight_packed`` (uint8 [out, in/2], two 4-bit codes per
  byte) or ``<name>.weight_int8`` (codes of 5-8 bits), ``<name>.weight_scale`` (fp32 [out, in/group]) and,
  when asymmetric, ``<name>.weight_zero`` (uint8 [out, in/group]); their manifest entry is
  ``{"bits", "group_size", "symmetric", "scheme"}`` and ``w = (q - zero) * scale`` per group;
* with ``"coding": "zstd"`` in a grouped entry, the codes are stored instead as ``<name>.weight_zstd``
  (uint8, one Zstandard frame of the unsigned codes, one byte each before compression; see
  :mod:`compress.entropy`);
* a CP/Tucker layer (``tensorized`` in the manifest: ``{name: {"format", "ranks"}}``) stores its factors
  ``<name>.factors.0`` .. ``.3`` and, for Tucker, ``<name>.core`` (see :mod:`compress.tensorized`);
* a QAF layer's grouped entry also has ``"lora_rank": r``, and its adapters are stored as
  ``<name>.lora_A`` (bf16 [r, in]) and ``<name>.lora_B`` (bf16 [out, r]); the weight is
  ``dequant(codes) + lora_B @ lora_A`` (see :mod:`compress.qaf`);
* ``eakd_compression.json`` — the manifest::

    {"format": "eakd-compressed/v1", "dtype": "bfloat16",
     "factorized": {"model.layers.0.mlp.up_proj": 288},
     "quantized": {"model.layers.0.mlp.up_proj.down": {"bits": 8, "scheme": "rtn-sym-per-channel"}},
     "tied": {"lm_head.weight": "model.embed_tokens.weight"},
     "steps": [{"method": "svd", ...}, {"method": "rtn_int8", ...}]}

:func:`load_compressed` rebuilds the architecture from ``config.json``, re-applies the low-rank structure
the manifest names, dequantizes the int8 tensors and re-ties shared weights. A folder without a manifest
is a plain Hugging Face model and loads through :func:`distill.models.load_causal_lm`.

Run: ``python -c "from compress.artifact import load_compressed; print(load_compressed('runs/x/01-svd'))"``.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from compress.factorize import apply_low_rank_structure
from compress.quantize import SCHEME, dequantize, dequantize_weight, quantize_rtn_int8
from compress.tensorized import apply_tensorized_structure
from distill.config import ConfigError
from distill.io import publish_dir
from distill.models import check_model_dir, load_causal_lm

log = logging.getLogger(__name__)

FORMAT = "eakd-compressed/v1"
MANIFEST_NAME = "eakd_compression.json"
WEIGHTS_NAME = "model.safetensors"
INT8_SUFFIX = ".weight_int8"
SCALE_SUFFIX = ".weight_scale"
PACKED_SUFFIX = ".weight_packed"  # codes of <= 4 bits, two per byte (low nibble first)
ZERO_SUFFIX = ".weight_zero"
ZSTD_SUFFIX = ".weight_zstd"  # entropy-coded codes (compress.entropy): flat uint8, one zstd frame
LORA_A_SUFFIX, LORA_B_SUFFIX = ".lora_A", ".lora_B"  # QAF adapters beside the codes (compress.qaf)


def is_grouped_entry(entry: dict[str, Any]) -> bool:
    """True for a quantized entry written by the generic RTN/GPTQ/AWQ steps (not the legacy int8 one)."""
    return "group_size" in entry


def grouped_entry(bits: int, group_size: int | None, symmetric: bool, scheme: str,
                  coding: str | None = None, lora_rank: int | None = None) -> dict[str, Any]:
    entry = {"bits": bits, "group_size": group_size, "symmetric": symmetric, "scheme": scheme}
    if coding not in (None, "none"):
        entry["coding"] = coding  # how the codes are stored: "zstd" (compress.entropy); absent: fixed-width
    if lora_rank:
        entry["lora_rank"] = lora_rank  # QAF: low-rank adapters stored beside the codes
    return entry


def code_key(module_name: str, entry: dict[str, Any]) -> str:
    """The safetensors key holding a grouped-quantized layer's codes."""
    if entry.get("coding") == "zstd":
        return module_name + ZSTD_SUFFIX
    return module_name + (PACKED_SUFFIX if entry["bits"] <= 4 else INT8_SUFFIX)


def store_codes(q: Tensor, entry: dict[str, Any]) -> Tensor:
    """Codes ``q`` [out, in] -> the tensor stored under :func:`code_key` (packed, int8 or zstd)."""
    if entry.get("coding") == "zstd":
        from compress.entropy import encode_codes

        return encode_codes(q, entry["bits"], entry["symmetric"])
    if entry.get("coding") not in (None, "none"):
        raise ValueError(f"unknown weight coding {entry['coding']!r} (this eakd writes 'zstd' or none)")
    return pack_codes(q, entry["bits"], entry["symmetric"])


def read_codes(stored: Tensor, entry: dict[str, Any], shape: tuple[int, int]) -> Tensor:
    """Inverse of :func:`store_codes` -> codes [out, in] (int16, signed when symmetric)."""
    coding = entry.get("coding")
    if coding == "zstd":
        from compress.entropy import decode_codes

        return decode_codes(stored, shape, entry["bits"], entry["symmetric"])
    if coding is not None:
        raise ConfigError(f"weight coding {coding!r} is not one this eakd reads (zstd or none); upgrade eakd")
    return unpack_codes(stored, entry["bits"], entry["symmetric"], shape[1])


def pack_codes(q: Tensor, bits: int, symmetric: bool) -> Tensor:
    """Codes ``q`` [out, in] (int8 signed when symmetric, uint8 otherwise) -> stored tensor.

    ``bits <= 4``: uint8 [out, in / 2], two unsigned nibbles per byte (symmetric codes offset by 2^(b-1));
    wider codes are stored as they are (one byte each).
    """
    if bits > 4:
        return q
    u = (q.to(torch.int16) + (2 ** (bits - 1) if symmetric else 0)).to(torch.uint8)
    if u.shape[1] % 2:  # odd width (e.g. a low-rank factor): pad one code; unpack_codes cuts it off
        u = torch.cat([u, torch.zeros(u.shape[0], 1, dtype=torch.uint8)], dim=1)
    return (u[:, 0::2] | (u[:, 1::2] << 4)).contiguous()


def unpack_codes(packed: Tensor, bits: int, symmetric: bool, in_features: int) -> Tensor:
    """Inverse of :func:`pack_codes` -> codes [out, in_features] (int16, signed when symmetric)."""
    if bits > 4:
        return packed.to(torch.int16)
    lo, hi = (packed & 0x0F).to(torch.int16), (packed >> 4).to(torch.int16)
    u = torch.stack([lo, hi], dim=-1).reshape(packed.shape[0], -1)[:, :in_features]
    return u - (2 ** (bits - 1) if symmetric else 0)


def new_manifest(dtype: str | None = None) -> dict[str, Any]:
    """An empty manifest: nothing factorized or quantized yet."""
    return {"format": FORMAT, "dtype": dtype, "factorized": {}, "quantized": {}, "tied": {}, "steps": []}


def quant_entry() -> dict[str, Any]:
    return {"bits": 8, "scheme": SCHEME}


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The manifest of an eakd-compressed folder, or None for a plain Hugging Face folder."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}); the artifact is damaged, re-run the compress step")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ConfigError(f"{path}: format is {got!r}, this eakd reads {FORMAT!r}; re-run the compress step")
    for key, default in new_manifest().items():
        manifest.setdefault(key, default)
    return manifest


def _dedup_tied(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Drop tensors that alias an earlier one (safetensors refuses shared storage); return the aliases."""
    kept: dict[str, Tensor] = {}
    tied: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in state.items():
        key = (t.device.type, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
        if t.numel() and key in seen:
            tied[name] = seen[key]
            continue
        seen[key] = name
        kept[name] = t
    return kept, tied


def compressed_tensors(model: nn.Module, manifest: dict[str, Any], dtype: str | None = None,
                       codes: dict[str, tuple] | None = None) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The tensors to write for ``model`` under ``manifest`` and the tied aliases that were dropped.

    Quantized linears are re-quantized from their current weights; that is exact when the weights came
    from :func:`compress.quantize.quantize_model` (they sit on the int8 grid). Other floating tensors are
    cast to ``dtype`` when given.
    """
    tensors, tied = _dedup_tied(model.state_dict())
    target = getattr(torch, dtype) if dtype else None
    out: dict[str, Tensor] = {}
    for name, t in tensors.items():
        out[name] = t.detach().to(target) if target is not None and t.is_floating_point() else t.detach()
    for module_name, entry in manifest.get("quantized", {}).items():
        key = f"{module_name}.weight"
        if key not in out:
            raise ValueError(f"manifest marks {module_name!r} as quantized but the model has no {key!r}; "
                             "a later step replaced it — drop it from manifest['quantized']")
        w = tensors[key].detach()
        if is_grouped_entry(entry):
            if codes is None or module_name not in codes:
                raise ValueError(f"{module_name} is quantized ({entry['scheme']}) but its codes were not passed; "
                                 "a grouped-quantized model can only be saved by the step that quantized it")
            q, scale, zero = codes[module_name][:3]
            adapters = codes[module_name][3:5] if entry.get("lora_rank") else ()
            if entry.get("lora_rank") and len(adapters) != 2:
                raise ValueError(f"{module_name} has lora_rank {entry['lora_rank']} but its adapters were not passed")
            deq = dequantize_weight(q, scale, zero, entry["group_size"], torch.float32)
            if adapters:
                deq = deq + adapters[1] @ adapters[0]
            if not torch.equal(deq, w.to(torch.float32)):
                raise ValueError(f"{module_name}: weights differ from their {entry['scheme']} codes "
                                 "(changed after quantization?); quantize last in a chain")
            del out[key]
            out[code_key(module_name, entry)] = store_codes(q, entry)
            out[module_name + SCALE_SUFFIX] = scale.to(torch.float32)
            if zero is not None:
                out[module_name + ZERO_SUFFIX] = zero
            if adapters:
                for suffix, t in zip((LORA_A_SUFFIX, LORA_B_SUFFIX), adapters):
                    stored = t.to(torch.bfloat16)
                    if not torch.equal(stored.to(t.dtype), t):
                        raise ValueError(f"{module_name}{suffix} is not on the bf16 grid the artifact stores adapters on; "
                                         "compress.qaf rounds them before measuring")
                    out[module_name + suffix] = stored
            continue
        q, scale = quantize_rtn_int8(w)
        if not torch.equal(dequantize(q, scale, w.dtype), w):
            log.warning("%s is not on its int8 grid (changed after quantization?); saving it re-quantized, "
                        "so the artifact differs slightly from the model in memory", module_name)
        del out[key]
        out[module_name + INT8_SUFFIX] = q
        out[module_name + SCALE_SUFFIX] = scale
    return {k: v.contiguous().cpu() for k, v in out.items()}, tied


def save_compressed(model: nn.Module, out_dir: str | Path, tokenizer: Any, manifest: dict[str, Any],
                    dtype: str | None = None, codes: dict[str, tuple] | None = None) -> Path:
    """Write ``model`` as an eakd-compressed folder at ``out_dir`` (created); returns ``out_dir``.

    ``dtype`` (e.g. ``"bfloat16"``) is the storage dtype of the non-quantized floating tensors; None keeps
    them as they are in memory. ``tokenizer`` may be None. Not atomic on its own: callers that need a
    crash-safe folder write to a temp dir and rename it (see :mod:`compress.stage`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors, tied = compressed_tensors(model, manifest, dtype, codes)
    # One metadata key: safetensors writes its metadata map in (per-process random) hash order, so two
    # keys would make the same weights differ in bytes from run to run. The format lives in the manifest.
    save_file(dict(sorted(tensors.items())), str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    write_folder_files(out, model.config, getattr(model, "generation_config", None), tokenizer, manifest, tied, dtype)
    return out


def write_folder_files(out: Path, config: Any, generation: Any, tokenizer: Any, manifest: dict[str, Any],
                       tied: dict[str, str], dtype: str | None) -> None:
    """Everything of an eakd-compressed folder but its weights: config (with the storage ``dtype``), generation
    config, tokenizer and the manifest (with the ``tied`` aliases); shared by :func:`save_compressed` and
    :mod:`compress.streamed`, which writes the weights block by block."""
    config = copy.deepcopy(config)
    if dtype:
        config.dtype = dtype
    config.save_pretrained(out)
    if generation is not None:
        generation.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    record = {**new_manifest(), **manifest, "format": FORMAT, "tied": tied}
    if dtype:
        record["dtype"] = dtype
    (out / MANIFEST_NAME).write_text(json.dumps(record, indent=2) + "\n")


def dequantized_weight(tensors: dict[str, Tensor], module_name: str, entry: dict[str, Any], layer: nn.Module,
                       weights: Path) -> Tensor:
    """The fp32 weight [out, in] of the quantized linear ``module_name`` (manifest ``entry``; ``layer`` gives its
    shape), popping its stored tensors from ``tensors``; ConfigError naming ``weights`` when they are missing."""
    if is_grouped_entry(entry):
        try:
            stored = tensors.pop(code_key(module_name, entry))
            scale = tensors.pop(module_name + SCALE_SUFFIX)
        except KeyError:
            raise ConfigError(f"{weights}: manifest marks {module_name!r} as {entry['scheme']} but its code/scale "
                              "tensors are missing; re-run the compress step") from None
        zero = tensors.pop(module_name + ZERO_SUFFIX, None)
        try:
            q = read_codes(stored, entry, (layer.out_features, layer.in_features))
        except ValueError as exc:
            raise ConfigError(f"{weights}: {module_name}: {exc}; re-run the compress step") from None
        weight = dequantize_weight(q, scale, zero, entry["group_size"], torch.float32)
        if entry.get("lora_rank"):
            try:
                a, b = tensors.pop(module_name + LORA_A_SUFFIX), tensors.pop(module_name + LORA_B_SUFFIX)
            except KeyError:
                raise ConfigError(f"{weights}: manifest gives {module_name!r} rank-{entry['lora_rank']} adapters "
                                  f"but its {LORA_A_SUFFIX}/{LORA_B_SUFFIX} tensors are missing; re-run the "
                                  "compress step") from None
            if a.shape != (entry["lora_rank"], layer.in_features) or b.shape != (layer.out_features, entry["lora_rank"]):
                raise ConfigError(f"{weights}: {module_name}: adapters {tuple(b.shape)} @ {tuple(a.shape)} do not "
                                  f"fit a rank-{entry['lora_rank']} [{layer.out_features}, {layer.in_features}] "
                                  "layer; re-run the compress step")
            weight = weight + b.to(torch.float32) @ a.to(torch.float32)
        return weight
    try:
        q = tensors.pop(module_name + INT8_SUFFIX)
        scale = tensors.pop(module_name + SCALE_SUFFIX)
    except KeyError:
        raise ConfigError(f"{weights}: manifest marks {module_name!r} as int8 but its "
                          f"{INT8_SUFFIX}/{SCALE_SUFFIX} tensors are missing; re-run the compress step") from None
    return dequantize(q, scale, torch.float32)


def load_compressed(folder: str | Path, dtype: str = "float32", device: str = "cpu") -> nn.Module:
    """Load an eakd-compressed folder (or a plain Hugging Face safetensors folder) as a causal LM."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(folder)
    check_model_dir(path)
    manifest = read_manifest(path)
    if manifest is None:
        return load_causal_lm(path, dtype=dtype, device=device).eval()
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        raise ConfigError(f"{path} has {MANIFEST_NAME} but no {WEIGHTS_NAME}; the artifact is incomplete")
    config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    # Build in fp32: dequantized int8 values (q * scale) are exact only there; cast at the end.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False)
    apply_low_rank_structure(model, manifest["factorized"])
    apply_tensorized_structure(model, manifest.get("tensorized", {}))
    tensors = load_file(str(weights))
    for module_name, entry in manifest["quantized"].items():
        layer = model.get_submodule(module_name)
        tensors[f"{module_name}.weight"] = dequantized_weight(tensors, module_name, entry, layer, weights)
    tied: dict[str, str] = manifest.get("tied", {})
    result = model.load_state_dict(tensors, strict=False)
    missing = set(result.missing_keys) - set(tied)
    if missing or result.unexpected_keys:
        raise ConfigError(f"{weights} does not match {path / 'config.json'} + {MANIFEST_NAME}: "
                          f"missing {sorted(missing)[:5]}, unexpected {sorted(result.unexpected_keys)[:5]}")
    state = model.state_dict()
    with torch.no_grad():
        for alias, source in tied.items():
            # from_config usually re-ties these already; copying keeps an untied layout correct too.
            if state[alias].data_ptr() != state[source].data_ptr():
                state[alias].copy_(tensors[source])
    return model.to(device=device, dtype=getattr(torch, dtype)).eval()


def meta_model(folder: str | Path) -> nn.Module:
    """The architecture of ``folder/config.json`` on the meta device (no memory, ties applied): layer shapes and
    tied parameters of an artifact without loading its weights (re-coding, export, GGUF)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=False)


def recode(folder: str | Path, out_dir: str | Path, coding: str | None) -> Path:
    """Copy the eakd-compressed ``folder`` to ``out_dir`` with every grouped-quantized layer's codes stored in
    ``coding`` (``"zstd"`` or None: fixed-width); the codes themselves, and so the model, are unchanged."""
    import shutil

    src, out = Path(folder), Path(out_dir)
    manifest = read_manifest(src)
    if manifest is None or not any(is_grouped_entry(e) for e in manifest["quantized"].values()):
        raise ConfigError(f"{src}: no rtn/gptq/awq/qat/qaf-quantized layers to re-code")
    if out.exists():
        raise ConfigError(f"{out} exists; pick a new folder")
    linears = dict(meta_model(src).named_modules())
    tensors = load_file(str(src / WEIGHTS_NAME))
    for name, entry in manifest["quantized"].items():
        if not is_grouped_entry(entry):
            continue
        layer = linears[name]
        codes = read_codes(tensors.pop(code_key(name, entry)), entry, (layer.out_features, layer.in_features))
        entry.pop("coding", None)
        if coding not in (None, "none"):
            entry["coding"] = coding
        tensors[code_key(name, entry)] = store_codes(codes.to(torch.int8 if entry["symmetric"] else torch.uint8), entry)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns(WEIGHTS_NAME, MANIFEST_NAME))
    save_file(dict(sorted(tensors.items())), str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
    (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return publish_dir(tmp, out)  # atomic, and readable as the umask says (distill.io)


def safetensors_bytes(folder: str | Path) -> int:
    """Sum of the sizes of ``*.safetensors`` files in ``folder`` (the weights' bytes on disk)."""
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))
