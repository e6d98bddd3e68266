"""What a serving engine can load from a compressed folder: one rule, used by both exporters.

The compressed-tensors export for vLLM (:mod:`compress.export`) and the GGUF export for llama.cpp
(:mod:`compress.gguf`) refuse the same three structures, because no engine serves them: low-rank factor
pairs (svd/asvd/svdllm), CP/Tucker factors, and N:M sparsity (it would run as large and as slow as the
dense model). Written once here, so a new unservable structure is added in one place; each message names
the engine and what to export instead.

Run: ``python -c "from compress.servable import check_servable; help(check_servable)"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from distill.config import ConfigError

Engine = Literal["vllm", "llama.cpp"]

_NAME = {"vllm": "vLLM", "llama.cpp": "llama.cpp"}
_INSTEAD = {"vllm": "re-compress with rtn/gptq/awq (then export; 4-bit: ~3.5x smaller) or prune structurally with "
                    "depth/width (a standard model vLLM loads as it is)",
            "llama.cpp": "export a chain with unstructured (sparsity) or structured (depth/width) pruning and "
                         "rtn/gptq quantization"}
_WHY_NM = {"vllm": "vLLM removed compressed-tensors sparsity support",
           "llama.cpp": "llama.cpp has no N:M sparse kernels"}


def check_servable(folder: Path, manifest: dict[str, Any], engine: Engine) -> None:
    """ConfigError (what, where, what to export instead) if ``manifest`` holds a structure ``engine`` cannot load."""
    name = _NAME[engine]
    if manifest.get("factorized"):
        some = ", ".join(list(manifest["factorized"])[:3])
        raise ConfigError(f"{folder}: {len(manifest['factorized'])} layers are low-rank factorized (svd/asvd/svdllm: "
                          f"{some}, ...); factor pairs are not a standard Hugging Face architecture, so {name} cannot "
                          f"load them. Instead export the chain's source or a chain without factorization steps, or "
                          f"{_INSTEAD[engine]}")
    if manifest.get("tensorized"):
        raise ConfigError(f"{folder}: {len(manifest['tensorized'])} layers are stored as CP/Tucker factors, which no "
                          "engine serves (vLLM, transformers and llama.cpp load dense or quantized Linear weights "
                          f"only). Instead export the chain's source or a chain without cp/tucker steps, or "
                          f"{_INSTEAD[engine]}")
    for step in manifest.get("steps", []):
        nm = (step.get("params") or {}).get("nm")
        if nm:
            raise ConfigError(f"{folder}: step {step.get('name')!r} pruned {nm} (N:M sparse), which no engine serves "
                              f"as sparse ({_WHY_NM[engine]}): it would run as large and as slow as the dense model "
                              f"in {name}. Instead export the step's source, or {_INSTEAD[engine]}")
