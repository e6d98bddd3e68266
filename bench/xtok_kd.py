"""Cross-tokenizer KD on a transplanted student: sequence-level KD (SFT) vs aligned top-k KD vs ULD, side by side.

Teacher: the bundled SmolLM2-135M-Instruct answers ``--train-rows + --eval-rows`` GSM8K train questions greedily
with its top-``--k`` logprobs (``bench/xtok_storage.py::teacher_answers``), stored by bytes as the vLLM backend
stores them (``topk-bytes/v1``). Student: the same model transplanted onto a ``--vocab`` byte-level BPE trained on
local text (:func:`distill.transplant.train_tokenizer` + :func:`distill.transplant.transplant_model`, as
``bench/transplant.py``), so its vocabulary is not the teacher's. Three arms train the same student on the same
rows, steps, seed and learning rate through :func:`distill.train.run.train_student`:

- ``sft``: sequence-level KD (CE on the teacher's text in the student's tokens);
- ``aligned``: ``train.kd.cross_tokenizer=aligned`` (approximate likelihood matching over shared byte chunks,
  top-k KD where a chunk is one token on both sides), ``alpha_ce`` mixed with the CE;
- ``uld``: ``train.kd.cross_tokenizer=uld`` (sorted top-k Wasserstein), the same ``alpha_ce``.

Held-out teacher answers score each student: per-byte NLL (nats summed over the student's answer tokens / UTF-8
bytes of the rendered answer: comparable across tokenizers) and teacher-answer agreement (share of answer tokens
where the student's argmax is the teacher text's next token). The untrained transplant and the teacher itself (on
its own tokens) are scored too. One seed unless ``--seeds`` says more; CPU fp32.

Prints a table and writes ``bench/results/xtok_kd.json`` (with lscpu's model name and the settings).
Run: ``.venv/bin/python bench/xtok_kd.py [--train-rows 48 --eval-rows 16 --steps 24]`` (~15 min on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import lscpu  # noqa: E402
from bench.xtok_storage import gsm8k_questions, teacher_answers  # noqa: E402
from distill.logprobs import pack_topk_bytes, vocab_strings  # noqa: E402
from distill.models import load_causal_lm, load_tokenizer, resolve_model_path  # noqa: E402


def save_dataset(rows: list[dict], n_train: int, vocab: list[bytes], path: Path) -> Path:
    """The teacher rows in the schema `eakd generate` writes (messages, raw_output, teacher ids + byte logprobs)."""
    from datasets import Dataset, DatasetDict

    out = []
    for i, r in enumerate(rows):
        toks = [vocab[t] for t in r["token_ids"]]
        packed = pack_topk_bytes(toks, r["token_lps"], [[vocab[t] for t in a] for a in r["top_ids"]], r["top_lps"],
                                 ids=r["top_ids"], token_ids=r["token_ids"])
        out.append({"id": str(i), "messages": [{"role": "user", "content": r["question"]},
                                               {"role": "assistant", "content": r["text"].strip()}],
                    "raw_output": r["text"], "teacher_token_ids": r["token_ids"], "teacher_logprobs": json.dumps(packed)})
    keep = [r for r in out if r["messages"][-1]["content"]]
    DatasetDict({"train": Dataset.from_list(keep[:n_train]),
                 "validation": Dataset.from_list(keep[n_train:])}).save_to_disk(str(path))
    return path


def score(model_dir: Path, conversations: list[list[dict]]) -> dict[str, float]:
    """Per-byte NLL of the assistant turns and top-1 agreement with their tokens, under ``model_dir``."""
    import torch

    from distill.train.data import IGNORE, render_turns, tokenize_row

    model, tok = load_causal_lm(model_dir, dtype="float32").eval(), load_tokenizer(model_dir)
    nll, nbytes, agree, ntok = 0.0, 0, 0, 0
    with torch.no_grad():
        for conv in conversations:
            ids, labels = tokenize_row(tok, conv, 1024)
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), -1)
            tgt = torch.tensor(labels[1:])
            keep = tgt != IGNORE
            nll -= logp[keep].gather(1, tgt[keep, None]).sum().item()
            agree += int((logp[keep].argmax(-1) == tgt[keep]).sum())
            ntok += int(keep.sum())
            nbytes += len(render_turns(tok, conv)[1].encode())
    del model
    return {"nll_per_byte": round(nll / nbytes, 4), "bits_per_byte": round(nll / nbytes / math.log(2), 4),
            "agreement": round(agree / ntok, 4), "tokens": ntok, "bytes": nbytes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-rows", type=int, default=48)
    ap.add_argument("--eval-rows", type=int, default=16)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--alpha-ce", type=float, default=0.5)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--vocab", type=int, default=16000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep-layers", type=int, default=None, help="depth-prune the student (faster on a busy CPU)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "xtok_kd.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    import torch
    from datasets import load_from_disk

    from distill.train.config import TrainConfig
    from distill.train.run import train_student
    from distill.transplant import train_tokenizer, transplant_model
    from distill.transplant_config import TokenizerTrainConfig, TransplantConfig

    torch.set_num_threads(2)
    teacher_dir = resolve_model_path("bundled")
    timings = {}
    with tempfile.TemporaryDirectory(prefix="eakd-xtok-bench-") as tmp:
        t = time.perf_counter()
        rows = teacher_answers(gsm8k_questions(args.train_rows + args.eval_rows), args.k, args.max_new_tokens)
        timings["teacher_generate_s"] = round(time.perf_counter() - t, 1)
        ds = save_dataset(rows, args.train_rows, vocab_strings(load_tokenizer(teacher_dir)), Path(tmp) / "ds")
        held_out = load_from_disk(str(ds))["validation"]["messages"]
        t = time.perf_counter()
        tok_dir = train_tokenizer(TokenizerTrainConfig(vocab=args.vocab, out=Path(tmp) / "tok"))
        student = transplant_model(TransplantConfig(model="bundled", tokenizer=tok_dir, out=Path(tmp) / "student"))
        timings["tokenizer_and_transplant_s"] = round(time.perf_counter() - t, 1)
        scores = {"teacher (its own tokens)": score(teacher_dir, held_out), "transplant, untrained": score(student, held_out)}
        arms = {"sft": {"enabled": False}, "aligned": {"enabled": True, "cross_tokenizer": "aligned"},
                "uld": {"enabled": True, "cross_tokenizer": "uld"}}
        metrics = {}
        for name, kd in arms.items():
            if kd["enabled"]:
                kd["alpha_ce"] = args.alpha_ce
            cfg = TrainConfig(student=str(student), kd=kd, max_steps=args.steps, batch_size=args.batch_size,
                              keep_layers=args.keep_layers,
                              lr=args.lr, seed=args.seed, dtype="float32", device="cpu", log_every=4)
            t = time.perf_counter()
            out = train_student(cfg, ds, Path(tmp) / f"out-{name}")
            timings[f"train_{name}_s"] = round(time.perf_counter() - t, 1)
            m = json.loads((out / "metrics.json").read_text())
            metrics[name] = {k: m.get(k) for k in ("mode", "kd_loss", "xtok", "loss_first", "loss_last", "tokens")}
            scores[name] = score(out, held_out)
    sft = scores["sft"]

    def versus(arm: dict) -> dict[str, float | None]:
        return {"nll_per_byte_lower_pct": round(100 * (1 - arm["nll_per_byte"] / sft["nll_per_byte"]), 1),
                "agreement_higher_pct": round(100 * (arm["agreement"] / sft["agreement"] - 1), 1)
                if sft["agreement"] else None}

    result = {
        "what": "transplanted SmolLM2-135M-Instruct student (new byte-level BPE) trained on the bundled teacher's "
                "greedy GSM8K answers with top-k logprobs stored by bytes; held-out teacher answers scored",
        "settings": vars(args) | {"out": str(args.out), "lora": "default (r 16, all projections)", "dtype": "float32",
                                  "seeds": [args.seed]},
        "scores": scores, "train": metrics,
        "aligned_vs_sft": versus(scores["aligned"]), "uld_vs_sft": versus(scores["uld"]),
        "issue_target": "aligned >= 10 % lower per-byte NLL and >= 10 % higher agreement than sft",
        "timings": timings, "cpu": lscpu()[0], "torch_threads": torch.get_num_threads(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, s in scores.items():
        print(f"{name:>24}: {s['nll_per_byte']:.4f} nats/byte | agreement {s['agreement']:.3f} | {s['tokens']} tokens")
    print(f"aligned vs sft: {result['aligned_vs_sft']} | uld vs sft: {result['uld_vs_sft']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
