"""Tokenizer transplant on the bundled model: wall time, and bits per byte before any KD.

Trains a byte-level BPE (``--vocab``, default 16000) on WikiText-2 *valid* with :func:`distill.transplant.train_tokenizer`,
transplants the bundled SmolLM2-135M-Instruct onto it with :func:`distill.transplant.transplant_model`, and scores both
the original and the transplanted model on ``--slices`` x ``--bytes`` byte slices of WikiText-2 *test* (evenly spaced
through the file, each scored alone from a ``<|endoftext|>`` start token, fp32). Per-byte NLL (bits per byte = summed
next-token NLL / ln 2 / UTF-8 bytes of the slice) makes the two tokenizers comparable: both cover the same bytes.
The transplanted figure is the starting point for cross-tokenizer KD, not a result of it.

Prints the figures and writes ``bench/results/transplant.json`` (with lscpu's model name and CPU flags).
Needs ``../shared/data/wikitext-2`` (or ``$EAKD_DATA_DIR``) and the bundled model (``eakd models fetch``).

Run: ``.venv/bin/python bench/transplant.py [--vocab 16000 --slices 20 --bytes 512]`` (~2 min on 2 cores).
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
from distill.config import shared_data_dir  # noqa: E402
from distill.models import load_causal_lm, load_tokenizer, resolve_model_path  # noqa: E402
from distill.transplant import train_tokenizer, transplant_model  # noqa: E402
from distill.transplant_config import WIKITEXT_VALID, TokenizerTrainConfig, TransplantConfig  # noqa: E402

WIKITEXT_TEST = "wikitext-2/wiki.test.tokens"


def cpu() -> dict[str, object]:
    """lscpu's model name and whether bf16 matmuls are native (avx512_bf16 / amx_bf16)."""
    model, flags = lscpu()
    return {"model": model, "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "avx512f": "avx512f" in flags}


def test_slices(path: Path, n: int, size: int) -> list[str]:
    """``n`` slices of ``size`` bytes, evenly spaced through the file (a split multi-byte character is dropped)."""
    data = path.read_bytes()
    step = (len(data) - size) // max(n - 1, 1)
    return [data[i * step:i * step + size].decode("utf-8", errors="ignore") for i in range(n)]


def bits_per_byte(model, tok, slices: list[str]) -> dict[str, float]:
    """Summed next-token NLL of every slice (from a <|endoftext|> start) over its UTF-8 bytes, in bits."""
    import torch

    start = tok.convert_tokens_to_ids("<|endoftext|>")
    nll, nbytes, ntok = 0.0, 0, 0
    with torch.no_grad():
        for s in slices:
            ids = torch.tensor([[start, *tok.encode(s, add_special_tokens=False)]])
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
            nll -= logp.gather(1, ids[0, 1:, None]).sum().item()
            nbytes += len(s.encode())
            ntok += ids.shape[1] - 1
    return {"bits_per_byte": round(nll / math.log(2) / nbytes, 4), "tokens": ntok, "bytes": nbytes,
            "bytes_per_token": round(nbytes / ntok, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, default=16000)
    ap.add_argument("--slices", type=int, default=20)
    ap.add_argument("--bytes", type=int, default=512)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "transplant.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    data = shared_data_dir()
    if data is None or not (data / WIKITEXT_TEST).is_file() or not (data / WIKITEXT_VALID).is_file():
        sys.exit("needs ../shared/data/wikitext-2 (wiki.valid.tokens, wiki.test.tokens) or $EAKD_DATA_DIR")
    import torch

    torch.set_num_threads(2)
    old_dir = resolve_model_path("bundled")
    slices = test_slices(data / WIKITEXT_TEST, args.slices, args.bytes)
    with tempfile.TemporaryDirectory(prefix="eakd-transplant-bench-") as tmp:
        t0 = time.perf_counter()
        tok_dir = train_tokenizer(TokenizerTrainConfig(vocab=args.vocab, out=Path(tmp) / "tok",
                                                       text=[data / WIKITEXT_VALID]))
        t1 = time.perf_counter()
        new_dir = transplant_model(TransplantConfig(model="bundled", tokenizer=tok_dir, out=Path(tmp) / "model"))
        t2 = time.perf_counter()
        record = json.loads((new_dir / "transplant.json").read_text())
        arms = {}
        for name, path in (("original", old_dir), ("transplanted", new_dir)):
            model, tok = load_causal_lm(path, dtype="float32").eval(), load_tokenizer(path)
            s = time.perf_counter()
            arms[name] = bits_per_byte(model, tok, slices) | {
                "vocab": len(tok), "params": sum(p.numel() for p in model.parameters()),
                "score_s": round(time.perf_counter() - s, 1)}
            del model
    result = {
        "what": "bundled SmolLM2-135M-Instruct transplanted onto a byte-level BPE trained on WikiText-2 valid; "
                "bits per byte on WikiText-2 test slices, fp32, before any KD",
        "vocab_requested": args.vocab, "slices": args.slices, "slice_bytes": args.bytes,
        "train_tokenizer_s": round(t1 - t0, 1), "transplant_s": round(t2 - t1, 1),
        "mapping": record["stats"], "roles": record["roles"], "method": record["method"], "arms": arms,
        "bpb_ratio_transplanted_vs_original": round(arms["transplanted"]["bits_per_byte"]
                                                   / arms["original"]["bits_per_byte"], 3),
        "cpu": cpu(), "torch_threads": torch.get_num_threads(), "code_version": record["code_version"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"train-tokenizer {result['train_tokenizer_s']} s | transplant {result['transplant_s']} s | "
          f"mapping {record['stats']}")
    for name, a in arms.items():
        print(f"{name:>12}: {a['bits_per_byte']:.4f} bits/byte | vocab {a['vocab']} | "
              f"{a['bytes_per_token']} bytes/token | {a['params'] / 1e6:.1f} M params")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
