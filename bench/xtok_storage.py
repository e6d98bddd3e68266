"""Bytes per stored teacher token for top-k logprobs: ids only, byte strings, byte strings + ids, compressed.

The bundled SmolLM2-135M-Instruct answers ``--rows`` GSM8K train questions greedily (transformers, fp32, chat
template, ``--max-new-tokens``), keeping its top-``--k`` log-probabilities at every generated token — the rows
an OpenAI-compatible teacher or the vLLM backend would return. Each row is packed the ways :mod:`distill.logprobs`
can, and the JSON string a dataset row holds is measured (bytes / generated tokens). Fidelity: ids and byte strings
must round-trip exactly, logprobs to float16 (the max error is printed). DistillKit documents ~300 B/token for its
recommended top-k storage; this is the figure to compare at equal k.

Prints a table and writes ``bench/results/xtok_storage.json`` (with lscpu's model name).
Run: ``.venv/bin/python bench/xtok_storage.py [--rows 32 --k 20 --max-new-tokens 96]`` (~2 min on 2 cores).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import lscpu  # noqa: E402
from distill.config import shared_data_dir  # noqa: E402
from distill.logprobs import (  # noqa: E402
    pack_topk,
    pack_topk_bytes,
    unpack_topk,
    unpack_topk_bytes,
    vocab_strings,
)
from distill.models import load_causal_lm, load_tokenizer, resolve_model_path  # noqa: E402

GSM8K = "gsm8k/train.jsonl"


def gsm8k_questions(n: int, skip: int = 0) -> list[str]:
    data = shared_data_dir()
    if data is None or not (data / GSM8K).is_file():
        sys.exit("needs ../shared/data/gsm8k/train.jsonl (or $EAKD_DATA_DIR)")
    lines = (data / GSM8K).read_text().splitlines()[skip: skip + n]
    return [json.loads(line)["question"] for line in lines]


def teacher_answers(questions: list[str], k: int, max_new_tokens: int, batch: int = 16) -> list[dict]:
    """Greedy answers of the bundled teacher with its top-``k`` per generated token:
    ``{"question", "text", "token_ids", "top_ids", "top_lps", "token_lps"}`` per question."""
    import torch

    path = resolve_model_path("bundled")
    model, tok = load_causal_lm(path, dtype="float32").eval(), load_tokenizer(path)
    tok.padding_side = "left"
    end = tok.convert_tokens_to_ids("<|im_end|>")
    out = []
    for i in range(0, len(questions), batch):
        qs = questions[i: i + batch]
        prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
                   for q in qs]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, output_scores=True,
                                 return_dict_in_generate=True, eos_token_id=end, pad_token_id=tok.pad_token_id)
        steps = torch.stack(gen.scores, 1).float().log_softmax(-1)                 # [B, T, V]
        top_lps, top_ids = steps.topk(k, -1)
        for j, q in enumerate(qs):
            ids = gen.sequences[j, enc["input_ids"].shape[1]:].tolist()
            n = next((t + 1 for t, x in enumerate(ids) if x == end), len(ids))     # keep the end token
            out.append({"question": q, "text": tok.decode(ids[:n], skip_special_tokens=True),
                        "token_ids": ids[:n], "top_ids": top_ids[j, :n].tolist(), "top_lps": top_lps[j, :n].tolist(),
                        "token_lps": steps[j, torch.arange(n), torch.tensor(ids[:n])].tolist()})
    return out


def pack_variants(row: dict, vocab: list[bytes]) -> dict[str, dict | list]:
    """The ways a row's logprobs can be stored (JSON objects as a dataset row holds them)."""
    toks = [vocab[t] for t in row["token_ids"]]
    alts = [[vocab[t] for t in r] for r in row["top_ids"]]
    args = (toks, row["token_lps"], alts, row["top_lps"])
    return {
        "json_strings (old openai format)": [{"tokens": [a.decode("utf-8", "replace") for a in r], "logprobs":
                                              [round(x, 5) for x in lp]} for r, lp in zip(alts, row["top_lps"])],
        "ids f16 (topk-f16/v1)": pack_topk(row["top_ids"], row["top_lps"]),
        "ids f16 + zstd": {"data": base64.b64encode(_zstd(pack_topk(row["top_ids"], row["top_lps"]))).decode()},
        "bytes f16 raw": pack_topk_bytes(*args, codec=None),
        "bytes f16 + zstd": pack_topk_bytes(*args),
        "bytes + ids f16 raw": pack_topk_bytes(*args, ids=row["top_ids"], token_ids=row["token_ids"], codec=None),
        "bytes + ids f16 + zstd": pack_topk_bytes(*args, ids=row["top_ids"], token_ids=row["token_ids"]),
    }


def _zstd(packed: dict) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor(level=19).compress(base64.b64decode(packed["ids"]) + base64.b64decode(packed["lp"]))


def check_fidelity(rows: list[dict], vocab: list[bytes]) -> dict[str, float | bool]:
    """Exact ids and strings after a round trip through the zstd form; the float16 logprob error."""
    worst, exact = 0.0, True
    for row in rows:
        toks = [vocab[t] for t in row["token_ids"]]
        alts = [[vocab[t] for t in r] for r in row["top_ids"]]
        packed = json.loads(json.dumps(pack_topk_bytes(toks, row["token_lps"], alts, row["top_lps"], ids=row["top_ids"],
                                                       token_ids=row["token_ids"])))
        back = unpack_topk_bytes(packed)
        ids, lps = unpack_topk(packed)
        exact &= ids.tolist() == row["top_ids"] and back.token_ids.tolist() == row["token_ids"]
        exact &= [[back.strings[a] for a in r] for r in back.alt] == alts
        worst = max(worst, max(abs(a - b) for r1, r2 in zip(lps.tolist(), row["top_lps"]) for a, b in zip(r1, r2)
                               if b > -60000))
    return {"ids_and_strings_exact": exact, "max_abs_logprob_error": round(worst, 5)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "xtok_storage.json")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    t0 = time.perf_counter()
    rows = teacher_answers(gsm8k_questions(args.rows), args.k, args.max_new_tokens)
    gen_s = time.perf_counter() - t0
    vocab = vocab_strings(load_tokenizer(resolve_model_path("bundled")))
    n_tokens = sum(len(r["token_ids"]) for r in rows)
    sizes: dict[str, int] = {}
    t1 = time.perf_counter()
    for row in rows:
        for name, packed in pack_variants(row, vocab).items():
            sizes[name] = sizes.get(name, 0) + len(json.dumps(packed))
    pack_s = time.perf_counter() - t1
    per_token = {name: round(size / n_tokens, 1) for name, size in sizes.items()}
    model, _ = lscpu()
    result = {"what": f"bytes of the JSON a dataset row stores per generated teacher token, top-{args.k}, "
                      "bundled SmolLM2-135M-Instruct greedy answers to GSM8K train questions",
              "rows": len(rows), "k": args.k, "max_new_tokens": args.max_new_tokens, "teacher_tokens": n_tokens,
              "bytes_per_token": per_token, "fidelity": check_fidelity(rows, vocab),
              "distillkit_reference_bytes_per_token": 300, "generate_s": round(gen_s, 1),
              "pack_all_variants_s": round(pack_s, 2), "cpu": model}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{n_tokens} teacher tokens in {len(rows)} rows, top-{args.k}:")
    for name, b in per_token.items():
        print(f"  {name:<34} {b:>7.1f} B/token")
    print(f"fidelity: {result['fidelity']} | wrote {args.out}")


if __name__ == "__main__":
    main()
