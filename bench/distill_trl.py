"""Training speed and memory side by side with TRL: same student, data, batches, steps and CPU (issue 5).

Four arms, each in its own subprocess (so each peak RSS is that arm's alone), in alternating order:

1. ``eakd_sft`` — :func:`distill.train.run.train_student`, sequence-level KD (CE on the assistant tokens);
2. ``trl_sft`` — TRL's ``SFTTrainer`` on prompt-completion rows, loss on the completion only
   (``bench/peers/trl_train.py``);
3. ``eakd_kd`` — ``train_student`` with online logit KD: ``kd.method = generalized_jsd``, ``alpha_ce = 0``,
   the teacher in fp32 beside the student, the loss chunked over the assistant positions (``kd.chunk_size``);
4. ``trl_gkd`` — TRL's ``GKDTrainer`` with ``lmbda = 0`` (no student sampling: the dataset's answers, as in
   eakd's arm) and ``seq_kd = False``; its generalized JSD over full ``[batch, length, vocab]`` logits.

Both KD arms use GKD's ``beta = 0.5`` (TRL's default) at temperature 1. eakd's ``generalized_jsd`` is
normalized by ``beta (1 - beta)`` (see ``distill.train.losses``), so its loss reads 4x TRL's at beta 0.5: same
divergence, same gradient direction.

Student: the bundled teacher depth-pruned (:func:`distill.train.run.depth_prune`) to ``--keep-layers`` and saved
once as a safetensors folder that every arm loads as is (fp32, LoRA on all linear projections, dropout
``--lora-dropout`` — GKDTrainer switches dropout off, so the default 0 keeps the arms equal). Data: the
first ``--rows`` train rows of ``--dataset`` that eakd's tokenizer keeps (a multiple of the batch size;
none may be longer than ``--max-length``, as TRL's GKD collator would cut a row's start where eakd cuts
its end), saved as a fresh train-only dataset for the eakd arms; the TRL arms get the same conversations
in eakd's batch order (its seeded length-grouped shuffle, replayed here) through a sequential sampler, so
every arm trains on the very same batches. Same lr, warmup steps then cosine (TRL's warmup starts at lr 0,
eakd's at lr/warmup), clipping 1.0, seed. No evaluation and no checkpoints in any arm.

Measured: ``tokens/s`` = non-padding tokens (the ``attention_mask`` sum) of the batches trained on, over the
training loop's seconds — eakd's ``metrics.json`` ``tokens_per_s``, and for TRL transformers'
``num_input_tokens_seen`` (``"non_padding"``) over ``on_train_begin`` .. ``on_train_end``; the per-step
counts of paired arms are compared, so both sides count the same quantity. ``peak RSS`` = the arm's
process ``ru_maxrss`` (loading included; eakd's also includes merging and saving its student afterwards).
Targets: eakd SFT >= 1.0x TRL SFT tokens/s; eakd online KD >= 1.0x TRL GKD tokens/s at <= 0.7x its peak RSS.
Writes ``bench/results/distill_trl.json``.

Setup: ``bash bench/peers/setup_trl.sh /work/peervenvs`` (once, ~1-2 min).
Run: ``.venv/bin/python bench/distill_trl.py [--steps 30 --batch-size 4 --max-length 512]`` (~10-15 min on
2 CPU cores, most of it the two KD arms; ``--steps 2 --rows 8 --batch-size 2`` is a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PEER_SCRIPT = ROOT / "bench" / "peers" / "trl_train.py"
sys.path.insert(0, str(ROOT))
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def run_eakd_arm(spec_path: str, result_path: str) -> int:
    """The eakd arm's subprocess: train_student on the spec's config, report its metrics and ru_maxrss."""
    import logging

    from distill.train.run import TrainConfig, train_student

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    spec = json.loads(Path(spec_path).read_text())
    out = train_student(TrainConfig(**spec["train"]), spec["dataset"], spec["out"])
    m = json.loads((out / "metrics.json").read_text())
    import torch

    result = {"tool": "eakd.train_student", "mode": m["mode"], "steps": m["steps"], "seconds": m["seconds"],
              "tokens": m["tokens"], "tokens_per_s": m["tokens_per_s"],
              "step_tokens": [h["tokens"] for h in m["history"]], "losses": [h["loss"] for h in m["history"]],
              "loss_first": m["loss_first"], "loss_last": m["loss_last"],
              "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
              "torch_threads": torch.get_num_threads()}
    Path(result_path).write_text(json.dumps(result, indent=2))
    return 0


def build_student(teacher_dir: Path, keep: int, out: Path) -> Path:
    """The bundled teacher depth-pruned to ``keep`` layers, saved (fp32 safetensors + tokenizer) at ``out``."""
    from distill.models import load_causal_lm, load_tokenizer
    from distill.train.run import depth_prune

    model = depth_prune(load_causal_lm(teacher_dir, dtype="float32"), keep)
    model.save_pretrained(out, safe_serialization=True)
    load_tokenizer(teacher_dir).save_pretrained(out)
    return out


def select_rows(dataset_dir: Path, student: Path, n: int, batch_size: int, max_length: int,
                out: Path) -> list[list[dict]]:
    """The first ``n`` train conversations eakd can train on (a multiple of ``batch_size``), saved as a
    train-only eakd dataset at ``out``; returns them."""
    from datasets import Dataset, DatasetDict, load_from_disk

    from distill.models import load_tokenizer
    from distill.train.run import tokenize_row

    tok = load_tokenizer(student)
    usable = [m for m in load_from_disk(str(dataset_dir))["train"]["messages"] if tokenize_row(tok, m, max_length)]
    n = min(n or len(usable), len(usable)) // batch_size * batch_size
    if n == 0:
        sys.exit(f"{dataset_dir}: fewer usable train rows ({len(usable)}) than one batch ({batch_size})")
    rows = usable[:n]
    longest = max(len(tokenize_row(tok, m, 1 << 30)[0]) for m in rows)
    if longest > max_length:  # GKD's collator keeps a long row's end, eakd and SFTTrainer its start
        sys.exit(f"--max-length {max_length} would truncate rows (longest {longest} tokens), and TRL's GKD collator "
                 f"truncates from the other end than eakd: use --max-length >= {longest}")
    DatasetDict({"train": Dataset.from_dict({"messages": rows})}).save_to_disk(str(out))
    return rows


def eakd_batch_order(rows: list[list[dict]], student: Path, steps: int, batch_size: int, max_length: int,
                     seed: int) -> list[list[dict]]:
    """The rows in the order train_student draws them (its seeded length-grouped batches, popped from the end)."""
    from distill.models import load_tokenizer
    from distill.train.run import length_grouped_batches, tokenize_row

    tok = load_tokenizer(student)
    lengths = [len(tokenize_row(tok, m, max_length)[0]) for m in rows]
    rng, queue, order = random.Random(seed), [], []
    for _ in range(steps):
        if not queue:
            queue = length_grouped_batches(lengths, batch_size, rng)
        order += queue.pop()
    return [rows[i] for i in order]


def run_arm(cmd: list[str], spec: dict, work: Path, name: str) -> dict:
    spec_path, result_path = work / f"{name}.spec.json", work / f"{name}.result.json"
    spec_path.write_text(json.dumps(spec))
    t = time.perf_counter()
    proc = subprocess.run(cmd + [str(spec_path), str(result_path)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1"})
    (work / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"arm {name} failed (exit {proc.returncode}); log {work / f'{name}.log'}:\n{proc.stderr[-4000:]}")
    result = json.loads(result_path.read_text())
    result["process_seconds"] = round(time.perf_counter() - t, 1)
    print(f"{name}: {result['steps']} steps in {result['seconds']:.1f} s, {result['tokens_per_s']} tok/s, "
          f"peak RSS {result['peak_rss_mib']:.0f} MiB", flush=True)
    return result


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--eakd-arm":  # the subprocess of one eakd arm
        return run_eakd_arm(sys.argv[2], sys.argv[3])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", type=Path, default=ROOT / "runs" / "demo-data" / "dataset",
                    help="an eakd dataset folder (train split with a messages column)")
    ap.add_argument("--rows", type=int, default=0, help="train rows to use (0: all usable; rounded to the batch size)")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per arm")
    ap.add_argument("--batch-size", type=int, default=4, help="sequences per step (no accumulation)")
    ap.add_argument("--max-length", type=int, default=512, help="truncate sequences to this many tokens")
    ap.add_argument("--keep-layers", type=int, default=20, help="student depth (the bundled model has 30 layers)")
    ap.add_argument("--lr", type=float, default=2e-4, help="peak learning rate")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-alpha", type=int, default=32)
    ap.add_argument("--lora-dropout", type=float, default=0.0, help="0: GKDTrainer disables dropout anyway")
    ap.add_argument("--beta", type=float, default=0.5, help="generalized JSD mixture weight (TRL GKD's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arms", default="eakd_sft,trl_sft,eakd_kd,trl_gkd", help="comma-separated, run in this order")
    ap.add_argument("--peer-venv", type=Path, default=Path("/work/peervenvs/trl"),
                    help="venv made by bench/peers/setup_trl.sh (VENV_ROOT/trl)")
    args = ap.parse_args()

    from distill.models import fetch_bundled_teacher

    peer_python = args.peer_venv / "bin" / "python"
    if not peer_python.is_file():
        sys.exit(f"{peer_python} not found: create the TRL venv first with\n"
                 f"  bash bench/peers/setup_trl.sh {args.peer_venv.parent}")
    if not (args.dataset / "dataset_dict.json").is_file():
        sys.exit(f"{args.dataset} is not an eakd dataset (no dataset_dict.json)")
    names = [a for a in args.arms.split(",") if a]
    unknown = set(names) - {"eakd_sft", "trl_sft", "eakd_kd", "trl_gkd"}
    if unknown:
        sys.exit(f"--arms: unknown {sorted(unknown)}")
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="eakd-bench-trl-"))
    teacher = fetch_bundled_teacher()
    student = build_student(teacher, args.keep_layers, work / "student")
    rows = select_rows(args.dataset, student, args.rows, args.batch_size, args.max_length, work / "dataset")
    ordered = eakd_batch_order(rows, student, args.steps, args.batch_size, args.max_length, args.seed)
    warmup = max(1, int(0.1 * args.steps))  # eakd's warmup_ratio 0.1, as whole steps for TRL
    lora = {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout, "target_modules": TARGETS}
    train = {"student": str(student), "lora": lora, "max_steps": args.steps, "batch_size": args.batch_size,
             "grad_accum": 1, "lr": args.lr, "warmup_ratio": 0.1, "max_length": args.max_length, "dtype": "float32",
             "device": "cpu", "seed": args.seed, "log_every": 5}
    kd = {"enabled": True, "method": "generalized_jsd", "alpha_ce": 0.0, "beta": args.beta, "temperature": 1.0,
          "teacher": str(teacher), "teacher_dtype": "float32"}
    peer = {"model": str(student), "teacher": str(teacher), "rows": ordered, "batch_size": args.batch_size,
            "steps": args.steps, "lr": args.lr, "warmup_steps": warmup, "max_length": args.max_length,
            "seed": args.seed, "beta": args.beta, "lora": lora}
    eakd_cmd = [sys.executable, str(Path(__file__).resolve()), "--eakd-arm"]
    specs = {"eakd_sft": (eakd_cmd, {"train": train, "dataset": str(work / "dataset"), "out": str(work / "eakd_sft")}),
             "trl_sft": ([str(peer_python), str(PEER_SCRIPT)], {**peer, "mode": "sft"}),
             "eakd_kd": (eakd_cmd, {"train": {**train, "kd": kd}, "dataset": str(work / "dataset"),
                                    "out": str(work / "eakd_kd")}),
             "trl_gkd": ([str(peer_python), str(PEER_SCRIPT)], {**peer, "mode": "gkd"})}
    arms = {name: run_arm(*specs[name], work, name) for name in names}
    for heavy in ("student", "eakd_sft", "eakd_kd"):  # keep the specs, results and logs, not the models
        shutil.rmtree(work / heavy, ignore_errors=True)

    checks, same_tokens = [], {}
    for ours, theirs, claim in [("eakd_sft", "trl_sft", "eakd SFT tokens/s >= 1.0x TRL SFTTrainer's"),
                                ("eakd_kd", "trl_gkd", "eakd online KD tokens/s >= 1.0x TRL GKDTrainer's (lambda=0)")]:
        if {ours, theirs} <= set(arms):
            a, b = arms[ours], arms[theirs]
            same_tokens[f"{ours}_vs_{theirs}"] = a["step_tokens"] == b["step_tokens"]
            ratio = a["tokens_per_s"] / b["tokens_per_s"]
            checks.append((claim, ratio >= 1.0, f"{a['tokens_per_s']} vs {b['tokens_per_s']} tok/s ({ratio:.2f}x)"))
    if {"eakd_kd", "trl_gkd"} <= set(arms):
        ours, theirs = arms["eakd_kd"]["peak_rss_mib"], arms["trl_gkd"]["peak_rss_mib"]
        checks.append(("eakd online KD peak RSS <= 0.7x TRL GKDTrainer's", ours <= 0.7 * theirs,
                       f"{ours:.0f} vs {theirs:.0f} MiB ({ours / theirs:.2f}x)"))
    trl_arm = next((r for r in arms.values() if "trl" in r), {})  # a TRL arm's result names its stack
    versions = {k: trl_arm.get(k, "?") for k in ("trl", "peft", "transformers", "torch")}
    threads = sorted({r["torch_threads"] for r in arms.values()})

    print(f"\n{len(rows)} rows of {args.dataset.name}, {args.steps} steps x {args.batch_size}, max_length "
          f"{args.max_length}; student = bundled depth-pruned to {args.keep_layers} layers + LoRA r{args.lora_r}, fp32; "
          f"KD: generalized JSD beta {args.beta}, teacher fp32; {os.cpu_count()} CPUs, torch threads {threads}; "
          f"TRL {versions['trl']}, peft {versions['peft']}, transformers {versions['transformers']}\n")
    print("| arm | tokens/s | s/step | peak RSS MiB | train loss (first -> last fifth) |")
    print("|---|---|---|---|---|")
    for name, r in arms.items():
        loss = "n/a" if r["loss_first"] is None else f"{r['loss_first']:.4f} -> {r['loss_last']:.4f}"
        print(f"| {name} | {r['tokens_per_s']:.1f} | {r['seconds'] / max(1, r['steps']):.2f} | "
              f"{r['peak_rss_mib']:.0f} | {loss} |")
    if "eakd_kd" in arms:
        print(f"\n(eakd_kd's loss is generalized JSD / (beta (1 - beta)): {1 / (args.beta * (1 - args.beta)):.3g}x "
              "TRL GKD's at the same beta)")
    for pair, same in same_tokens.items():
        print(f"- tokens per step identical ({pair.replace('_vs_', ' vs ')}): {'yes' if same else 'NO'}")
    for claim, ok, text in checks:
        print(f"- [{'met' if ok else 'MISSED'}] {claim}: {text}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "distill_trl.json"
    config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()} | {
        "rows_used": len(rows), "warmup_steps": warmup, "lora_target_modules": TARGETS}
    out.write_text(json.dumps({"config": config, "arms": arms, "same_step_tokens": same_tokens,
                               "targets": [{"claim": c, "met": ok, "numbers": t} for c, ok, t in checks],
                               "versions": versions, "cpu_count": os.cpu_count(), "torch_threads": threads,
                               "seconds": round(time.perf_counter() - t0, 1)}, indent=2))
    print(f"\nwrote {out} ({time.perf_counter() - t0:.0f} s; arm logs in {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
