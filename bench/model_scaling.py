"""Peak memory and wall time of compression against model size: streamed (block by block) vs whole-model.

Random-initialised Llama-architecture models are built from configs (no hub): the bundled SmolLM2-135M's
shape, a ~0.5B shape (Qwen2.5-0.5B's widths) and a ~1.5B shape (Qwen2.5-1.5B's widths), all with the
bundled tokenizer's 49,152-token vocabulary and tied embeddings, stored in bf16 like the bundled model.
Each (model, method, path) runs :func:`compress.stage.compress_student` in its own child process, which
reports its own peak RSS (``VmHWM`` from ``/proc/self/status``: the whole process, imports included; not
``ru_maxrss``, which Linux carries across ``exec`` from the forked parent that built the model) and wall time; GPTQ int4
g64 and Wanda 50 % run on the streamed path for every size and on the whole-model path where
``--whole-max-params`` allows, side by side in one run. Random weights make the perplexities meaningless:
they are recorded only to show both paths compute the same model (and the artifacts are compared byte for
byte where both ran). Writes ``bench/results/model_scaling.json`` and ``model_scaling.svg`` (peak RSS vs
parameters).

Run: ``nice -n 10 .venv/bin/python bench/model_scaling.py [--sizes 135m,0.5b,1.5b] [--calib 4] [--seq 128] [--merge]``
(``--merge``: keep the result file's rows of the (shape, method) pairs this run does not measure, if measured with
the same settings; each row records its ``cpu``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"

SHAPES = {  # name -> Llama config fields (vocab 49152, tied, as the bundled model)
    "135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
             "num_key_value_heads": 3},
    "0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
             "num_key_value_heads": 2},
    "1.5b": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
             "num_key_value_heads": 2},
}
METHODS = {"gptq4_g64": {"method": "gptq", "bits": 4, "group_size": 64, "act_order": False},
           "wanda50": {"method": "wanda", "sparsity": 0.5}}


def build(shape: str, out: Path, tokenizer_dir: Path) -> int:
    """Save a random-initialised bf16 Llama of ``shape`` with the bundled tokenizer at ``out``; its parameters."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=2048,
                      rms_norm_eps=1e-5, **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to(torch.bfloat16).to_empty(device="cpu")
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0) if name.endswith("norm.weight") else p.normal_(0.0, 0.02)
    model.tie_weights()  # to_empty untied the head: a checkpoint whose head differs from its tied embedding is
    # read differently by transformers (its head) and the streamed reader (the embedding)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out)
    from compress.streamed import model_fp32_bytes

    return model_fp32_bytes(out) // 4  # the tied head counted once (to_empty above unties it in memory)


def child(model_dir: str, method: str, streaming: str, out: str, calib: int, seq: int) -> None:
    """One compress run; prints its measurements as one JSON line."""
    from compress.config import CalibrationConfig, CompressConfig, CompressStep, EvalConfig
    from compress.stage import compress_student
    from distill.config import shared_data_dir

    text = (shared_data_dir() / "wikitext-2" / "wiki.valid.tokens").read_text()[:400_000]
    cfg = CompressConfig(steps=[CompressStep(**METHODS[method])], streaming=streaming == "true",
                         calibration=CalibrationConfig(n_samples=calib, seq_len=seq),
                         eval=EvalConfig(window=seq, max_windows=2, dtype="float32", latency=False, max_examples=0))
    start = time.perf_counter()
    compress_student(cfg, Path(model_dir), Path(out), eval_text=text[200_000:], calib_text=text[:200_000],
                     calib_source="wikitext-2 valid")
    wall = time.perf_counter() - start
    summary = json.loads((Path(out) / "summary.json").read_text())
    step = summary["steps"][0]
    hwm = next(int(x.split()[1]) for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM"))
    print(json.dumps({"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "vmhwm_bytes": hwm * 1024, "wall_s": round(wall, 1), "method_s": step["method_seconds"],
                      "streamed": summary["streamed"], "ppl_before": summary["baseline"]["perplexity"],
                      "ppl_after": step["after"]["perplexity"], "artifact": step["artifact"]}))


def run_child(model_dir: Path, method: str, streaming: bool, out: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--child", str(model_dir), method, "true" if streaming else "false", str(out),
           str(args.calib), str(args.seq)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def same_bytes(a: str, b: str) -> bool:
    return all((Path(a) / n).read_bytes() == (Path(b) / n).read_bytes()
               for n in ("model.safetensors", "eakd_compression.json"))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method in METHODS:
        for streamed, style in ((True, "-o"), (False, "--s")):
            pts = [(r["params"], r["vmhwm_bytes"] / 2 ** 30) for r in rows
                   if r["method"] == method and r.get("streamed") == streamed and "vmhwm_bytes" in r]
            if pts:
                ax.plot(*zip(*pts), style, label=f"{method}, {'streamed' if streamed else 'whole model'}")
    sizes = sorted({r["params"] for r in rows})
    ax.plot(sizes, [4 * p / 2 ** 30 for p in sizes], ":", color="grey", label="fp32 weights")
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("peak RSS (GiB)")
    ax.set_title("compression peak memory vs model size (random Llama shapes)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def merged(rows: list[dict], settings: dict) -> list[dict]:
    """``rows`` plus the result file's rows of the (shape, method) pairs this run did not measure; refused (exit)
    when the file was measured with other settings."""
    path = RESULTS / "model_scaling.json"
    if not path.is_file():
        return rows
    old = json.loads(path.read_text())
    if old.get("settings") != settings:
        sys.exit(f"--merge: {path} was measured with other settings ({old.get('settings')}); rerun without --merge")
    done = {(r["shape"], r["method"]) for r in rows}
    return [r for r in old["rows"] if (r["shape"], r["method"]) not in done] + rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(*sys.argv[2:6], int(sys.argv[6]), int(sys.argv[7]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="135m,0.5b,1.5b")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--calib", type=int, default=4, help="calibration windows (few: a CPU run in minutes)")
    ap.add_argument("--seq", type=int, default=128, help="tokens per calibration and perplexity window")
    ap.add_argument("--gptq-max-params", type=float, default=2e9, help="run GPTQ up to this size (CPU time)")
    ap.add_argument("--whole-max-params", type=float, default=6e8, help="run the whole-model path up to this size")
    ap.add_argument("--merge", action="store_true", help="keep the result file's rows of other (shape, method) pairs (same settings)")
    args = ap.parse_args()
    from bench.machine import lscpu
    from distill.models import fetch_bundled_teacher

    tokenizer_dir = fetch_bundled_teacher()
    rows = []
    with tempfile.TemporaryDirectory(prefix="eakd-scaling-") as tmp:
        for shape in args.sizes.split(","):
            model_dir = Path(tmp) / shape
            params = build(shape, model_dir, tokenizer_dir)
            for method in args.methods.split(","):
                if method.startswith("gptq") and params > args.gptq_max_params:
                    rows.append({"shape": shape, "params": params, "method": method, "skipped": "--gptq-max-params"})
                    continue
                arms = [True] + ([False] if params <= args.whole_max_params else [])
                got = {}
                for streaming in arms:
                    out = Path(tmp) / f"{shape}-{method}-{streaming}"
                    r = run_child(model_dir, method, streaming, out, args)
                    got[streaming] = r
                    rows.append({"shape": shape, "params": params, "fp32_bytes": 4 * params, "method": method,
                                 "streamed": streaming, **r})
                    if "vmhwm_bytes" in r:
                        print(f"{shape:>5} {params / 1e6:7.0f}M {method:10} {'streamed' if streaming else 'whole':8} "
                              f"peak RSS {r['vmhwm_bytes'] / 2 ** 30:5.2f} GiB "
                              f"({r['vmhwm_bytes'] / (4 * params):.2f}x fp32) wall {r['wall_s']:6.1f} s", flush=True)
                    else:
                        print(f"{shape} {method} streamed={streaming}: {r['error']}", flush=True)
                if all("artifact" in got.get(s, {}) for s in (True, False)):
                    rows[-1]["same_bytes_as_streamed"] = same_bytes(got[True]["artifact"], got[False]["artifact"])
                for r in got.values():
                    if r.get("artifact"):
                        subprocess.run(["rm", "-rf", str(Path(r["artifact"]).parent)], check=False)
            subprocess.run(["rm", "-rf", str(model_dir)], check=False)
    model, flags = lscpu()
    for r in rows:
        r["cpu"] = f"{model}; {'AVX-512 BF16' if 'avx512_bf16' in flags else 'AVX2 only'}"
    settings = {"calibration": f"{args.calib} x {args.seq} tokens of WikiText-2 valid",
                "eval": f"2 windows x {args.seq} tokens, fp32", "gptq": METHODS["gptq4_g64"],
                "wanda": METHODS["wanda50"], "weights": "random normal(0, 0.02), bf16 on disk, tied"}
    rows = merged(rows, settings) if args.merge else rows
    biggest = [r for r in rows if r.get("streamed") and r["params"] == max(x["params"] for x in rows) and "vmhwm_bytes" in r]
    result = {"machine": {"cpu": model, "avx512_bf16": "avx512_bf16" in flags, "cores": os.cpu_count()},
              "settings": settings,
              "target": "largest model: peak RSS <= 0.35x its fp32 bytes (streamed)",
              "target_met": bool(biggest) and all(r["vmhwm_bytes"] <= 0.35 * r["fp32_bytes"] for r in biggest),
              "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "model_scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, RESULTS / "model_scaling.svg")
    print(f"target met: {result['target_met']}; wrote {RESULTS / 'model_scaling.json'} and model_scaling.svg")


if __name__ == "__main__":
    main()
