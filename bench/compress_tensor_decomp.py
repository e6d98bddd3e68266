"""CP and Tucker against truncated SVD at the same parameter count, on the bundled SmolLM2-135M's weights (issue 10).

For every linear of the chosen decoder blocks (default: first, middle, last) and every ``--ratios`` value,
:func:`compress.tensorized.compare_layer` approximates the weight with each method at that share of its
parameters and reports the relative Frobenius error and the relative output error on calibration
activations (the Gram of ``--calib`` x 512 tokens of WikiText-2 valid, seed 0, collected on the unmodified
model). Also the input embedding (49152 x 576, no activations: weight error only) at the first ratio.
Prints a table of means per method and ratio and writes ``bench/results/compress_tensor_decomp.json``.

Run: ``.venv/bin/python bench/compress_tensor_decomp.py [--blocks 0,15,29 --ratios 0.5,0.25]`` (~5-15 min on
2 CPU cores, most of it CP's alternating least squares on the 1536 x 576 MLP weights).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", default="0,15,29", help="decoder blocks whose 7 linears are compared")
    ap.add_argument("--ratios", default="0.5,0.25", help="kept parameter shares")
    ap.add_argument("--calib", type=int, default=16, help="calibration windows of 512 tokens (WikiText-2 valid)")
    ap.add_argument("--methods", default="svd,tucker,cp")
    ap.add_argument("--no-embedding", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch

    from compress.calibrate import calibration_batches, collect_input_stats, decoder_blocks
    from compress.tensorized import compare_layer
    from distill.config import shared_data_dir
    from distill.evaluate import load_eval_text
    from distill.models import fetch_bundled_teacher, load_causal_lm, load_tokenizer

    data = shared_data_dir()
    valid = data / "wikitext-2" / "wiki.valid.tokens" if data else None
    if valid is None or not valid.is_file():
        sys.exit("../shared/data/wikitext-2 not found: this benchmark needs WikiText-2 (see README)")
    t0 = time.perf_counter()
    src = fetch_bundled_teacher()
    model, tok = load_causal_lm(src, dtype="float32"), load_tokenizer(src)
    blocks = [int(b) for b in args.blocks.split(",")]
    ratios = [float(r) for r in args.ratios.split(",")]
    methods = tuple(args.methods.split(","))
    layers = {f"model.layers.{b}.{n}": m for b in blocks for n, m in decoder_blocks(model)[b].named_modules()
              if isinstance(m, torch.nn.Linear)}
    batches = calibration_batches(tok, load_eval_text(valid), n_samples=args.calib, seq_len=512, seed=0)
    stats = collect_input_stats(model, batches, layers)
    rows = []
    for name, lin in layers.items():
        gram = stats[name].hessian()
        for ratio in ratios:
            t = time.perf_counter()
            res = compare_layer(lin.weight, gram, ratio, methods)
            rows.append({"layer": name, "shape": list(lin.weight.shape), "ratio": ratio, "results": res,
                         "seconds": round(time.perf_counter() - t, 1)})
            print(f"{name} {tuple(lin.weight.shape)} @ {ratio}: " + ", ".join(
                f"{m} w {r['weight_error']:.3f} / out {r['output_error']:.3f}" for m, r in res.items()), flush=True)
    embedding = None
    if not args.no_embedding:
        emb = model.get_input_embeddings().weight
        embedding = compare_layer(emb, None, ratios[0], tuple(m for m in methods if m != "cp"))  # CP: R ~ 94k, too slow
        print(f"embedding {tuple(emb.shape)} @ {ratios[0]}: " + ", ".join(
            f"{m} w {r['weight_error']:.3f}" for m, r in embedding.items()), flush=True)

    print(f"\nSmolLM2-135M blocks {blocks}, {len(layers)} linears; output error on {args.calib} x 512 WikiText-2 valid "
          f"tokens; mean (median) over layers; {os.cpu_count()} CPUs\n")
    print("| kept parameters | method | weight error | output error | wins on output error |")
    print("|---|---|---|---|---|")
    summary = {}
    for ratio in ratios:
        sel = [r for r in rows if r["ratio"] == ratio]
        wins = {m: sum(1 for r in sel if min(r["results"], key=lambda k: r["results"][k]["output_error"]) == m)
                for m in methods}
        for m in methods:
            we = [r["results"][m]["weight_error"] for r in sel]
            oe = [r["results"][m]["output_error"] for r in sel]
            summary[f"{m}@{ratio}"] = {"weight_error_mean": statistics.mean(we), "output_error_mean": statistics.mean(oe),
                                       "output_error_median": statistics.median(oe), "wins": wins[m]}
            print(f"| {ratio:.0%} | {m} | {statistics.mean(we):.3f} ({statistics.median(we):.3f}) | "
                  f"{statistics.mean(oe):.3f} ({statistics.median(oe):.3f}) | {wins[m]} of {len(sel)} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "compress_tensor_decomp.json"
    out.write_text(json.dumps({"config": vars(args), "summary": summary, "layers": rows, "embedding": embedding,
                               "cpu_count": os.cpu_count(), "seconds": round(time.perf_counter() - t0, 1)}, indent=2))
    print(f"\nwrote {out} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
