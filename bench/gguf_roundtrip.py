"""GGUF round trip: the bundled SmolLM2-135M exported by eakd, scored by llama.cpp against eakd's torch model.

Exports the bundled model (``distill.models.resolve_model_path("bundled")``, bf16 safetensors) with
:func:`compress.gguf.export_gguf` to each ``--types`` value, loads each file in llama.cpp
(``llama_cpp.Llama``, ``logits_all=True``) and computes WikiText-2 test perplexity from llama.cpp's logits with
eakd's quick protocol (:mod:`distill.evaluate`: the text tokenized once by the Hugging Face tokenizer without
special tokens, the first ``--windows`` non-overlapping windows of ``--window`` tokens, each scored alone on its
``window - 1`` next-token predictions). The same token windows go to both engines, so only the model differs.
The torch reference is :func:`distill.evaluate.perplexity` on the fp32-loaded model. Also records each file's
size, its export time and llama.cpp's prompt-processing speed (its forward passes alone, without
the softmax over 512 x 49152 logits in numpy), and the CPU (lscpu model and AVX2/AVX-512 flags).

Prints a table and writes ``bench/results/gguf_roundtrip.json``. Needs ``llama-cpp-python`` (``pip install
llama-cpp-python``: it compiles llama.cpp, see the README) and ``../shared/data/wikitext-2``; exits with a
message when either is missing.

Run: ``.venv/bin/python bench/gguf_roundtrip.py [--types f16,q8_0,q4_0 --windows 40]`` (~10 min on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import lscpu  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def cpu() -> dict[str, object]:
    """lscpu's model name and the vector extensions that decide llama.cpp's and torch's kernels."""
    model, flags = lscpu()
    wanted = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_bf16")
    return {"model": model, "cores": int(subprocess.run(["nproc"], capture_output=True, text=True).stdout or 0),
            "flags": {f: f in flags for f in wanted}}


def llama_cpp_perplexity(path: Path, windows, threads: int) -> dict[str, float]:
    """Perplexity of the GGUF ``path`` on ``windows`` [w, window] (token ids), from llama.cpp's logits."""
    import numpy as np
    from llama_cpp import Llama

    window = windows.shape[1]
    start = time.perf_counter()
    llm = Llama(model_path=str(path), logits_all=True, n_ctx=window, n_batch=window, n_threads=threads,
                verbose=False)
    load = time.perf_counter() - start
    total, start, in_eval = 0.0, time.perf_counter(), 0.0
    for row in windows.tolist():
        llm.reset()  # each window alone: eval() drops the cache past n_tokens = 0
        t0 = time.perf_counter()
        llm.eval(row)
        in_eval += time.perf_counter() - t0
        logits = np.asarray(llm.scores[: window - 1], dtype=np.float64)  # position t predicts t + 1
        peak = logits.max(axis=1, keepdims=True)
        logz = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))
        total += float((logz - logits[np.arange(window - 1), row[1:]]).sum())
    seconds = time.perf_counter() - start
    llm.close()
    tokens = windows.shape[0] * (window - 1)
    return {"perplexity": math.exp(total / tokens), "nll": total / tokens, "load_s": round(load, 2),
            "seconds": round(seconds, 1), "eval_s": round(in_eval, 1),
            "eval_tokens_per_s": round(windows.numel() / in_eval, 1)}  # llama.cpp's forward passes alone


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--types", default="f16,q8_0,q4_0", help="GGUF types to export and score")
    ap.add_argument("--windows", type=int, default=40, help="windows scored (quick protocol; the compression table uses 40)")
    ap.add_argument("--window", type=int, default=512, help="tokens per window")
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp and torch threads")
    ap.add_argument("--out", default=str(RESULTS / "gguf_roundtrip.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    try:
        import llama_cpp
    except ImportError:
        print("llama-cpp-python is not installed: `.venv/bin/pip install llama-cpp-python` (it compiles llama.cpp "
              "with cmake and a C++ compiler; measured 25 min on 2 shared cores here). Nothing measured.")
        return 1
    from distill.config import shared_data_dir

    data = shared_data_dir()
    text_path = (data or ROOT.parent / "shared" / "data") / "wikitext-2" / "wiki.test.tokens"
    if not text_path.is_file():
        print(f"{text_path} is absent: this benchmark scores WikiText-2 test; put the dataset under ../shared/data. "
              "Nothing measured.")
        return 1

    import torch

    from compress.gguf import export_gguf, record_path
    from distill.evaluate import load_eval_text, perplexity, window_ids
    from distill.models import load_causal_lm, load_tokenizer, resolve_model_path

    torch.set_num_threads(args.threads)
    src = resolve_model_path("bundled")
    tok = load_tokenizer(src)
    text = load_eval_text(str(text_path))
    ids = torch.tensor(tok(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long)
    windows = window_ids(ids, args.window, args.windows)
    model = load_causal_lm(src, dtype="float32").eval()
    ref = perplexity(model, tok, text, window=args.window, max_windows=args.windows, dtype="float32")
    del model
    print(f"torch fp32 (eakd): perplexity {ref['perplexity']:.4f} over {ref['windows']} x {args.window} tokens "
          f"({ref['seconds']:.0f} s)")
    safetensors_bytes = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="eakd-gguf-") as tmp:
        for kind in args.types.split(","):
            out = Path(tmp) / f"smollm2-135m-{kind}.gguf"
            start = time.perf_counter()
            export_gguf(src, out, kind)
            export_s = time.perf_counter() - start
            record = json.loads(record_path(out).read_text())
            got = llama_cpp_perplexity(out, windows, args.threads)
            rel = got["perplexity"] / ref["perplexity"] - 1
            rows.append({"type": kind, "bytes": out.stat().st_size, "export_s": round(export_s, 1),
                         "tensors": record["tensors"], **got, "vs_torch": rel})
            print(f"{kind:5s} {out.stat().st_size / 1e6:7.1f} MB  perplexity {got['perplexity']:.4f} "
                  f"({rel:+.2%} vs torch)  llama.cpp {got['eval_tokens_per_s']:.0f} tok/s  export {export_s:.0f} s")
    report = {
        "model": str(src), "source_safetensors_bytes": safetensors_bytes,
        "protocol": {"text": "wikitext-2/wiki.test.tokens", "window": args.window, "windows": int(windows.shape[0]),
                     "tokens": ref["tokens"], "tokenizer": "Hugging Face (the same ids to both engines)"},
        "torch": {"perplexity": ref["perplexity"], "dtype": "float32", "seconds": round(ref["seconds"], 1)},
        "llama_cpp": rows, "llama_cpp_python": llama_cpp.__version__, "threads": args.threads, "cpu": cpu(),
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
