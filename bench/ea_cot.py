"""CoT that transfers: a procedural multi-step family, the CoT filters, and a student's own CoT gain (issue 22 §4).

The bundled 135M teacher cannot do GSM8K; it can do short procedural arithmetic *with worked examples*
(``bench/ea_transfer.py --measure``: e.g. ``sum3``, "What is 3 + 5 + 1?", direct 4-shot ~0 %, CoT 4-shot ~80 %).
Per seed, through the product path:

1. a task file with one ``style: cot`` task (:mod:`distill.data.tasks`): ``--examples`` worked examples (steps +
   answer, the demo pool) and ``--inputs`` unlabelled questions drawn by the family's generator;
2. ``generate_dataset`` with ``styles: [cot]``, chat demos, ``erase_demos`` (the student learns the zero-shot
   ``cot`` prompt), answers up to ``--max-tokens``: arm ``greedy`` (one greedy sample per question) and arm
   ``sc`` (``--samples`` samples at temperature 0.7, self-consistency: only rationales reaching the voted
   answer are kept); arm ``gold`` keeps the greedy rows whose answer equals the family's gold (the
   generator knows every question's answer; a user's gold filter is ``generate.require_gold_match`` on
   labelled seeds);
3. the share of kept rationales whose answer is right, per arm (what the filters buy);
4. ``train_student`` (24 of 30 layers + LoRA, SFT on rationale + answer) per arm, then the CoT probe
   (:mod:`distill.probes`: fresh held-out questions, direct vs CoT, 0-shot and 4-shot) for the teacher, the
   base and each student: the student's 0-shot CoT accuracy and CoT gain (CoT − direct);
5. distilling step-by-step (Hsieh et al. 2023), on the gold rows: arm ``gold_mt`` trains with
   ``train.rationale_multitask`` (``[answer] question`` -> the answer, ``[explain] question`` -> the rationale),
   arm ``gold_answer`` is that paper's baseline, the ``[answer]`` task alone (the same questions, no rationale).
   Both are asked as the method asks them (:func:`tagged_prompts`): direct = ``[answer]``, CoT = ``[explain]``.
   Does training on rationales make the student's *direct* answers better?

Writes ``bench/results/ea_cot.json``; ``--append`` adds seeds to it (same settings; arms a seed did not run are
averaged over the seeds that did). Run: ``.venv/bin/python bench/ea_cot.py`` (~20-30 min per seed on 2 CPU
cores); ``--seeds 0 --inputs 8 --steps 4 --per-task 2 --samples 2`` is a smoke run.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

from bench.ea_transfer import cpu_flags, probe_dir  # noqa: E402


def make_tasks(path: Path, family: str, examples: int, inputs: int, seed: int) -> dict[str, str]:
    """Write the task file; returns input -> gold for every training question."""
    import yaml

    from distill.probes.families import FAMILIES, make_items

    items = make_items(FAMILIES[family], examples + inputs, seed)
    ex, qs = items[:examples], items[examples:]
    task = {"name": family, "instruction": FAMILIES[family].instruction, "style": "cot",
            "examples": [{"input": i.input, "output": i.answer, "rationale": i.rationale} for i in ex],
            "inputs": [i.input for i in qs]}
    path.write_text(yaml.safe_dump({"tasks": [task]}, sort_keys=False))
    return {i.input: i.answer for i in qs}


def generate(tasks: Path, out: Path, teacher_cfg, args, seed: int, samples: int) -> Path:
    from distill.data.dataset import GenerateConfig, SamplingConfig, SelfConsistencyConfig, generate_dataset

    sc = samples > 1
    cfg = GenerateConfig(tasks=str(tasks), styles=["cot"], num_demos=4, demo_format="chat", erase_demos=True,
                         demo_seed=seed, self_consistency=SelfConsistencyConfig(enabled=sc, keep="voted"),
                         sampling=SamplingConfig(max_tokens=args.max_tokens, n=samples, temperature=0.7 if sc else 0.0,
                                                 seed=seed))
    return generate_dataset(cfg, teacher_cfg, out)


def kept_rows(dataset: Path) -> list[dict]:
    from datasets import load_from_disk

    return load_from_disk(str(dataset))["train"].to_list()


def correct_share(rows: list[dict], gold: dict[str, str]) -> dict:
    from distill.answers import answers_match_strict

    def question(r: dict) -> str | None:  # the training question this row answers (its text is in the last user turn)
        return next((q for q in gold if q in r["prompt_messages"][-1]["content"]), None)

    ok = [answers_match_strict(r["answer"], gold.get(question(r))) is True for r in rows]
    return {"rows": len(rows), "correct": sum(ok), "share": round(sum(ok) / len(ok), 4) if ok else None,
            "questions": len({question(r) for r in rows})}


def save_subset(rows: list[dict], out: Path) -> Path:
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(rows), "validation": Dataset.from_list(rows[:2])}).save_to_disk(str(out))
    return out


ARMS = ("greedy", "sc", "gold", "gold_mt", "gold_answer")
TAGGED = ("gold_mt", "gold_answer")  # asked with distill/train/encode.py's task tags
COMPARABLE = ("family", "examples", "inputs", "samples", "max_tokens", "steps", "per_task")


def answer_only(rows: list[dict]) -> list[dict]:
    """Distilling step-by-step's baseline: each CoT row's ``[answer] question`` -> answer task alone."""
    from distill.train.encode import ANSWER_TAG, rationale_tasks

    out = []
    for r in rows:
        conv = rationale_tasks([r["messages"]], [r["style"]], [r["answer"]])[0]
        if conv[-2]["content"].startswith(ANSWER_TAG):
            out.append(r | {"messages": conv})
    return out


def tagged_prompts(prompts: list) -> list:
    """The zero-shot CoT probe as a multi-task student is asked: the ``cot`` prompt with its user turn tagged
    ``[answer]`` (mode ``direct``, graded on the first line) or ``[explain]`` (mode ``cot``)."""
    from dataclasses import replace

    from distill.train.encode import ANSWER_TAG, EXPLAIN_TAG

    def tag(p, t: str, mode: str, first_line: bool):
        *head, user = p.messages
        return replace(p, id=f"{p.id}:{t}", mode=mode, first_line=first_line,
                       messages=[*head, user | {"content": f"{t} {user['content']}"}])

    cot = [p for p in prompts if p.mode == "cot"]
    return [tag(p, ANSWER_TAG, "direct", True) for p in cot] + [tag(p, EXPLAIN_TAG, "cot", False) for p in cot]


def run_seed(seed: int, args, teacher_cfg, work: Path) -> dict:
    from distill.models import resolve_model_path
    from distill.probes.config import ProbesConfig
    from distill.probes.run import build_prompts, probe_teacher, training_inputs
    from distill.train.run import LoraConfig, TrainConfig, train_student

    t0 = time.perf_counter()
    gold = make_tasks(work / f"tasks_{seed}.yaml", args.family, args.examples, args.inputs, seed)
    data = {"greedy": generate(work / f"tasks_{seed}.yaml", work / f"greedy_{seed}", teacher_cfg, args, seed, 1),
            "sc": generate(work / f"tasks_{seed}.yaml", work / f"sc_{seed}", teacher_cfg, args, seed, args.samples)}
    rows = {arm: kept_rows(path) for arm, path in data.items()}
    rows["gold"] = [r for r in rows["greedy"] if correct_share([r], gold)["correct"]]
    data["gold"] = save_subset(rows["gold"], work / f"gold_{seed}") if rows["gold"] else None
    data["gold_mt"] = data["gold"]
    data["gold_answer"] = save_subset(answer_only(rows["gold"]), work / f"gold_answer_{seed}") if rows["gold"] else None
    shares = {arm: correct_share(rs, gold) for arm, rs in rows.items()}
    print(f"seed {seed}: correct rationales {json.dumps({a: s['share'] for a, s in shares.items()})}", flush=True)
    seen = training_inputs([{"messages": r["prompt_messages"]} for rs in rows.values() for r in rs])
    probes = ProbesConfig(icl_tasks=[], controls=[], cot_tasks=[args.family], if_items=0, per_task=args.per_task,
                          pool_per_task=8, shots=4, seed=20_000 + seed, cot_max_new_tokens=args.max_tokens)
    prompts = build_prompts(probes, seen)
    result = {"seed": seed, "cpu": cpu_flags(), "correct_rationales": shares, "teacher": probe_teacher(prompts, probes, teacher_cfg)[0],
              "base": probe_dir(resolve_model_path("bundled"), prompts, probes)[0], "students": {}}
    for arm in args.arm_list:
        if (path := data[arm]) is None:
            continue
        out = work / f"student_{arm}_{seed}"
        cfg = TrainConfig(student="bundled", keep_layers=24, lora=LoraConfig(enabled=True, r=16, alpha=32),
                          max_steps=args.steps, batch_size=8, lr=5e-4, max_length=384, save_dtype="float32", seed=seed,
                          log_every=20, rationale_multitask=arm == "gold_mt")
        m = json.loads((train_student(cfg, path, out) / "metrics.json").read_text())
        cot = probe_dir(out, tagged_prompts(prompts) if arm in TAGGED else prompts, probes)[0]["cot"]
        result["students"][arm] = {"rows": m["train_rows"], "steps": m["steps"], "cot": cot}
        print(f"seed {seed} {arm}: 0-shot direct {cot['direct']['strict']} cot {cot['cot']['strict']} "
              f"gain {cot['gain']}", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def previous_seeds(args, ap) -> list[dict]:
    """With ``--append``: the seeds already in ``--out`` (refused if their settings differ or a seed repeats)."""
    path = RESULTS / args.out
    if not args.append or not path.is_file():
        return []
    old = json.loads(path.read_text())
    was = old["config"]
    if diff := [f"{k}={was.get(k)}" for k in COMPARABLE if was.get(k) != getattr(args, k)]:
        ap.error(f"--append: {path} was run with other settings ({', '.join(diff)}); "
                 "pass the same ones or write to another --out")
    if again := {r["seed"] for r in old["seeds"]} & {int(s) for s in args.seeds.split(",") if s}:
        ap.error(f"--append: seeds {sorted(again)} are already in {path}")
    for r in old["seeds"]:
        r.setdefault("cpu", old["cpu"] if isinstance(old["cpu"], str) else None)
    return old["seeds"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", default="sum3", help="a cot family of distill/probes/families.py")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--examples", type=int, default=16, help="worked examples (the demo pool)")
    ap.add_argument("--inputs", type=int, default=64, help="training questions the teacher answers")
    ap.add_argument("--samples", type=int, default=5, help="self-consistency samples per question (arm sc)")
    ap.add_argument("--max-tokens", type=int, default=96, help="answer budget (teacher and probes)")
    ap.add_argument("--steps", type=int, default=48, help="optimizer steps per student (batch 8)")
    ap.add_argument("--per-task", type=int, default=16, help="held-out probe questions")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"a subset of {','.join(ARMS)}")
    ap.add_argument("--out", default="ea_cot.json")
    ap.add_argument("--append", action="store_true", help="add these seeds to --out (same settings)")
    args = ap.parse_args()
    args.arm_list = [a for a in args.arms.split(",") if a]
    if bad := sorted(set(args.arm_list) - set(ARMS)):
        ap.error(f"--arms: unknown {bad}; choose from {','.join(ARMS)}")
    earlier = previous_seeds(args, ap)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("distill.train").setLevel(logging.INFO)

    from distill.teacher.query import TeacherConfig

    work = Path(tempfile.mkdtemp(prefix="eakd-bench-cot-"))
    teacher_cfg = TeacherConfig(backend="vllm", model="bundled", cache_path=str(work / "cache.sqlite"))
    t0 = time.perf_counter()
    results = earlier + [run_seed(int(s), args, teacher_cfg, work) for s in args.seeds.split(",") if s]

    def mean(get) -> float | None:
        xs = [x for x in (get(r) for r in results) if x is not None]
        return round(statistics.mean(xs), 4) if xs else None

    def spread(get) -> float | None:
        xs = [x for x in (get(r) for r in results) if x is not None]
        return round(statistics.stdev(xs), 4) if len(xs) > 1 else None

    def student(a: str, key: str):
        return lambda r: r["students"].get(a, {}).get("cot", {}).get(key, {}).get("strict")

    summary = {
        "teacher": {m: mean(lambda r, m=m: r["teacher"]["cot"][m]["strict"]) for m in ("direct", "cot", "direct_k_shot", "cot_k_shot")},
        "base": {m: mean(lambda r, m=m: r["base"]["cot"][m]["strict"]) for m in ("direct", "cot")},
        "correct_rationales": {a: mean(lambda r, a=a: r["correct_rationales"][a]["share"]) for a in ("greedy", "sc", "gold")},
        "students": {a: {"direct": mean(student(a, "direct")), "cot": mean(student(a, "cot")),
                         "cot_sd": spread(student(a, "cot")),
                         "gain": mean(lambda r, a=a: r["students"].get(a, {}).get("cot", {}).get("gain")),
                         "seeds": sum(a in r["students"] for r in results)}
                     for a in ARMS},
    }
    config = {k: v for k, v in vars(args).items() if k != "arm_list"}
    config["seeds"] = ",".join(str(r["seed"]) for r in results)
    report = {"config": config, "cpu": sorted({r["cpu"] for r in results if r.get("cpu")}),
              "summary": summary, "seeds": results,
              "seconds": round(time.perf_counter() - t0, 1)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(summary, indent=1))
    print(f"wrote {RESULTS / args.out} ({report['seconds']:.0f} s)")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
