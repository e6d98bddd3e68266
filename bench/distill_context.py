"""Does the few-shot ability transfer? How much of the gap context distillation closes (issue 5)

Context distillation (Askell et al. 2021, "A General Language Assistant as a Laboratory for Alignment";
Snell et al. 2022, "Learning by Distilling Context"): the teacher answers each training question with
``--shots`` demonstrations in its prompt; the student is trained on those answers with the demonstrations
erased, so it must answer zero-shot as the teacher does few-shot. Target: the trained student closes
>= 50 % of the gap between its own zero-shot score and the teacher's few-shot score on held-out questions.

Tasks, written here and generated deterministically (``--seed``), with exact gold answers. The defaults are
the families where demonstrations teach the bundled 135M model something it does not do zero-shot — mostly
the label space and the answer format: rate a review 'good'/'bad', classify a word 'animal'/'plant' or a
number 'even'/'odd' (the labels are never named in the prompt, only shown by the demos), the larger of two
numbers, the next number (zero-shot it writes a sentence holding several numbers, which grades as no
answer); plus two it mostly knows zero-shot (a country's continent, irregular plurals), to see whether the
training costs what the model knew. More families (``--tasks``): ``capital``, ``sentiment``
('positive'/'negative'), ``add`` (two-digit addition). In a probe (teacher only, 6 held-out questions per
family, 4 chat demos) the demos raised the five label/format families from 0-17 % to 33-83 %, left
plurals level, cost continents one question of six, and hurt ``capital`` and ``sentiment`` (and antonyms
and past tenses, since removed), which the model already answers zero-shot in a sentence the grader
accepts; ``add`` stayed at 0 % either way. Each family's questions are split into
``--train-per-task`` training and ``--held-out-per-task`` held-out ones; held-out questions are never
demonstrations nor training rows (the demos of every question are other training questions of its task,
:func:`distill.data.dataset.select_demos`).

Demonstration format (``--demo-format``). ``text`` is eakd's shipped ICL template (``prompts/icl.jinja``:
the demos as "Input:/Output:" lines inside one user message, what :func:`distill.data.dataset.generate_dataset`
sends with ``styles=["icl"]``); with it the 135M teacher mostly echoes the input and scores *below* its
zero-shot, so there is no gap to close. ``chat`` (default) gives each demo as a past user turn (the
instruct template's rendering of the demo input) and assistant turn (its answer), the format small chat
models follow. Probe over 9 families x 6 held-out questions, 4 demos: text 11 %, chat 54 %, zero-shot 30 %. Both are
``generate.demo_format`` settings of the product (``text`` | ``chat``): this benchmark renders the prompts
with :func:`distill.data.dataset.build_requests` (the erased prompt is its ``erase_demos`` student prompt) and
asks the teacher with :func:`distill.teacher.query.query_teacher`. The
teacher few-shot score is measured in both formats either way.

Arms, every one measured the same way: greedy answers from transformers
(:func:`distill.evaluate.generate_greedy`, first line, ``--max-tokens``), graded as eakd grades ICL answers
(:func:`distill.evaluate.score_answers`: the first line against the gold with
:func:`distill.answers.answers_match`), on the same held-out questions: (a) the teacher few-shot; (b) the
teacher zero-shot (the erased prompt); (c) the student zero-shot before training; (d) the student zero-shot
after training on the context-distilled rows; (e) a control: the student trained as many steps on the
teacher's *zero-shot* answers to the same training questions, so a gain of (d) over (e) is the demos'
doing, not the training's. Gap closed = (d - c) / (a - c).

Student: the bundled model itself + LoRA by default (``--keep-layers 0``), the classic setting where
student and teacher share weights and the gap is only the missing demos (so (c) is (b), not measured
twice). ``--keep-layers 20`` depth-prunes the student as the other benchmarks do; its untrained zero-shot
score is then near zero and training also repairs the pruning, so "gap closed" mixes both effects. Teacher
answers: the in-process vLLM teacher, greedy, one line (``stop=["\\n"]``); empty or truncated answers are
dropped (as ``generate_dataset`` does), wrong ones kept unless ``--gold-filter``.

Writes ``bench/results/distill_context.json``.

Run: ``.venv/bin/python bench/distill_context.py`` (defaults: 7 tasks x (24 train + 20 held-out), 4 chat
demos, 80 steps x 8 at lr 5e-4; ~10-15 min on 2 CPU cores: ~1 min teacher generation, two trainings of
~2-3 min, five greedy passes over the 140 held-out questions of ~1 min each); ``--tasks larger,even_odd
--train-per-task 6 --held-out-per-task 3 --steps 2`` is a smoke run (~1-2 min, mostly loading models).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))

# --- the tasks -------------------------------------------------------------------------------------------
# Hand lists: unambiguous single answers, no accented spellings (the grader compares text after lower-casing
# only), and no gold inside its own question (an echo of the question would score: a text gold counts when
# the answer line holds it as a whole word).
from distill.probes.wordlists import (  # noqa: E402  (the product's probe families draw the same lists)
    ANIMALS,
    CAPITALS,
    CONTINENTS,
    NEGATIVE,
    PLANTS,
    PLURALS,
    POSITIVE,
    REVIEW_SUBJECTS,
)

# name -> (instruction, source): a generator rng -> (input, gold), or a hand list drawn without replacement.
Family = tuple[str, Callable[[random.Random], tuple[str, str]] | list[tuple[str, str]]]


def _review(rng: random.Random, labels: tuple[str, str] = ("positive", "negative")) -> tuple[str, str]:
    good = rng.random() < 0.5
    return f"{rng.choice(REVIEW_SUBJECTS)} {rng.choice(POSITIVE if good else NEGATIVE)}.", labels[not good]


def _larger(rng: random.Random) -> tuple[str, str]:
    a, b = rng.sample(range(10, 100), 2)
    return f"{a} and {b}", str(max(a, b))


def _successor(rng: random.Random) -> tuple[str, str]:
    a = rng.randint(10, 98)
    return str(a), str(a + 1)


def _even_odd(rng: random.Random) -> tuple[str, str]:
    a = rng.randint(10, 99)
    return str(a), "odd" if a % 2 else "even"


def _animal_plant(rng: random.Random) -> tuple[str, str]:
    animal = rng.random() < 0.5
    return rng.choice(ANIMALS if animal else PLANTS), "animal" if animal else "plant"


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(10, 89), rng.randint(10, 89)
    return f"{a} + {b}", str(a + b)


TASKS: dict[str, Family] = {  # instructions never name the labels: only the demos show them
    "review_gb": ("Rate the review.", lambda rng: _review(rng, ("good", "bad"))),
    "animal_plant": ("Classify the word.", _animal_plant),
    "even_odd": ("Classify the number.", _even_odd),
    "larger": ("Which number is larger?", _larger),
    "successor": ("What number comes next?", _successor),
    "continent": ("Classify the country.", CONTINENTS),
    "plural": ("Give the plural of the noun.", PLURALS),
    "capital": ("What is the capital city of this country?", CAPITALS),
    "sentiment": ("What is the sentiment of this review?", _review),
    "add": ("Add the two numbers.", _add),
}
DEFAULT_TASKS = ("review_gb", "animal_plant", "even_odd", "larger", "successor", "continent", "plural")


def make_questions(tasks: list[str], per_task: int, seed: int) -> list[dict]:
    """``per_task`` distinct questions of each task as eakd seed rows ({id, task, instruction, input, answer}),
    the same for the same arguments (one seeded RNG per task)."""
    rows = []
    for name in tasks:
        instruction, source = TASKS[name]
        rng = random.Random(f"{seed}:{name}")
        if isinstance(source, list):
            pairs = rng.sample(source, min(per_task, len(source)))
        else:
            seen: dict[str, str] = {}
            for _ in range(100 * per_task):
                q, a = source(rng)
                seen.setdefault(q, a)
                if len(seen) == per_task:
                    break
            pairs = list(seen.items())
        if len(pairs) < per_task:
            sys.exit(f"task {name!r} has {len(pairs)} distinct questions, fewer than --train-per-task + "
                     f"--held-out-per-task = {per_task}; lower them")
        rows += [{"id": f"{name}-{i:03d}", "task": name, "instruction": instruction, "input": q, "answer": a}
                 for i, (q, a) in enumerate(pairs)]
    return rows


# --- prompts, teacher, grading ----------------------------------------------------------------------------

def build_prompts(questions: list[dict], pool: list[dict], shots: int, demo_seed: int) -> list[dict]:
    """Per question: its demos (``shots`` questions of ``pool`` from the same task, never itself), the teacher's
    few-shot prompt in both formats and the erased prompt the student sees. ``text`` and the erased prompt are
    :func:`distill.data.dataset.build_requests`' ICL request and ``erase_demos`` student prompt; ``chat`` is its
    ICL request with ``demo_format: chat`` (each demo a user turn, the instruct template's rendering of the
    demo input, and an assistant turn, its gold answer, before the question)."""
    from distill.data.dataset import GenerateConfig
    from distill.data.plan import build_requests, select_demos
    from distill.data.seeds import Seed

    def seed(r: dict) -> Seed:
        return Seed(id=r["id"], instruction=r["instruction"], input=r["input"], answer=r["answer"], task=r["task"])

    pool_seeds, seeds, demo_ids = [seed(r) for r in pool], [], {}
    for r in questions:
        s = seed(r)
        chosen = select_demos(s, pool_seeds, shots, demo_seed)
        if len(chosen) < shots:
            sys.exit(f"question {s.id} got {len(chosen)} demos of {shots}: raise --train-per-task above --shots")
        s.demos, demo_ids[s.id] = [d for _, d in chosen], [i for i, _ in chosen]
        seeds.append(s)
    cfg = GenerateConfig(seeds="in-memory", styles=["icl"], num_demos=shots, erase_demos=True, demo_seed=demo_seed)
    plans, _ = build_requests(seeds, cfg, "bundled")
    chat, _ = build_requests(seeds, cfg.model_copy(update={"demo_format": "chat"}), "bundled")
    out = []
    for plan, turns in zip(plans, chat):
        s = plan.seed
        out.append({"id": s.id, "task": s.task, "gold": s.answer, "demo_ids": demo_ids[s.id],
                    "zero_shot": plan.student_prompt, "text": plan.request.messages,
                    "chat": turns.request.messages})
    return out


def ask_teacher(prompts: list[dict], keys: list[str], max_tokens: int, teacher_cfg) -> dict[str, list]:
    """The teacher's greedy one-line answers to ``prompts[*][key]`` for each key, in one engine start."""
    from distill.teacher.query import TeacherRequest, query_teacher

    reqs = [TeacherRequest(messages=p[k], model=teacher_cfg.model_id(), style="instruct" if k == "zero_shot" else "icl",
                           template=f"bench/distill_context:{k}", template_sha="", temperature=0.0,
                           max_tokens=max_tokens, seed=0, stop=["\n"]) for k in keys for p in prompts]
    resps = query_teacher(reqs, teacher_cfg)
    return {k: resps[i * len(prompts):(i + 1) * len(prompts)] for i, k in enumerate(keys)}


def training_rows(prompts: list[dict], key: str, responses: list, gold_filter: bool) -> tuple[list[dict], dict]:
    """Training rows: the erased prompt + the teacher's answer to ``prompts[*][key]`` (the dataset-row fields
    training reads). Dropped, as ``generate_dataset`` drops them: errors, empty and truncated answers; and,
    with ``gold_filter``, wrong ones. Returns (rows, counts incl. the teacher's accuracy on these prompts)."""
    from distill.answers import answers_match

    rows, counts, correct = [], {"sent": len(prompts), "kept": 0, "error": 0, "empty": 0, "truncated": 0,
                                 "gold_mismatch": 0}, 0
    for p, resp in zip(prompts, responses):
        choice = resp.choices[0] if resp.error is None and resp.choices else None
        text = choice.text.strip() if choice else ""
        match = answers_match(text.splitlines()[0] if text else None, p["gold"]) is True
        correct += match
        why = ("error" if choice is None else "empty" if not text else "truncated" if choice.finish_reason == "length"
               else "gold_mismatch" if gold_filter and not match else None)
        if why:
            counts[why] += 1
            continue
        counts["kept"] += 1
        rows.append({"id": f"{p['id']}:{key}", "style": "instruct" if key == "zero_shot" else "icl", "gold": p["gold"],
                     "answer": text, "prompt_messages": p[key], "demo_ids": [] if key == "zero_shot" else p["demo_ids"],
                     "messages": p["zero_shot"] + [{"role": "assistant", "content": text}]})
    counts["teacher_accuracy"] = round(correct / max(1, len(prompts)), 4)
    return rows, counts


def save_rows(rows: list[dict], out: Path) -> Path:
    """An eakd-style dataset folder (a ``train`` split) that :func:`distill.train.run.train_student` reads."""
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(out))
    return out


def accuracy(model, tok, questions: list[dict], key: str, max_tokens: int, batch_size: int, autocast) -> dict:
    """Greedy first-line answers to ``questions[*][key]``, graded as eakd grades ICL answers."""
    from distill.answers import ExtractionConfig
    from distill.evaluate import generate_greedy, score_answers

    t = time.perf_counter()
    outputs, truncated = generate_greedy(model, tok, [q[key] for q in questions], max_tokens, batch_size,
                                         autocast, [True] * len(questions))
    s = score_answers(outputs, [{"id": q["id"], "style": "icl", "gold": q["gold"], "answer": None} for q in questions],
                      ExtractionConfig())
    per_task: dict[str, list[bool]] = {}
    for q, rec in zip(questions, s["per_row"]):
        per_task.setdefault(q["task"], []).append(rec["correct"])
    return {"accuracy": s["accuracy"], "correct": s["correct"], "rows": s["rows"], "no_answer": s["no_answer"],
            "truncated": truncated, "seconds": round(time.perf_counter() - t, 1),
            "per_task": {k: round(sum(v) / len(v), 4) for k, v in per_task.items()},
            "examples": [{"id": r["id"], "gold": r["gold"], "output": r["output"][:100], "correct": r["correct"]}
                         for r in s["per_row"][:: max(1, len(questions) // 14)]]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help=f"comma-separated, of: {', '.join(TASKS)}")
    ap.add_argument("--train-per-task", type=int, default=24, help="training questions per task (the demo pool too)")
    ap.add_argument("--held-out-per-task", type=int, default=20, help="held-out questions per task (never demos)")
    ap.add_argument("--shots", type=int, default=4, help="demonstrations in the teacher's prompt")
    ap.add_argument("--demo-format", default="chat", choices=["chat", "text"],
                    help="chat: demos as past user/assistant turns; text: eakd's icl template (one user message)")
    ap.add_argument("--steps", type=int, default=80, help="optimizer steps per trained arm")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4, help="LoRA peak learning rate (as bench/distill_kd_vs_sft.py)")
    ap.add_argument("--keep-layers", type=int, default=0,
                    help="depth-prune the student to N of the teacher's 30 layers; 0 = the bundled model itself")
    ap.add_argument("--max-tokens", type=int, default=32, help="answer budget, teacher generation and evaluation")
    ap.add_argument("--gold-filter", action="store_true", help="train only on teacher answers that match the gold")
    ap.add_argument("--no-control", action="store_true", help="skip arm (e), training on zero-shot teacher answers")
    ap.add_argument("--eval-batch-size", type=int, default=16)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="evaluation compute (auto: bf16 autocast where the CPU has it natively)")
    ap.add_argument("--seed", type=int, default=0, help="questions, demo choice and training")
    ap.add_argument("--keep-work", action="store_true", help="keep the work dir (datasets, two ~0.5 GB students)")
    args = ap.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    if not tasks or any(t not in TASKS for t in tasks):
        sys.exit(f"--tasks: unknown {[t for t in tasks if t not in TASKS]}; choose from {', '.join(TASKS)}")
    if args.train_per_task <= args.shots:
        sys.exit(f"--train-per-task ({args.train_per_task}) must exceed --shots ({args.shots}): a training "
                 "question's demos are the other training questions of its task")
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("distill.train").setLevel(logging.INFO)  # one line per 10 steps

    import torch

    from distill.models import fetch_bundled_teacher, load_causal_lm, load_tokenizer, resolve_dtype
    from distill.teacher.query import TeacherConfig
    from distill.train.run import TrainConfig, depth_prune, train_student

    teacher_dir = fetch_bundled_teacher()
    n_layers = json.loads((teacher_dir / "config.json").read_text())["num_hidden_layers"]
    keep = args.keep_layers or None
    if keep is not None and not 1 <= keep <= n_layers:
        sys.exit(f"--keep-layers must be in [1, {n_layers}], or 0 for the whole model; got {keep}")
    same_as_teacher = keep is None or keep == n_layers
    questions = make_questions(tasks, args.train_per_task + args.held_out_per_task, args.seed)
    held = [q for q in questions if int(q["id"].rsplit("-", 1)[1]) < args.held_out_per_task]
    train = [q for q in questions if int(q["id"].rsplit("-", 1)[1]) >= args.held_out_per_task]
    train_prompts = build_prompts(train, train, args.shots, args.seed)
    held_prompts = build_prompts(held, train, args.shots, args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="eakd-bench-context-"))
    print(f"{len(tasks)} tasks: {len(train)} training questions, {len(held)} held-out; work dir {tmp}", flush=True)

    # 1. The teacher answers every training question few-shot (the context-distillation data) and zero-shot
    #    (the control's data), greedy, one line, in one engine start.
    t = time.perf_counter()
    keys = [args.demo_format] + ([] if args.no_control else ["zero_shot"])
    answers = ask_teacher(train_prompts, keys, args.max_tokens,
                          TeacherConfig(backend="vllm", model="bundled", cache_path=str(tmp / "cache.sqlite")))
    gen_seconds = time.perf_counter() - t
    data = {name: training_rows(train_prompts, key, answers[key], args.gold_filter)
            for name, key in (("context", args.demo_format), ("control", "zero_shot")) if key in answers}
    print(f"teacher: {len(keys) * len(train)} answers in {gen_seconds:.0f} s; "
          + "; ".join(f"{n}: {c}" for n, (_, c) in data.items()), flush=True)

    # 2. Train each arm the same way: context distillation (few-shot answers, erased prompts), the control.
    trained: dict[str, dict] = {}
    for name, (rows, _) in data.items():
        if not rows:
            sys.exit(f"{name}: every teacher answer was dropped ({data[name][1]}); nothing to train on")
        cfg = TrainConfig(student="bundled", keep_layers=keep, max_steps=args.steps, batch_size=args.batch_size,
                          lr=args.lr, save_dtype="float32", seed=args.seed, log_every=10)
        m = json.loads((train_student(cfg, save_rows(rows, tmp / f"data_{name}"), tmp / name) / "metrics.json").read_text())
        trained[name] = {"rows": m["train_rows"], "steps": m["steps"], "seconds": m["seconds"], "autocast": m["autocast"],
                         "loss_first": m["loss_first"], "loss_last": m["loss_last"]}
        print(f"{name}: {m['train_rows']} rows, {m['steps']} steps in {m['seconds']:.0f} s, loss "
              f"{m['loss_first']:.3f} -> {m['loss_last']:.3f}", flush=True)

    # 3. Every arm on the held-out questions, with the same generator and grader.
    compute = resolve_dtype(args.dtype, "cpu")
    autocast = torch.bfloat16 if compute == "bfloat16" else None
    tok = load_tokenizer(teacher_dir)

    def measure(model, key: str, label: str) -> dict:
        r = accuracy(model, tok, held_prompts, key, args.max_tokens, args.eval_batch_size, autocast)
        print(f"{label}: {r['correct']}/{r['rows']} ({r['seconds']:.0f} s)", flush=True)
        return r

    other = "text" if args.demo_format == "chat" else "chat"
    res: dict[str, dict] = {}
    teacher = load_causal_lm(teacher_dir, dtype="float32").eval()
    res["teacher_few_shot"] = measure(teacher, args.demo_format, f"(a) teacher few-shot ({args.demo_format} demos)")
    res[f"teacher_few_shot_{other}"] = measure(teacher, other, f"    teacher few-shot ({other} demos, for information)")
    res["teacher_zero_shot"] = measure(teacher, "zero_shot", "(b) teacher zero-shot")
    if same_as_teacher:  # same weights, prompts and greedy decoding: the same answers
        res["student_before"] = res["teacher_zero_shot"] | {"note": "the student is the teacher's model: (c) = (b)"}
    else:
        res["student_before"] = measure(depth_prune(teacher, keep).eval(), "zero_shot", "(c) student zero-shot, before")
    del teacher
    for name, key, label in (("context", "student_after", "(d) student after context distillation"),
                             ("control", "control_after", "(e) control student")):
        if name in trained:
            res[key] = measure(load_causal_lm(tmp / name, dtype="float32").eval(), "zero_shot", label)

    a, c, d = (res[k]["accuracy"] for k in ("teacher_few_shot", "student_before", "student_after"))

    def closed(x: float) -> float | None:
        return None if a <= c else round((x - c) / (a - c), 4)

    gap, control_gap = closed(d), closed(res["control_after"]["accuracy"]) if "control_after" in res else None
    checks = [("context distillation closes >= 50% of the gap from the student's zero-shot to the teacher's few-shot "
               "score on held-out questions", gap is not None and gap >= 0.5,
               f"(d - c) / (a - c) = ({d:.3f} - {c:.3f}) / ({a:.3f} - {c:.3f}) = {gap:.1%}" if gap is not None else
               f"no gap to close: teacher few-shot {a:.3f} <= student zero-shot {c:.3f}")]

    student = (f"the bundled model ({n_layers} layers)" if same_as_teacher else
               f"the bundled model depth-pruned to {keep} of {n_layers} layers") + " + LoRA"
    print(f"\n{len(tasks)} tasks x {args.held_out_per_task} held-out questions; teacher = bundled SmolLM2-135M-Instruct "
          f"with {args.shots} {args.demo_format} demos; student = {student}, {args.steps} steps x {args.batch_size} on "
          f"{trained['context']['rows']} context-distilled rows; greedy, first line graded; eval compute {compute}; "
          f"{os.cpu_count()} CPU threads\n")
    rows = [("teacher_few_shot", f"(a) teacher, few-shot ({args.demo_format})"),
            (f"teacher_few_shot_{other}", f"teacher, few-shot ({other}; information)"),
            ("teacher_zero_shot", "(b) teacher, zero-shot"), ("student_before", "(c) student zero-shot, before"),
            ("student_after", "(d) student zero-shot, context-distilled"),
            ("control_after", "(e) control: trained on zero-shot answers")]
    print("| arm | accuracy | " + " | ".join(tasks) + " | gap closed |")
    print("|---|---|" + "---|" * len(tasks) + "---|")
    for key, label in rows:
        if key in res:
            r, g = res[key], {"student_after": gap, "control_after": control_gap}.get(key)
            print(f"| {label} | {r['accuracy']:.1%} ({r['correct']}/{r['rows']}) | "
                  + " | ".join(f"{r['per_task'].get(t, 0):.0%}" for t in tasks) + f" | {'—' if g is None else f'{g:.1%}'} |")
    print()
    for claim, ok, text in checks:
        print(f"- [{'met' if ok else 'MISSED'}] {claim}: {text}")
    if control_gap is not None:
        print(f"- (control, no target) training as long on the teacher's zero-shot answers closes {control_gap:.1%}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "distill_context.json"
    out.write_text(json.dumps({
        "config": vars(args), "tasks": {t: TASKS[t][0] for t in tasks}, "student": student,
        "questions": {"train": len(train), "held_out": len(held)}, "eval_dtype": compute,
        "generate": {"seconds": round(gen_seconds, 1), **{n: c for n, (_, c) in data.items()}},
        "trained": trained, "arms": res, "gap_closed": gap, "control_gap_closed": control_gap,
        "targets": [{"claim": cl, "met": ok, "numbers": tx} for cl, ok, tx in checks],
        "cpu_count": os.cpu_count()}, indent=2))
    print(f"\nwrote {out}")
    if not args.keep_work:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
