"""Every compression method on the bundled SmolLM2-135M, side by side in one run, through `eakd compress`.

Runs :func:`compress.stage.compress_student` with ``chain: false`` (each step from the same source model),
calibration on WikiText-2 valid (seeded random windows), perplexity on WikiText-2 test with the fixed
protocol of :mod:`distill.evaluate` (non-overlapping 512-token windows; ``--windows`` of them, or all
with ``--full``). Checks the issue's targets and prints them with the table; writes
``bench/results/compress_methods.json`` and a size-vs-perplexity scatter ``compress_methods.svg`` (with
``--only``: ``compress_methods_<names>.*``, so a partial rerun keeps the full table).

Run: ``.venv/bin/python bench/compress_methods.py [--windows 40] [--calib 64] [--only gptq,rtn4]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"

STEPS = {  # name -> compress step (the must-show settings)
    "rtn8": {"method": "rtn", "bits": 8, "group_size": None},
    "rtn4_g64": {"method": "rtn", "bits": 4, "group_size": 64},
    "gptq4_g64": {"method": "gptq", "bits": 4, "group_size": 64},
    "awq4_g64": {"method": "awq", "bits": 4, "group_size": 64},
    "magnitude50": {"method": "magnitude", "sparsity": 0.5},
    "wanda50": {"method": "wanda", "sparsity": 0.5},
    "wanda50_owl": {"method": "wanda", "sparsity": 0.5, "allocation": "owl"},  # issue 10: non-uniform, same budget
    "wanda70": {"method": "wanda", "sparsity": 0.7},
    "wanda70_owl": {"method": "wanda", "sparsity": 0.7, "allocation": "owl"},
    "sparsegpt50": {"method": "sparsegpt", "sparsity": 0.5},
    "wanda_2of4": {"method": "wanda", "nm": "2:4"},
    "sparsegpt_2of4": {"method": "sparsegpt", "nm": "2:4"},
    "depth25": {"method": "depth", "fraction": 0.25},
    "depth25_recovered": {"method": "depth", "fraction": 0.25, "recover_steps": 24, "recover_lr": 1e-4},
    "width_mlp25": {"method": "width", "mlp_fraction": 0.25},
    # plain SVD, the same (Fisher) rank allocation as the two below, whichever other steps run beside it
    "svd20": {"method": "svd", "param_reduction": 0.2, "rank_allocation": "fisher"},
    "asvd20": {"method": "asvd", "param_reduction": 0.2},
    "svdllm20": {"method": "svdllm", "param_reduction": 0.2},
    # issue 10: the same budget split by measured sensitivity (svdllm20's auto = fisher) vs without measuring
    "svdllm20_energy": {"method": "svdllm", "param_reduction": 0.2, "rank_allocation": "energy"},
    "svdllm20_uniform": {"method": "svdllm", "param_reduction": 0.2, "rank_allocation": "uniform"},
    "svdllm20_per_layer": {"method": "svdllm", "param_reduction": 0.2, "rank_allocation": "per_layer"},
    "tucker20": {"method": "tucker", "param_reduction": 0.2},  # issue 10: the tensor format at svd20's budget
    "svd20_per_layer": {"method": "svd", "param_reduction": 0.2, "rank_allocation": "per_layer"},  # tucker20's split
}


EXTRA = {"wanda50_owl", "wanda70", "wanda70_owl",  # run only when named in --only (compress_methods_<names>.json)
         "svdllm20_energy", "svdllm20_uniform", "svdllm20_per_layer", "tucker20",
         "svd20_per_layer"}


def targets(rows: dict, base: float) -> list[tuple[str, bool | None, str]]:
    """The issue's must-shows as (claim, met?, numbers); None when a needed row was not run."""
    rise = {k: r["after"]["perplexity"] / base - 1 for k, r in rows.items()}

    def check(claim, keys, ok, text):
        if not all(k in rise for k in keys):
            return (claim, None, "not run")
        return (claim, bool(ok()), text())

    return [
        check("int8 RTN: perplexity increase < 1%", ["rtn8"], lambda: rise["rtn8"] < 0.01,
              lambda: f"{100 * rise['rtn8']:+.2f}%"),
        check("int4 g64 (g128 does not divide 576): GPTQ increase <= 0.5x RTN's", ["gptq4_g64", "rtn4_g64"],
              lambda: rise["gptq4_g64"] <= 0.5 * rise["rtn4_g64"],
              lambda: f"GPTQ {100 * rise['gptq4_g64']:+.2f}% vs RTN {100 * rise['rtn4_g64']:+.2f}%"),
        check("50% unstructured: Wanda <= 0.5x magnitude's increase", ["wanda50", "magnitude50"],
              lambda: rise["wanda50"] <= 0.5 * rise["magnitude50"],
              lambda: f"Wanda {100 * rise['wanda50']:+.1f}% vs magnitude {100 * rise['magnitude50']:+.1f}%"),
        check("50% unstructured: SparseGPT <= 0.5x magnitude's increase", ["sparsegpt50", "magnitude50"],
              lambda: rise["sparsegpt50"] <= 0.5 * rise["magnitude50"],
              lambda: f"SparseGPT {100 * rise['sparsegpt50']:+.1f}% vs magnitude {100 * rise['magnitude50']:+.1f}%"),
        check("depth 25% + recovery closes >= 50% of the gap", ["depth25", "depth25_recovered"],
              lambda: rise["depth25_recovered"] <= 0.5 * rise["depth25"],
              lambda: f"{100 * rise['depth25']:+.0f}% -> {100 * rise['depth25_recovered']:+.0f}% "
                      f"({100 * (1 - rise['depth25_recovered'] / rise['depth25']):.0f}% of the gap closed)"),
        check("activation-aware SVD at 20%: increase <= 0.3x plain SVD's", ["svdllm20", "svd20"],
              lambda: min(rise["svdllm20"], rise.get("asvd20", float("inf"))) <= 0.3 * rise["svd20"],
              lambda: f"SVD-LLM {100 * rise['svdllm20']:+.0f}%, ASVD {100 * rise.get('asvd20', float('nan')):+.0f}% "
                      f"vs SVD {100 * rise['svd20']:+.0f}%"),
    ]


def scatter_svg(points: list[tuple[str, float, float]], base: tuple[float, float]) -> str:
    """A dependency-free SVG: bytes on disk (MB, x) vs perplexity (log y), one labelled point per method."""
    import math

    w, h, pad = 720, 420, 60
    xs = [p[1] for p in points] + [base[0]]
    ys = [math.log(p[2]) for p in points] + [math.log(base[1])]
    x0, x1, y0, y1 = 0, max(xs) * 1.05, min(ys) - 0.1, max(ys) + 0.1

    def px(x):
        return pad + (x - x0) / (x1 - x0) * (w - 2 * pad)

    def py(y):
        return h - pad - (y - y0) / (y1 - y0) * (h - 2 * pad)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">',
           f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
           f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>',
           f'<text x="{w / 2}" y="{h - 20}" text-anchor="middle">bytes on disk (MB)</text>',
           f'<text x="15" y="{h / 2}" transform="rotate(-90 15 {h / 2})" text-anchor="middle">WikiText-2 perplexity (log)</text>']
    for label, mb, ppl in [("baseline", *base)] + points:
        x, y = px(mb), py(math.log(ppl))
        color = "red" if label == "baseline" else "steelblue"
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{color}"/>')
        out.append(f'<text x="{x + 6:.1f}" y="{y - 4:.1f}">{label} ({ppl:.1f})</text>')
    out.append("</svg>")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--windows", type=int, default=40, help="WikiText-2 test windows of 512 tokens (quick protocol)")
    ap.add_argument("--full", action="store_true", help="score every window of WikiText-2 test")
    ap.add_argument("--calib", type=int, default=64, help="calibration windows of 512 tokens from WikiText-2 valid")
    ap.add_argument("--only", default="", help="comma-separated subset of: " + ",".join(STEPS))
    ap.add_argument("--recover-steps", type=int, default=STEPS["depth25_recovered"]["recover_steps"],
                    help="KD steps of the depth25_recovered row (4 windows of 512 tokens each)")
    ap.add_argument("--tasks", default=None, help="eakd dataset whose held-out questions give task accuracy per "
                    "method (e.g. runs/<demo run>/dataset from `make demo`); default: none")
    ap.add_argument("--tasks-examples", type=int, default=16, help="held-out questions answered per method")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from compress.stage import CompressConfig, compress_student
    from distill.config import shared_data_dir
    from distill.models import fetch_bundled_teacher

    data = shared_data_dir()
    test = data / "wikitext-2" / "wiki.test.tokens" if data else None
    if test is None or not test.is_file():
        sys.exit("../shared/data/wikitext-2 not found: this benchmark needs WikiText-2 (see README)")
    STEPS["depth25_recovered"]["recover_steps"] = args.recover_steps
    names = [n for n in args.only.split(",") if n] or [n for n in STEPS if n not in EXTRA]
    unknown = set(names) - set(STEPS)
    if unknown:
        sys.exit(f"--only: unknown {sorted(unknown)}; choose from {', '.join(STEPS)}")
    cfg = CompressConfig(
        steps=[{**STEPS[n], "name": n} for n in names], chain=False, save_dtype="auto",
        eval={"text_path": str(test), "window": 512, "max_windows": None if args.full else args.windows,
              "dtype": "float32", "tasks_dataset": args.tasks, "max_examples": args.tasks_examples},
        calibration={"n_samples": args.calib, "seq_len": 512, "seed": 0})
    out = Path(tempfile.mkdtemp(prefix="eakd-bench-compress-"))
    t = time.perf_counter()
    compress_student(cfg, fetch_bundled_teacher(), out)
    summary = json.loads((out / "summary.json").read_text())
    base = summary["baseline"]
    rows = {s["name"]: s for s in summary["steps"]}
    print(f"\nSmolLM2-135M, WikiText-2 test ({base['windows']} x 512 tokens), calibration {args.calib} x 512 "
          f"from WikiText-2 valid; {os.cpu_count()} CPU threads, fp32 compute\n")
    from compress.eval import decode_latency, task_acc

    print("| method | params (non-zero) | bytes | perplexity | vs baseline | task accuracy | latency | method s |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| baseline | {base['params_total'] / 1e6:.1f}M ({base['params_nonzero'] / 1e6:.1f}M) | "
          f"{base['bytes_on_disk'] / 1e6:.1f} MB | {base['perplexity']:.2f} | | {task_acc(base)} | {decode_latency(base)} | |")
    for n, r in rows.items():
        a = r["after"]
        print(f"| {n} | {a['params_total'] / 1e6:.1f}M ({a['params_nonzero'] / 1e6:.1f}M) | "
              f"{a['bytes_on_disk'] / 1e6:.1f} MB | {a['perplexity']:.2f} | "
              f"{100 * (a['perplexity'] / base['perplexity'] - 1):+.1f}% | {task_acc(a)} | {decode_latency(a)} | "
              f"{r['method_seconds']:.0f} |")
    checks = targets(rows, base["perplexity"])
    print()
    for claim, ok, text in checks:
        print(f"- [{'met' if ok else 'MISSED' if ok is False else 'n/a'}] {claim}: {text}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"baseline": base, "steps": rows, "targets": [{"claim": c, "met": ok, "numbers": t} for c, ok, t in checks],
              "calibration": summary["calibration"], "eval": summary["eval"], "seconds": time.perf_counter() - t,
              "cpu_count": os.cpu_count()}
    stem = "compress_methods" if not args.only else "compress_methods_" + "_".join(names)  # a subset keeps the full table
    (RESULTS / f"{stem}.json").write_text(json.dumps(record, indent=2, default=str))
    points = [(n, r["after"]["bytes_on_disk"] / 1e6, r["after"]["perplexity"]) for n, r in rows.items()]
    (RESULTS / f"{stem}.svg").write_text(scatter_svg(points, (base["bytes_on_disk"] / 1e6, base["perplexity"])))
    print(f"\nwrote {RESULTS / stem}.json and {stem}.svg ({time.perf_counter() - t:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
