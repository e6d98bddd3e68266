"""Quantization-aware training and entropy coding on the bundled SmolLM2-135M, side by side with PTQ (issue 10).

One run of :func:`compress.stage.compress_student` (``chain: false``, every step from the source model), with
the protocol of ``bench/compress_methods.py``: calibration ``--calib`` x 512 tokens of WikiText-2 valid
(seed 0), perplexity on the first ``--windows`` 512-token windows of WikiText-2 test, fp32 compute. Steps:

* ``rtn4_g64`` — plain PTQ, the baseline QAT must beat;
* ``gptq4_g64`` — the best PTQ eakd has, for reference;
* ``qat4_g64`` — :mod:`compress.qat`: ``--qat-steps`` KD steps (4 windows each) through the fake quantizer
  from the fp32 model on the calibration windows, then RTN onto the trained grid;
* ``qaf4_g64`` — :mod:`compress.qaf`: the RTN grid frozen, rank ``--qaf-rank`` adapters started by LoftQ and
  trained ``--qaf-steps`` KD steps the same way;
* ``*_zstd``: each artifact re-coded (:func:`compress.artifact.recode`) with the same codes entropy-coded
  (:mod:`compress.entropy`); its perplexity is measured again from the reloaded artifact.

Reported: perplexity and the share of RTN's perplexity loss that QAT and QAF recover (target >= 50 %); per artifact
the codes' Shannon and Huffman bits per weight, the zstd bits actually stored, the weights' bytes on disk
(packed vs zstd) and the load time of each artifact (``load_compressed``, median of ``--load-repeats``,
packed and zstd alternating in one loop). Task accuracy is left out: the bundled model answers 0-1 of 8
held-out questions before any compression (see bench/results/compress_methods.json).
Writes ``bench/results/compress_qat.json``.

Run: ``.venv/bin/python bench/compress_qat.py [--qat-steps 40 --qat-lr 1e-4]`` (~25 min on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


def code_stats(artifact: Path) -> dict:
    """Shannon / Huffman / stored bits per code over every quantized layer of ``artifact``."""
    from safetensors.torch import load_file

    from compress.artifact import WEIGHTS_NAME, code_key, read_codes, read_manifest
    from compress.entropy import code_histogram, huffman_bits, packed_bytes, shannon_bits
    from compress.export import _meta_model  # the architecture on the meta device: layer shapes, no weights

    manifest = read_manifest(artifact)
    tensors = load_file(str(artifact / WEIGHTS_NAME))
    linears = {n: m for n, m in _meta_model(artifact).named_modules() if hasattr(m, "in_features")}
    total, stored, packed, n, bits = None, 0, 0, 0, None
    for name, entry in manifest["quantized"].items():
        blob = tensors[code_key(name, entry)]
        bits, symmetric = entry["bits"], entry["symmetric"]
        q = read_codes(blob, entry, (linears[name].out_features, linears[name].in_features))
        counts = code_histogram(q, bits, symmetric)
        total = counts if total is None else [a + b for a, b in zip(total, counts)]
        stored += blob.numel()
        packed += packed_bytes(q.numel(), bits)
        n += q.numel()
    return {"codes": n, "bits": bits, "shannon_bits": round(shannon_bits(total), 4),
            "huffman_bits": round(huffman_bits(total), 4), "stored_bits": round(8 * stored / n, 4),
            "code_bytes": stored, "packed_code_bytes": packed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--windows", type=int, default=40, help="WikiText-2 test windows of 512 tokens")
    ap.add_argument("--calib", type=int, default=64, help="calibration windows of 512 tokens (WikiText-2 valid)")
    ap.add_argument("--qat-steps", type=int, default=40, help="QAT steps of 4 windows each")
    ap.add_argument("--qat-lr", type=float, default=1e-4, help="QAT AdamW peak learning rate (as recovery)")
    ap.add_argument("--qaf-steps", type=int, default=40, help="QAF steps of 4 windows each")
    ap.add_argument("--qaf-lr", type=float, default=5e-4, help="QAF AdamW peak learning rate (adapters only)")
    ap.add_argument("--qaf-rank", type=int, default=16)
    ap.add_argument("--loftq-iters", type=int, default=1)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64, help="64: 128 does not divide the model's 576")
    ap.add_argument("--load-repeats", type=int, default=5)
    ap.add_argument("--only", default="", help="comma-separated subset of the step names")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from compress.artifact import load_compressed, recode, safetensors_bytes
    from compress.stage import CompressConfig, compress_student
    from distill.config import shared_data_dir
    from distill.models import fetch_bundled_teacher

    data = shared_data_dir()
    test = data / "wikitext-2" / "wiki.test.tokens" if data else None
    if test is None or not test.is_file():
        sys.exit("../shared/data/wikitext-2 not found: this benchmark needs WikiText-2 (see README)")
    b, g = args.bits, args.group_size
    quant = {"bits": b, "group_size": g}
    qat = {"method": "qat", **quant, "recover_steps": args.qat_steps, "recover_lr": args.qat_lr}
    steps = {f"rtn{b}_g{g}": {"method": "rtn", **quant}, f"gptq{b}_g{g}": {"method": "gptq", **quant},
             f"qat{b}_g{g}": qat,
             f"qaf{b}_g{g}": {"method": "qaf", **quant, "recover_steps": args.qaf_steps, "recover_lr": args.qaf_lr,
                              "lora_rank": args.qaf_rank, "loftq_iters": args.loftq_iters}}
    names = [n for n in args.only.split(",") if n] or list(steps)
    if set(names) - set(steps):
        sys.exit(f"--only: unknown {sorted(set(names) - set(steps))}; choose from {', '.join(steps)}")
    cfg = CompressConfig(
        steps=[{**steps[n], "name": n} for n in names], chain=False, save_dtype="auto",
        eval={"text_path": str(test), "window": 512, "max_windows": args.windows, "dtype": "float32",
              "max_examples": 0, "latency": False},
        calibration={"n_samples": args.calib, "seq_len": 512, "seed": 0})
    out = Path(tempfile.mkdtemp(prefix="eakd-bench-qat-"))
    t0 = time.perf_counter()
    compress_student(cfg, fetch_bundled_teacher(), out)
    summary = json.loads((out / "summary.json").read_text())
    base = summary["baseline"]["perplexity"]
    rows = {s["name"]: s for s in summary["steps"]}
    for n in list(rows):  # the same codes entropy-coded: a zstd twin of each artifact
        rows[f"{n}_zstd"] = {**rows[n], "artifact": str(recode(rows[n]["artifact"], out / f"{n}_zstd", "zstd"))}

    loads: dict[str, list[float]] = {n: [] for n in rows}
    for _ in range(args.load_repeats):  # alternate, so drift hits every artifact alike
        for n, r in rows.items():
            t = time.perf_counter()
            load_compressed(r["artifact"])
            loads[n].append(time.perf_counter() - t)
    from distill.evaluate import load_eval_text, perplexity
    from distill.models import load_tokenizer

    tokenizer, text = load_tokenizer(fetch_bundled_teacher()), load_eval_text(test)
    table = {}
    for n, r in rows.items():
        ppl = r["after"]["perplexity"] if not n.endswith("_zstd") else perplexity(
            load_compressed(r["artifact"]), tokenizer, text, window=512, max_windows=args.windows,
            dtype="float32")["perplexity"]
        table[n] = {"perplexity": ppl, "rise": ppl / base - 1,
                    "weights_bytes": safetensors_bytes(r["artifact"]), "load_s": statistics.median(loads[n]),
                    "method_seconds": r["method_seconds"], **code_stats(Path(r["artifact"]))}
        for m in ("qat", "qaf"):
            if m in r["stats"]:
                table[n][m] = r["stats"][m]

    print(f"\nSmolLM2-135M, WikiText-2 test {summary['baseline']['windows']} x 512, calibration {args.calib} x 512; "
          f"baseline perplexity {base:.2f}; {os.cpu_count()} CPUs\n")
    print("| step | perplexity | vs baseline | bits/code: Shannon / Huffman / stored | weights MB | load s | method s |")
    print("|---|---|---|---|---|---|---|")
    for n, r in table.items():
        print(f"| {n} | {r['perplexity']:.2f} | {100 * r['rise']:+.1f}% | {r['shannon_bits']:.2f} / "
              f"{r['huffman_bits']:.2f} / {r['stored_bits']:.2f} | {r['weights_bytes'] / 1e6:.1f} | "
              f"{r['load_s']:.2f} | {r['method_seconds']:.0f} |")
    checks = []
    rtn = table.get(f"rtn{b}_g{g}")
    for label in ("QAT", "QAF"):
        q = table.get(f"{label.lower()}{b}_g{g}")
        if rtn and q:
            recovered = 1 - q["rise"] / rtn["rise"]
            checks.append((f"{label} int{b} recovers >= 50% of RTN's perplexity loss", recovered >= 0.5,
                           f"RTN {100 * rtn['rise']:+.1f}%, {label} {100 * q['rise']:+.1f}%: {100 * recovered:.0f}% recovered"))
    for n in names:
        z = table.get(f"{n}_zstd")
        if z and n in table:
            p = table[n]
            checks.append((f"{n}: zstd codes smaller than packed, same perplexity",
                           z["code_bytes"] < p["code_bytes"] and abs(z["perplexity"] - p["perplexity"]) < 1e-6 * base,
                           f"codes {p['code_bytes'] / 1e6:.2f} -> {z['code_bytes'] / 1e6:.2f} MB "
                           f"({z['code_bytes'] / p['code_bytes']:.3f}x), weights file {p['weights_bytes'] / 1e6:.1f} -> "
                           f"{z['weights_bytes'] / 1e6:.1f} MB, load {p['load_s']:.2f} -> {z['load_s']:.2f} s"))
    print()
    for claim, ok, text in checks:
        print(f"- [{'met' if ok else 'MISSED'}] {claim}: {text}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / ("compress_qat.json" if not args.only else f"compress_qat_{'_'.join(names)}.json")
    path.write_text(json.dumps({"baseline": summary["baseline"], "steps": table, "config": vars(args),
                                "targets": [{"claim": c, "met": ok, "numbers": t} for c, ok, t in checks],
                                "calibration": summary["calibration"], "eval": summary["eval"],
                                "cpu_count": os.cpu_count(), "seconds": round(time.perf_counter() - t0, 1)},
                               indent=2, default=str))
    print(f"\nwrote {path} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
