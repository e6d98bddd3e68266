"""llm-compressor's GPTQ (int4 weights, symmetric, grouped) on a local model with given calibration windows.

The peer half of ``bench/compress_llmcompressor.py``; runs inside the llm-compressor venv (see
``setup_llmcompressor.sh``) and imports nothing from eakd. It loads ``--model`` in float32 on CPU, runs
``llmcompressor.oneshot`` with one ``GPTQModifier`` (int4, symmetric, ``strategy: group``, ``--group-size``
columns per scale; every ``Linear`` of the decoder, ``lm_head`` ignored; ``actorder`` static with
``--actorder``, else none; ``dampening_frac`` = ``--dampening``) calibrated on exactly the token-id
windows of ``--calib`` (a ``[n, seq_len]`` int64 tensor, ``.pt`` or ``.npy``: one dataset row per window,
no shuffling, no truncation), and saves the compressed model (``save_compressed=True``, the
compressed-tensors ``pack-quantized`` format) and the tokenizer to ``--out``. Prints one JSON line:
``{"tool", "version", "seconds", "samples", "seq_len", "out"}``; ``seconds`` covers ``oneshot`` only
(calibration and GPTQ), not loading or saving. Offline: ``HF_HUB_OFFLINE=1``.

Run: ``VENV/bin/python bench/peers/llmcompressor_gptq.py --model DIR --calib IDS.pt --out DIR
[--group-size 64] [--actorder] [--dampening 0.01]``
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402


def load_ids(path: Path) -> torch.Tensor:
    ids = torch.from_numpy(np.load(path)) if path.suffix == ".npy" else torch.load(path, weights_only=True)
    if ids.ndim != 2 or ids.dtype != torch.int64:
        raise SystemExit(f"--calib {path}: want an int64 tensor [n, seq_len], got {ids.dtype} {tuple(ids.shape)}")
    return ids


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, type=Path, help="Hugging Face safetensors model folder")
    ap.add_argument("--calib", required=True, type=Path, help="int64 token ids [n, seq_len] (.pt or .npy)")
    ap.add_argument("--out", required=True, type=Path, help="where the compressed model is saved")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--actorder", action="store_true", help="static activation ordering (GPTQ act-order)")
    ap.add_argument("--dampening", type=float, default=0.01, help="Hessian dampening, fraction of mean diag")
    args = ap.parse_args()

    from importlib.metadata import version

    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = load_ids(args.calib)
    calib = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(args.model, local_files_only=True)
    weights = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group",
               "group_size": args.group_size}
    recipe = GPTQModifier(config_groups={"group_0": {"targets": ["Linear"], "weights": weights}},
                          ignore=["lm_head"], actorder="static" if args.actorder else None,
                          dampening_frac=args.dampening)
    start = time.perf_counter()
    oneshot(model=model, tokenizer=tokenizer, dataset=calib, recipe=recipe, num_calibration_samples=ids.shape[0],
            max_seq_length=ids.shape[1], shuffle_calibration_samples=False, pipeline="sequential")
    seconds = time.perf_counter() - start
    model.save_pretrained(args.out, save_compressed=True)
    tokenizer.save_pretrained(args.out)
    print(json.dumps({"tool": "llmcompressor", "version": version("llmcompressor"), "seconds": seconds,
                      "samples": ids.shape[0], "seq_len": ids.shape[1], "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
