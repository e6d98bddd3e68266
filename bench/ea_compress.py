"""Does a compressed student keep its abilities? Calibration text vs the student's own task data (issue 22).

Takes a finished pipeline run (``make demo`` writes one under ``runs/``: its ``student/`` and ``dataset/``)
and compresses the student side by side (``chain: false``) with int4 GPTQ (group 64) and two 50 %
unstructured pruning steps (Wanda, SparseGPT), once per calibration source
(``compress.calibration.data``):

* ``text``    — 512-token windows of WikiText-2 valid (generic web text, the usual GPTQ/Wanda recipe);
* ``dataset`` — windows of the run's training conversations in the student's chat template (what the
  student reads when it does its tasks);
* ``mix``     — half of each.

``--steps`` picks the presets (default ``gptq64,wanda50,sparsegpt50``; also ``gptq32``, ``int8``,
``sparsegpt40``/``sparsegpt30`` for a sparsity sweep, and ``qat64``/``qat32``: int4 quantization-aware training,
``--qat-steps`` KD steps from the student through the fake quantizer, :mod:`compress.qat`). With ``--recover N``
each pruning preset runs a second time followed by N steps that distil the student back into the pruned model on
the calibration windows, keeping the zeros (``recover_steps`` on a pruning step).

Every model (the student and each step) answers the EA probes (:mod:`distill.probes`) on fresh held-out
items of the run's ICL families, zero-shot, plus the control families; the figure is the share of the
student's probe score each step keeps (issue 22 asks for >= 90 % per ability). Each seed draws new
calibration windows and new probe items, so the spread covers both.

Writes ``bench/results/ea_compress.json``. Run: ``.venv/bin/python bench/ea_compress.py [--run runs/demo-...]
[--seeds 0,1] [--data text,dataset,mix]`` (~6 min per source and seed on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

from bench.ea_transfer import cpu_flags  # noqa: E402
from compress.config import SPARSIFYING, TRAINED  # noqa: E402  (torch-free)

PRESETS = {"gptq64": {"method": "gptq", "bits": 4, "group_size": 64},
           "gptq32": {"method": "gptq", "bits": 4, "group_size": 32},
           "int8": {"method": "rtn_int8"},
           "wanda50": {"method": "wanda", "sparsity": 0.5},
           "sparsegpt50": {"method": "sparsegpt", "sparsity": 0.5},
           "sparsegpt40": {"method": "sparsegpt", "sparsity": 0.4},
           "sparsegpt30": {"method": "sparsegpt", "sparsity": 0.3},
           "qat64": {"method": "qat", "bits": 4, "group_size": 64},
           "qat32": {"method": "qat", "bits": 4, "group_size": 32}}


def steps_for(args) -> list[dict]:
    """The ``--steps`` presets (each named after its preset), and with ``--recover N`` every pruning preset again
    followed by N masked recovery-KD steps from the student (``recover_steps``: the zeros stay zeros)."""
    names = [n for n in args.steps.split(",") if n]
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        sys.exit(f"--steps: unknown preset(s) {unknown}; choose from {sorted(PRESETS)}")
    steps = [PRESETS[n] | {"name": n} | ({"recover_steps": args.qat_steps, "recover_lr": args.qat_lr}
                                          if PRESETS[n]["method"] in TRAINED else {}) for n in names]
    if args.recover:
        steps += [PRESETS[n] | {"name": f"{n}+recover{args.recover}", "recover_steps": args.recover,
                                "recover_lr": args.recover_lr}
                  for n in names if PRESETS[n]["method"] in SPARSIFYING]
    return steps


def newest_run() -> Path:
    runs = sorted((ROOT / "runs").glob("demo-*/student/metrics.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        sys.exit("no finished demo run under runs/ (runs/demo-*/student); run `make demo` first or pass --run")
    return runs[-1].parent.parent


def compress_once(run: Path, data: str, seed: int, args, work: Path) -> dict:
    """One ``compress_student`` over the ``--steps`` presets with calibration ``data`` and seed ``seed``: the kept shares."""
    from compress.eval import ability_scores
    from compress.stage import CalibrationConfig, CompressConfig, CompressStep, EvalConfig, compress_student
    from distill.config import load_config
    from distill.evaluate import find_eval_text
    from flows.config import PipelineConfig

    cfg = load_config(PipelineConfig, run / "config.yaml") if (run / "config.yaml").is_file() else None
    families = cfg.evaluate.probes.icl_tasks if cfg and cfg.evaluate.probes else None
    probes = {"per_task": args.per_task, "shots": 0, "cot_tasks": [], "if_items": 0, "teacher": False,
              "seed": 1234 + seed} | ({"icl_tasks": families} if families else {})
    ccfg = CompressConfig(chain=False, steps=[CompressStep(**s) for s in steps_for(args)],
                          calibration=CalibrationConfig(data=data, n_samples=args.calib, seq_len=512, seed=seed),
                          eval=EvalConfig(window=512, max_windows=args.windows, max_examples=0, latency=False,
                                          probes=probes))
    text, _ = find_eval_text(None, run / "dataset", "compress.eval.text_path")
    out = work / f"{data}_{seed}"
    t0 = time.perf_counter()
    compress_student(ccfg, run / "student", out, eval_text=text, tasks_dataset=run / "dataset")
    summary = json.loads((out / "summary.json").read_text())
    base = ability_scores(summary["baseline"])
    steps = {}
    for st in summary["steps"]:
        now = ability_scores(st["after"])
        steps[st["name"]] = {"scores": now, "kept": {k: round(now[k] / base[k], 4) for k in now if base.get(k)},
                             "perplexity": st["after"]["perplexity"]}
    return {"data": data, "seed": seed, "calibration": summary["calibration"]["source"], "student": base,
            "student_perplexity": summary["baseline"]["perplexity"], "steps": steps,
            "seconds": round(time.perf_counter() - t0, 1)}


def summarize(results: list[dict]) -> dict:
    out: dict = {}
    for r in results:
        for step, v in r["steps"].items():
            for ability, kept in v["kept"].items():
                out.setdefault(r["data"], {}).setdefault(step, {}).setdefault(ability, []).append(kept)
    return {d: {s: {a: {"mean": round(statistics.mean(xs), 4),
                        "stdev": round(statistics.stdev(xs), 4) if len(xs) > 1 else None, "values": xs}
                    for a, xs in ab.items()} for s, ab in st.items()} for d, st in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, default=None, help="a finished run folder (default: the newest runs/demo-*)")
    ap.add_argument("--data", default="text,dataset,mix", help="calibration sources to compare")
    ap.add_argument("--seeds", default="0,1", help="calibration windows and probe items per seed")
    ap.add_argument("--calib", type=int, default=16, help="calibration windows of 512 tokens")
    ap.add_argument("--windows", type=int, default=8, help="perplexity windows (WikiText-2 test, quick protocol)")
    ap.add_argument("--per-task", type=int, default=8, help="held-out probe items per family")
    ap.add_argument("--steps", default="gptq64,wanda50,sparsegpt50", help=f"compression presets, from {sorted(PRESETS)}")
    ap.add_argument("--recover", type=int, default=0,
                    help="also each pruning preset followed by this many masked recovery-KD steps (0: off)")
    ap.add_argument("--recover-lr", type=float, default=1e-4, help="recovery AdamW learning rate")
    ap.add_argument("--qat-steps", type=int, default=32,
                    help="qat presets: KD steps through the int4 fake quantizer from the student (4 windows each)")
    ap.add_argument("--qat-lr", type=float, default=1e-4, help="qat presets: AdamW peak learning rate")
    ap.add_argument("--out", default="ea_compress.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    run = (args.run or newest_run()).resolve()
    if not (run / "student").is_dir() or not (run / "dataset").is_dir():
        sys.exit(f"--run {run}: needs student/ and dataset/ folders (a finished `eakd run` with generate and train)")
    work = Path(tempfile.mkdtemp(prefix="eakd-bench-eacomp-"))
    results: list[dict] = []
    t0 = time.perf_counter()
    for seed in [int(s) for s in args.seeds.split(",") if s]:
        for data in [d for d in args.data.split(",") if d]:
            r = compress_once(run, data, seed, args, work)
            results.append(r)
            print(f"seed {seed} {data:8s} student {r['student']} | " + " | ".join(
                f"{s}: kept {v['kept']}" for s, v in r["steps"].items()), flush=True)
            report = {"cpu": cpu_flags(), "run": str(run), "config": {k: str(v) for k, v in vars(args).items()},
                      "steps": steps_for(args), "summary": summarize(results), "results": results,
                      "seconds": round(time.perf_counter() - t0, 1)}
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / args.out).write_text(json.dumps(report, indent=1))
    print(f"\n{'calibration':12s} {'step':22s} " + " ".join(f"{a:>16s}" for a in ("ICL", "ctl")))
    for data, steps in report["summary"].items():
        for step, ab in steps.items():
            cells = [f"{100 * ab[a]['mean']:.0f}%" + (f" ± {100 * ab[a]['stdev']:.0f}" if ab[a]["stdev"] is not None else "")
                     if a in ab else "—" for a in ("ICL", "ctl")]
            print(f"{data:12s} {step:22s} " + " ".join(f"{c:>16s}" for c in cells))
    print(f"wrote {RESULTS / args.out} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
