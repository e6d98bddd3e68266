"""EA transfer: from a task and 16 examples to a smaller zero-shot student, measured per ability (issue 22).

The product path, end to end, for several in-context-learning task families at once, per seed:

1. a task file (``generate.tasks``, :mod:`distill.data.tasks`) per family: 16 labelled examples (the demo pool) and
   either ``--inputs`` unlabelled inputs drawn by the family's generator ("hand-written": what a user would
   type) or none and ``synthesize: --inputs`` (the teacher writes them, :mod:`distill.data.synth`);
2. ``generate_dataset``: the bundled teacher (vLLM in-process) labels every input with 4 chat demos from the
   pool; the student learns the erased zero-shot prompt (``erase_demos``);
3. ``train_student``: each arm (below) on its dataset;
4. the EA probes (:mod:`distill.probes`): fresh held-out items of each family (never a training input nor a
   demo: :func:`distill.probes.run.training_inputs` excludes them), 0-shot and 4-shot, for the teacher
   (through ``query_teacher``), the student's base (the bundled model) and every trained student; control
   families that no arm trains on (``continent``, ``capital``), graded lenient, to catch negative transfer.

Arms (``--arms``): ``pruned24`` a depth-pruned student (24 of 30 layers) + LoRA, SFT on the teacher's answers;
``pruned24_synth`` the same on teacher-written inputs; ``pruned24_kd`` the same data with top-5 logit KD
(``kd.alpha_ce`` 0.5) instead of SFT; ``lora_teacher`` the bundled model itself + LoRA (student = teacher
architecture), SFT; ``lora_teacher_replay`` the same with 48 general instructions mixed in (``generate.replay``);
``pruned24_kd_if`` the ``pruned24_kd`` arm plus ``--if-prompts`` verifiable instructions, 4 teacher samples each,
only those passing every check kept (``generate.replay.verifiable``); ``--if-items N`` adds the IF probe.

Gap closed = (student 0-shot − base 0-shot) / (teacher 4-shot − base 0-shot), pooled over the families'
held-out items; mean and spread over ``--seeds`` (each seed draws new examples, inputs, probe items, demo
choices and training order). Targets (issue 22): pruned24 ≥ 80 %, lora_teacher ≥ 90 %, synthesized inputs
≥ 90 % of hand-written inputs' gap, controls at baseline.

``--measure`` instead prints the teacher's 0-shot and 4-shot accuracy on every ICL family (what picked the
default families: k-shot ≥ 40 % and ≥ 15 points above 0-shot), and the CoT families' direct vs CoT accuracy.

Writes ``bench/results/ea_transfer.json`` (``--out``). Run: ``.venv/bin/python bench/ea_transfer.py``
(defaults: 6 families, 2 seeds, 4 arms; ~60-90 min on 2 CPU cores); ``--seeds 0 --arms pruned24 --inputs 8
--steps 4 --per-task 2`` is a smoke run.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

from bench.machine import lscpu  # noqa: E402

KD = {"alpha_ce": 0.5}  # the top-5 logit KD arms: train.kd with these settings (the rest at their defaults)
ARMS = {  # name -> (keep_layers, input source, logit KD settings or None for SFT)
    "pruned24": (24, "hand", None),
    "pruned24_synth": (24, "synth", None),
    "pruned24_kd": (24, "hand", KD),
    "lora_teacher": (None, "hand", None),
    "lora_teacher_replay": (None, "hand_replay", None),  # + 48 general instructions (generate.replay)
    # IF: + --if-prompts verifiable instructions, 4 teacher samples each, kept only where every check passes
    # (generate.replay.verifiable: rejection sampling with a verifier); measure with --if-items > 0
    "pruned24_kd_if": (24, "hand_if", KD),
    # SFT vs logit KD, why (--arms ...,pruned24_kd_*): the CE share, the temperature, the divergence
    "pruned24_kd_a0": (24, "hand", {"alpha_ce": 0.0}),
    "pruned24_kd_a09": (24, "hand", {"alpha_ce": 0.9}),
    "pruned24_kd_t2": (24, "hand", {"alpha_ce": 0.5, "temperature": 2.0}),
    "pruned24_kd_rkl": (24, "hand", {"alpha_ce": 0.5, "method": "reverse_kl"}),
}


def cpu_flags() -> str:
    model, flags = lscpu()
    if not flags and model == "unknown":  # no lscpu
        return platform.processor()
    return f"{model}; " + ("AVX-512 BF16" if "avx512_bf16" in flags else "AVX2 only" if "avx2" in flags else "no AVX2")


def write_tasks(path: Path, families: list[str], examples: int, inputs: int, seed: int, synth: bool) -> Path:
    import yaml

    from distill.probes.families import task_file_entries

    entries = task_file_entries(families, examples, inputs, 2, seed)
    for e in entries:
        if synth:
            e["synthesize"], e["inputs"] = len(e["inputs"]), []
    path.write_text(yaml.safe_dump({"tasks": entries}, sort_keys=False))
    return path


def replay_settings(source: str, seed: int, if_prompts: int) -> dict:
    """The generate settings a source adds: none, 48 general instructions (``_replay``), or ``if_prompts``
    verifiable ones sampled 4 times each at temperature 0.8, failing samples removed (``_if``)."""
    from distill.data.config import SamplingConfig
    from distill.data.replay import ReplayConfig

    if source.endswith("_replay"):
        return {"replay": ReplayConfig(n=48, seed=seed),
                "sampling_per_style": {"instruct": SamplingConfig(max_tokens=64, top_logprobs=5)}}
    if source.endswith("_if"):
        return {"replay": ReplayConfig(n=0, seed=seed, verifiable=if_prompts),
                "sampling_per_style": {"instruct": SamplingConfig(max_tokens=160, top_logprobs=5, n=4, temperature=0.8,
                                                                  seed=seed)}}
    return {}


def generate(tasks: Path, out: Path, teacher_cfg, seed: int, source: str = "hand", if_prompts: int = 0) -> tuple[Path, dict]:
    from distill.data.dataset import GenerateConfig, SamplingConfig, generate_dataset
    from distill.data.synth import SynthesisConfig

    cfg = GenerateConfig(tasks=str(tasks), styles=["icl"], num_demos=4, demo_format="chat", erase_demos=True,
                         demo_seed=seed, synthesis=SynthesisConfig(seed=seed),
                         sampling=SamplingConfig(max_tokens=16, stop=["\n"], top_logprobs=5),
                         **replay_settings(source, seed, if_prompts))
    generate_dataset(cfg, teacher_cfg, out)
    stats = json.loads((out / "stats.json").read_text())
    return out, {"rows": stats["rows"], "synthesis": stats.get("synthesis"), "replay": stats.get("replay"),
                 "seconds": stats["seconds"], "teacher_answers": answer_stats(out)}


def answer_stats(dataset: Path) -> dict:
    """What top-k logit KD sees beyond the answer text, over the train rows: answer length in tokens, the
    teacher's probability of its own first answer token, and the mass outside its top-k (the tail bucket)."""
    import numpy as np
    from datasets import load_from_disk

    from distill.logprobs import unpack_topk

    train = load_from_disk(str(dataset))["train"]
    if "teacher_logprobs" not in train.column_names:
        return {}
    lengths, first_p, tail = [], [], []
    for lp in train["teacher_logprobs"]:
        if not lp:
            continue
        _, lps = unpack_topk(json.loads(lp))
        if not len(lps):
            continue
        probs = np.exp(lps)
        lengths.append(len(lps))
        first_p.append(float(probs[0].max()))
        tail.append(float(np.clip(1.0 - probs.sum(axis=1), 0.0, 1.0).mean()))
    mean = lambda xs: round(statistics.mean(xs), 4) if xs else None  # noqa: E731
    return {"rows": len(lengths), "answer_tokens": mean(lengths), "first_token_p": mean(first_p),
            "tail_mass": mean(tail)}


def measure(args, teacher_cfg) -> dict:
    from distill.probes.config import ProbesConfig
    from distill.probes.families import FAMILIES
    from distill.probes.run import build_prompts, probe_teacher

    icl = [n for n, f in FAMILIES.items() if f.ability == "icl" and n not in ("continent", "plural", "capital")]
    cot = [n for n, f in FAMILIES.items() if f.ability == "cot"]
    out = {}
    for seed in args.seed_list:
        cfg = ProbesConfig(icl_tasks=icl, controls=[], cot_tasks=cot, per_task=args.per_task * 2, pool_per_task=8, if_items=0, seed=seed)
        scores, _ = probe_teacher(build_prompts(cfg), cfg, teacher_cfg)
        out[seed] = scores
    for name in icl:
        z = [out[s]["icl"]["zero_shot"]["per_task"][name]["strict"] for s in out]
        k = [out[s]["icl"]["k_shot"]["per_task"][name]["strict"] for s in out]
        pick = statistics.mean(k) >= 0.4 and statistics.mean(k) - statistics.mean(z) >= 0.15
        print(f"{name:14s} 0-shot {statistics.mean(z):.2f}  4-shot {statistics.mean(k):.2f}  {'probe' if pick else ''}")
    for name in cot:
        row = {m: statistics.mean(out[s]["cot"][m]["per_task"][name]["strict"] for s in out)
               for m in ("direct", "cot", "direct_k_shot", "cot_k_shot")}
        print(f"{name:14s} " + "  ".join(f"{m} {v:.2f}" for m, v in row.items()))
    return out


def train_arm(arm: str, dataset: Path, out: Path, args, seed: int) -> dict:
    from distill.train.run import KDConfig, LoraConfig, TrainConfig, train_student

    keep, _, kd = ARMS[arm]
    cfg = TrainConfig(student="bundled", keep_layers=keep, lora=LoraConfig(enabled=True, r=16, alpha=32),
                      kd=KDConfig(enabled=True, **kd) if kd else KDConfig(), max_steps=args.steps, batch_size=8, lr=5e-4,
                      max_length=256, save_dtype="float32", seed=seed, log_every=20)
    m = json.loads((train_student(cfg, dataset, out) / "metrics.json").read_text())
    return {k: m.get(k) for k in ("train_rows", "steps", "seconds", "loss_first", "loss_last", "autocast", "mode")}


def control_outputs(records: list[dict]) -> list[dict]:
    """What a model answered on the control tasks (kept in the JSON, to read a negative transfer)."""
    return [{k: r[k] for k in ("task", "output", "gold", "lenient")} for r in records if r["ability"] == "control"]


def probe_dir(model_dir, prompts, cfg, keep_layers: int | None = None) -> tuple[dict, list[dict]]:
    """Probe scores and control answers of the model at ``model_dir`` (depth-pruned to ``keep_layers`` first: a
    pruned student's start)."""
    import torch

    from distill.models import load_causal_lm, load_tokenizer, resolve_dtype
    from distill.probes.run import probe_model
    from distill.train.run import depth_prune

    autocast = torch.bfloat16 if resolve_dtype("auto", "cpu") == "bfloat16" else None
    model = load_causal_lm(model_dir)
    if keep_layers:
        depth_prune(model, keep_layers)
    scores, records = probe_model(model, load_tokenizer(model_dir), prompts, cfg, 16, autocast)
    return scores, control_outputs(records)


def run_seed(seed: int, args, teacher_cfg, work: Path) -> dict:
    from datasets import load_from_disk

    from distill.models import resolve_model_path
    from distill.probes.config import ProbesConfig
    from distill.probes.run import build_prompts, probe_teacher, training_inputs
    from distill.probes.score import ability_table

    t0 = time.perf_counter()
    sources = sorted({ARMS[a][1] for a in args.arm_list})
    data = {}
    for src in sources:
        tasks = write_tasks(work / f"tasks_{src}_{seed}.yaml", args.family_list, args.examples, args.inputs, seed, src == "synth")
        data[src] = generate(tasks, work / f"data_{src}_{seed}", teacher_cfg, seed, src, args.if_prompts)
        print(f"seed {seed} {src}: {data[src][1]['rows']}", flush=True)
    seen: set[str] = set()
    for path, _ in data.values():
        train = load_from_disk(str(path))["train"]
        for col in ("messages", "prompt_messages"):
            seen |= training_inputs([{"messages": m} for m in train[col]])
    probes = ProbesConfig(icl_tasks=args.family_list, controls=["continent", "capital"], cot_tasks=[], if_items=args.if_items,
                          per_task=args.per_task, pool_per_task=8, shots=4, seed=10_000 + seed)
    prompts = build_prompts(probes, seen)
    trained_text = "\n".join(m["content"] for path, _ in data.values()
                              for msgs in load_from_disk(str(path))["train"]["prompt_messages"] for m in msgs)
    if_bases = [p.if_item.base for p in prompts if p.ability == "if"]
    teacher, teacher_records = probe_teacher(prompts, probes, teacher_cfg)
    base, base_controls = probe_dir(resolve_model_path("bundled"), prompts, probes)
    starts = {k: probe_dir(resolve_model_path("bundled"), prompts, probes, k)[0] for k in {ARMS[a][0] for a in args.arm_list} if k}
    result = {"seed": seed, "cpu": cpu_flags(), "generate": {s: d[1] for s, d in data.items()}, "teacher": teacher, "base": base,
              "starts": {str(k): v for k, v in starts.items()}, "arms": {},
              # held-out IF items whose writing task (not its constraints) also appears in a training prompt
              "if_probe_bases_in_training": sum(b in trained_text for b in if_bases), "if_probe_items": len(if_bases),
              "control_outputs": {"teacher": control_outputs(teacher_records), "base": base_controls}}
    for arm in args.arm_list:
        out = work / f"{arm}_{seed}"
        trained = train_arm(arm, data[ARMS[arm][1]][0], out, args, seed)
        scores, controls = probe_dir(out, prompts, probes)
        table = ability_table(teacher, base, scores, probes.tolerance, start=starts.get(ARMS[arm][0]))
        result["arms"][arm] = {"train": trained, "probes": scores, "abilities": table, "control_outputs": controls}
        icl = next(r for r in table if r["ability"] == "ICL")
        print(f"seed {seed} {arm}: 0-shot {icl['student']:.3f} (base {icl['base']:.3f}, teacher 4-shot {icl['teacher']:.3f}) "
              f"gap closed {icl['gap_closed']}", flush=True)
        if not args.keep_work:
            shutil.rmtree(out, ignore_errors=True)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def summarize(results: list[dict], arms: list[str]) -> dict:
    def stat(xs: list[float]) -> dict:
        xs = [x for x in xs if x is not None]
        return {"mean": round(statistics.mean(xs), 4) if xs else None,
                "stdev": round(statistics.stdev(xs), 4) if len(xs) > 1 else None, "values": xs}

    out = {}
    for arm in arms:
        rows = [{r["ability"]: r for r in res["arms"][arm]["abilities"]} for res in results]
        out[arm] = {"icl_gap_closed": stat([r["ICL"]["gap_closed"] for r in rows]),
                    "icl_student_zero_shot": stat([r["ICL"]["student"] for r in rows]),
                    "share_of_teacher_k_shot": stat([r["ICL"]["student"] / r["ICL"]["teacher"] for r in rows
                                                     if r["ICL"]["teacher"]]),
                    "control_student": stat([r["control"]["student"] for r in rows if "control" in r]),
                    "control_base": stat([r["control"]["base"] for r in rows if "control" in r]),
                    "control_start": stat([r["control"].get("start") for r in rows if "control" in r]),
                    **{f"if_{who}": stat([r["IF"].get(who) for r in rows if "IF" in r])
                       for who in ("teacher", "base", "start", "student")},
                    "if_student_strict": stat([res["arms"][arm]["probes"]["if"]["prompt_strict"] for res in results
                                               if "if" in res["arms"][arm]["probes"]]),
                    # ability -> in how many seeds it fell below the base (a list per seed read as repeats)
                    "negative_transfer": dict(sorted(Counter(k for r in rows for k, v in r.items()
                                                             if v["negative_transfer"]).items()))}
    return out


# what "negative transfer" compares with (distill/probes/score.py ability_table)
START_REF = "where training started: the base, or a pruned arm's pruned start"


def targets(summary: dict) -> list[dict]:
    def mean(arm: str, key: str) -> float | None:
        return summary.get(arm, {}).get(key, {}).get("mean")

    out = []
    for arm, bar in (("pruned24", 0.8), ("lora_teacher", 0.9)):
        if (g := mean(arm, "icl_gap_closed")) is not None:
            out.append({"claim": f"{arm} closes >= {bar:.0%} of the ICL gap (mean over seeds)", "met": g >= bar, "value": g})
    h, s = mean("pruned24", "icl_gap_closed"), mean("pruned24_synth", "icl_gap_closed")
    if h and s is not None:
        out.append({"claim": "teacher-written inputs reach >= 90% of hand-written inputs' gap closed", "met": s / h >= 0.9,
                    "value": round(s / h, 4)})
    for arm, v in summary.items():
        out.append({"claim": f"{arm}: no negative transfer (controls and abilities within 5 points of {START_REF})",
                    "met": not v["negative_transfer"], "value": v["negative_transfer"]})
    return out


COMPARABLE = ("families", "examples", "inputs", "steps", "per_task", "if_items", "if_prompts")


def previous_seeds(path: Path, args) -> list[dict]:
    """The seeds already measured in ``path`` (``--append``); refuses a file measured with other settings."""
    if not path.exists():
        return []
    prev = json.loads(path.read_text())
    cfg = prev.get("config", {})
    added_later = {"if_items": 0, "if_prompts": 128}  # files written before these settings existed ran with these
    differ = [k for k in COMPARABLE if str(cfg.get(k, added_later.get(k))) != str(getattr(args, k))]
    if differ or sorted(prev.get("arms", {})) != sorted(args.arm_list):
        sys.exit(f"--append: {path} was measured with other settings ({', '.join(differ) or 'arms'}); "
                 "run with the same --families/--arms/--examples/--inputs/--steps/--per-task, or pick another --out")
    seeds = prev.get("seeds", [])
    for r in seeds:  # files written before seeds carried their own CPU
        r.setdefault("cpu", prev["cpu"] if isinstance(prev.get("cpu"), str) else "?")
    return seeds


def main() -> int:
    from distill.probes.config import DEFAULT_ICL

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", default=",".join(DEFAULT_ICL), help="ICL task families (distill/probes/families.py)")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of: {', '.join(ARMS)}")
    ap.add_argument("--seeds", default="0,1", help="comma-separated seeds (items, demos, training order)")
    ap.add_argument("--examples", type=int, default=16, help="labelled examples per task (the demo pool)")
    ap.add_argument("--inputs", type=int, default=24, help="inputs per task: drawn (hand) or written by the teacher (synth)")
    ap.add_argument("--steps", type=int, default=72, help="optimizer steps per arm (batch 8)")
    ap.add_argument("--per-task", type=int, default=8, help="held-out probe items per family")
    ap.add_argument("--if-items", type=int, default=0, help="held-out verifiable-instruction probe items (0: no IF probe)")
    ap.add_argument("--if-prompts", type=int, default=128,
                    help="verifiable instructions in the *_if arms' data (each sampled 4 times, failures removed)")
    ap.add_argument("--measure", action="store_true", help="only measure the teacher on every family")
    ap.add_argument("--keep-work", action="store_true", help="keep the datasets and students")
    ap.add_argument("--append", action="store_true",
                    help="keep the seeds already in --out (same families, arms and sizes) and run only the missing ones")
    ap.add_argument("--out", default="ea_transfer.json", help="file name under bench/results/")
    args = ap.parse_args()
    args.family_list = [f for f in args.families.split(",") if f]
    args.arm_list = [a for a in args.arms.split(",") if a]
    args.seed_list = [int(s) for s in args.seeds.split(",") if s]
    if unknown := [a for a in args.arm_list if a not in ARMS]:
        sys.exit(f"--arms: unknown {unknown}; choose from {', '.join(ARMS)}")
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("distill.train").setLevel(logging.INFO)

    from distill.teacher.query import TeacherConfig

    work = Path(tempfile.mkdtemp(prefix="eakd-bench-ea-"))
    teacher_cfg = TeacherConfig(backend="vllm", model="bundled", cache_path=str(work / "cache.sqlite"))
    if args.measure:
        scores = measure(args, teacher_cfg)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "ea_transfer_measure.json").write_text(json.dumps({"cpu": cpu_flags(), "seeds": scores}, indent=1))
        return 0
    t0 = time.perf_counter()
    results = previous_seeds(RESULTS / args.out, args) if args.append else []
    RESULTS.mkdir(parents=True, exist_ok=True)
    for seed in args.seed_list:  # the JSON is rewritten after every seed: a stopped run keeps what it measured
        if any(r["seed"] == seed for r in results):
            continue
        results.append(run_seed(seed, args, teacher_cfg, work))
        summary = summarize(results, args.arm_list)
        report = {"config": {k: v for k, v in vars(args).items() if not k.endswith("_list")},
                  "cpu": sorted({r["cpu"] for r in results}),
                  "families": args.family_list, "arms": {a: dict(zip(("keep_layers", "inputs", "logit_kd"), ARMS[a]))
                                                          for a in args.arm_list},
                  "summary": summary, "targets": targets(summary), "seeds": results,
                  "seeds_done": len(results), "seeds_asked": len(args.seed_list),
                  "seconds": round(time.perf_counter() - t0, 1)}
        (RESULTS / args.out).write_text(json.dumps(report, indent=1))
    print(f"\n{'arm':16s} {'ICL gap closed':>22s} {'student 0-shot':>16s} {'of teacher k-shot':>18s} {'controls base→student':>22s}")
    for arm, v in summary.items():
        g, z, r = v["icl_gap_closed"], v["icl_student_zero_shot"], v["share_of_teacher_k_shot"]
        sd = f" ± {g['stdev']:.3f}" if g["stdev"] is not None else ""
        print(f"{arm:16s} {g['mean']:>14.3f}{sd:>8s} {z['mean']:>16.3f} {r['mean'] if r['mean'] is None else round(r['mean'], 3):>18} "
              f"{v['control_base']['mean']} → {v['control_student']['mean']}")
    for t in report["targets"]:
        print(f"[{'met' if t['met'] else 'NOT met'}] {t['claim']}: {t['value']}")
    print(f"wrote {RESULTS / args.out} ({report['seconds']:.0f} s); work dir {work}")
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
