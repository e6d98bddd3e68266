"""Block-at-a-time model I/O for streamed compression: a weightless model skeleton, a reader that loads one
module's tensors from the safetensors shard(s) on demand, and a writer that builds ``model.safetensors``
from per-block parts without ever holding the whole model.

* :func:`skeleton` builds the architecture of ``config.json`` on the meta device (no memory); the computed,
  unstored buffers (rotary ``inv_freq``) are rebuilt on the CPU. :func:`load_module` puts real fp32 tensors
  into one module (``load_state_dict(assign=True)``), :func:`release_module` sends it back to meta.
* :class:`WeightReader` reads a plain Hugging Face folder (``model.safetensors`` or the shards named by
  ``model.safetensors.index.json``) or an eakd-compressed artifact (its int8/int4 codes dequantized by
  :func:`compress.artifact.dequantized_weight`), with plain reads at the header's offsets: nothing maps a
  whole shard (``safe_open`` does, and a hard memory limit counts the mapping in full).
* :class:`PartWriter` saves each block's output tensors as a part file, then :meth:`PartWriter.assemble`
  writes one ``model.safetensors`` tensor by tensor, in the byte layout ``safetensors.torch.save_file``
  produces (tensors ordered by dtype, descending, then name; a compact JSON header padded to 8 bytes), so
  the artifact is byte-identical to the whole-model path's. Hand-written because safetensors can only
  serialize a dict of tensors held in memory at once; :mod:`tests.compress.test_streamed` checks the bytes
  against ``save_file``.

accelerate's ``init_empty_weights`` and transformers' ``device_map`` offloading would give the skeleton and
lazy loading, but accelerate is not a dependency, and neither writes an artifact block by block.

Run: used by :mod:`compress.streamed`.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from compress.artifact import WEIGHTS_NAME, dequantized_weight, read_manifest
from distill.config import ConfigError

INDEX_NAME = "model.safetensors.index.json"
# safetensors' Dtype enum order (its header sorts tensors by it, descending) and names, for what eakd writes
_DTYPES = {torch.bool: (0, "BOOL"), torch.uint8: (1, "U8"), torch.int8: (2, "I8"), torch.int16: (5, "I16"),
           torch.float16: (7, "F16"), torch.bfloat16: (8, "BF16"), torch.int32: (9, "I32"),
           torch.float32: (11, "F32"), torch.float64: (12, "F64"), torch.int64: (13, "I64")}


_BY_NAME = {name: dtype for dtype, (_rank, name) in _DTYPES.items()}


def read_header(path: Path) -> tuple[int, dict[str, Any]]:
    """``(data start, {name: {"dtype", "shape", "data_offsets"}})`` of a safetensors file."""
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        try:
            head = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ConfigError(f"{path}: not a safetensors file (bad header); re-download or re-save it") from None
    head.pop("__metadata__", None)
    return 8 + n, head


def read_tensors(path: Path, keys: list[str]) -> dict[str, Tensor]:
    """``keys`` of the safetensors file ``path``, read into fresh tensors with plain reads: no mapping of the
    file (safetensors' ``safe_open`` maps all of it, which a hard memory limit counts in full)."""
    start, head = read_header(path)
    out = {}
    with path.open("rb") as f:
        for key in keys:
            info = head[key]
            begin, end = info["data_offsets"]
            raw = torch.empty(end - begin, dtype=torch.uint8)
            f.seek(start + begin)
            if f.readinto(raw.numpy()) != end - begin:
                raise ConfigError(f"{path}: truncated at tensor {key}; re-download or re-save the model")
            out[key] = raw.view(_BY_NAME[info["dtype"]]).reshape(info["shape"])
    return out


def skeleton(folder: str | Path) -> nn.Module:
    """The causal LM of ``folder/config.json`` with every parameter on the meta device (ties applied) and
    the computed buffers (rotary frequencies) real, on the CPU."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False)
    for name, module in list(model.named_modules()):
        if any(b.is_meta for b in module.buffers(recurse=False)):
            if not type(module).__name__.endswith("RotaryEmbedding"):
                raise ValueError(f"{name} ({type(module).__name__}) has computed buffers that streamed compression "
                                 "cannot rebuild; it supports Llama-style models (set compress.streaming: false)")
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, type(module)(config=model.config))
    return model.eval()


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """``{alias: first name}`` for parameters that are the same tensor (``lm_head.weight`` ->
    ``model.embed_tokens.weight`` when tied): what :func:`compress.artifact.compressed_tensors` drops."""
    first: dict[int, str] = {}
    tied = {}
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in first:
            tied[name] = first[id(t)]
        else:
            first[id(t)] = name
    return tied


def load_module(module: nn.Module, state: dict[str, Tensor]) -> None:
    """Give meta ``module`` the real tensors ``state`` (names relative to it; every parameter present)."""
    result = module.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ConfigError(f"weights do not match the model config: missing {result.missing_keys[:5]}, "
                          f"unexpected {result.unexpected_keys[:5]}")


def release_module(module: nn.Module) -> None:
    """Free ``module``'s tensors (back to the meta device) and give the freed memory back to the system."""
    module.to("meta")
    trim_heap()


def trim_heap() -> None:
    """glibc's ``malloc_trim(0)``: return the free pages of every malloc arena to the system, holes included.

    A block's tensors of a few MB (under glibc's dynamic mmap threshold, which rises to 32 MB after the first large
    frees) live on the heap; freed between blocks, they leave holes the next block's tensors do not exactly fit,
    and the process's resident set climbs block after block (measured on a 28-block 1.5B-shaped model: streamed
    Wanda 1.42 GiB without, see docs/scaling.md). Trimming after each block keeps it at one block's worth.
    A no-op where libc is not glibc."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _malloc_trim():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _malloc_trim()


class WeightReader:
    """The tensors of a model folder, read module by module, as fp32."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        index = self.folder / INDEX_NAME
        if (self.folder / WEIGHTS_NAME).is_file():
            files = [WEIGHTS_NAME]
        elif index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            raise ConfigError(f"{self.folder}: no {WEIGHTS_NAME} or {INDEX_NAME}; streamed compression reads "
                              "safetensors folders")
        self.where: dict[str, Path] = {}
        for name in files:
            path = self.folder / name
            if not path.is_file():
                raise ConfigError(f"{index}: names shard {name}, which is missing; re-download or re-save the model")
            self.where.update(dict.fromkeys(read_header(path)[1], path))

    def _read(self, keys: list[str]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for path in dict.fromkeys(self.where[k] for k in keys):
            out.update(read_tensors(path, [k for k in keys if self.where[k] == path]))
        return out

    def module_state(self, model: nn.Module, prefix: str) -> dict[str, Tensor]:
        """fp32 tensors of the module at ``prefix`` (``""``: top-level tensors outside ``model.layers`` are
        not meant; pass a module name), names relative to it; quantized linears dequantized."""
        module = model.get_submodule(prefix)
        wanted = [f"{prefix}.{n}" for n in module.state_dict()]
        quantized = (self.manifest or {}).get("quantized", {})
        stored = [k for k in self.where if k.startswith(prefix + ".")]
        tensors = self._read(stored)
        for full in wanted:
            owner = full.removesuffix(".weight")
            if full not in tensors and owner in quantized:
                tensors[full] = dequantized_weight(tensors, owner, quantized[owner], model.get_submodule(owner),
                                                   self.folder)
        missing = [k for k in wanted if k not in tensors]
        if missing:
            raise ConfigError(f"{self.folder}: tensors {missing[:3]} of the config's model are not in its weights; "
                              "the folder's shards do not match its config.json")
        return {k[len(prefix) + 1:]: tensors[k].to(torch.float32) for k in wanted}


def _header(entries: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict[str, str]) -> tuple[bytes, list]:
    """safetensors' header for ``entries`` and the entries in the file's order."""
    order = sorted(entries, key=lambda e: (-_DTYPES[e[1]][0], e[0]))
    head: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape in order:
        n = int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
        head[name] = {"dtype": _DTYPES[dtype][1], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(head, separators=(",", ":")).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    return struct.pack("<Q", len(raw)) + raw, order


class PartWriter:
    """Collects an artifact's tensors part by part under ``folder/.parts`` and assembles ``model.safetensors``."""

    def __init__(self, folder: Path, parts: Path | None = None) -> None:
        self.folder = folder
        self.parts = parts or folder / ".parts"  # elsewhere when a resumable step keeps them beyond this run
        self.parts.mkdir(parents=True, exist_ok=True)
        self.entries: dict[str, tuple[torch.dtype, tuple[int, ...], Path]] = {}

    @property
    def count(self) -> int:
        """Part files written so far."""
        return len(list(self.parts.glob("*.safetensors")))

    def reopen(self, keep: int) -> None:
        """Take over the first ``keep`` part files a killed run wrote (its checkpointed blocks); delete the rest."""
        for path in sorted(self.parts.glob("*.safetensors")):
            if int(path.stem) >= keep:
                path.unlink()
                continue
            for name, info in read_header(path)[1].items():
                self.entries[name] = (_BY_NAME[info["dtype"]], tuple(info["shape"]), path)

    def add(self, tensors: dict[str, Tensor]) -> None:
        """Write ``tensors`` (contiguous CPU) as the next part file."""
        if not tensors:
            return
        path = self.parts / f"{self.count:05d}.safetensors"
        save_file(tensors, str(path))
        for name, t in tensors.items():
            if name in self.entries:
                raise ValueError(f"tensor {name} written twice")
            self.entries[name] = (t.dtype, tuple(t.shape), path)

    def assemble(self, metadata: dict[str, str]) -> Path:
        """Write ``folder/model.safetensors`` from the parts, one tensor in memory at a time; delete the parts."""
        header, order = _header([(n, d, s) for n, (d, s, _p) in self.entries.items()], metadata)
        out = self.folder / WEIGHTS_NAME
        with out.open("wb") as f:
            f.write(header)
            for name, _dtype, _shape in order:
                t = read_tensors(self.entries[name][2], [name])[name]
                f.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().data)
        shutil.rmtree(self.parts)
        return out
