"""int4 GPTQ side by side with llm-compressor's on the bundled SmolLM2-135M: same model, calibration and protocol.

eakd's half runs :func:`compress.stage.compress_student` with ``chain: false`` and the ``rtn4_g64`` and
``gptq4_g64`` steps of ``bench/compress_methods.py`` (int4, group 64 — 128 does not divide the hidden size
576 —, symmetric, dampening 0.01, eakd's default ``act_order``: ``auto`` picks static act-order or plain
order per layer by output error). Calibration is the compress stage's own (``_calibration``:
``--calib`` seeded random 512-token windows of WikiText-2 valid, seed 0); the very same token ids go to a
``.pt`` file that ``bench/peers/llmcompressor_gptq.py`` feeds to llm-compressor's ``oneshot`` +
``GPTQModifier`` (same bits, group, symmetry, dampening; static act-order on every layer, as it has no
per-layer choice) inside its own venv. The peer's saved ``pack-quantized`` model is loaded back here
(transformers + compressed-tensors decompress it to fp32; a hand unpacker is the fallback), checked to lie
on its int4 grid, and scored with
:func:`distill.evaluate.perplexity` under the protocol of the compress stage (WikiText-2 test,
non-overlapping 512-token windows, ``--windows`` of them or all with ``--full``, fp32).

Check (issue 6): eakd's GPTQ perplexity increase <= 1.05 x llm-compressor's. Writes
``bench/results/compress_llmcompressor.json``. ``wall s`` is compression only (calibration, GPTQ, saving;
for the peer the whole subprocess, including starting Python and loading the model), never the scoring.

Setup: ``bash bench/peers/setup_llmcompressor.sh /work/peervenvs`` (once, a few minutes).
Run: ``.venv/bin/python bench/compress_llmcompressor.py [--windows 40] [--calib 64] [--peer-venv DIR]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
PEER_SCRIPT = ROOT / "bench" / "peers" / "llmcompressor_gptq.py"


def load_peer_model(out: Path, source: Path) -> tuple[torch.nn.Module, str]:
    """The peer's compressed folder as an fp32 model with dequantized weights, and how it was loaded."""
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig

    try:
        model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, local_files_only=True,
                                                     quantization_config=CompressedTensorsConfig(dequantize=True))
        return model.eval(), "transformers + compressed-tensors (dequantize=True)"
    except Exception as exc:  # noqa: BLE001 - any loader failure falls back to unpacking by hand
        logging.warning("transformers could not load %s (%s); dequantizing by hand", out, exc)
    from safetensors.torch import load_file

    from compress.artifact import load_compressed

    model, tensors = load_compressed(source, dtype="float32"), {}
    for f in sorted(out.glob("*.safetensors")):
        tensors |= load_file(f)
    params = dict(model.named_parameters())
    for key, packed in tensors.items():
        if not key.endswith(".weight_packed"):
            continue
        name = key.removesuffix("_packed")
        rows, cols = params[name].shape
        shifts = torch.arange(8, dtype=torch.int32) * 4  # 8 codes per int32, lowest bits first, offset by 8
        codes = ((packed[..., None] >> shifts) & 0xF).reshape(rows, -1)[:, :cols].float() - 8
        scale = tensors[name + "_scale"].float()
        g_idx = tensors.get(name + "_g_idx")
        cols_group = g_idx.long() if g_idx is not None else torch.arange(cols) // (cols // scale.shape[1])
        params[name].data.copy_(codes * scale[:, cols_group])
    for key, value in tensors.items():  # unquantized tensors as the peer saved them
        if key in params:
            params[key].data.copy_(value.float())
    return model.eval(), "hand unpacking of weight_packed / weight_scale"


def grid_check(model: torch.nn.Module, out: Path, group: int) -> int:
    """Number of quantized linears whose loaded weights are ``int4 code x scale`` (raises when one is not)."""
    from safetensors.torch import load_file

    tensors = {}
    for f in sorted(out.glob("*.safetensors")):
        tensors |= load_file(f)
    params, checked = dict(model.named_parameters()), 0
    for key, scale in tensors.items():
        if key.endswith(".weight_scale"):
            w = params[key.removesuffix("_scale")].detach()
            q = w / scale.float().repeat_interleave(group, dim=1)
            if (q - q.round()).abs().max() > 1e-3 or q.min() < -8.001 or q.max() > 7.001:
                raise SystemExit(f"{key}: the loaded peer weights are not on its int4 grid; loading went wrong")
            checked += 1
    return checked


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--windows", type=int, default=40, help="WikiText-2 test windows of 512 tokens (quick protocol)")
    ap.add_argument("--full", action="store_true", help="score every window of WikiText-2 test")
    ap.add_argument("--calib", type=int, default=64, help="calibration windows of 512 tokens from WikiText-2 valid")
    ap.add_argument("--peer-venv", type=Path, default=Path("/work/peervenvs/llmcompressor"),
                    help="venv made by bench/peers/setup_llmcompressor.sh (VENV_ROOT/llmcompressor)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from bench.compress_methods import STEPS
    from compress.stage import CompressConfig, CompressStep, _calibration, compress_student
    from distill.config import shared_data_dir
    from distill.evaluate import load_eval_text, perplexity
    from distill.models import fetch_bundled_teacher, load_tokenizer

    data = shared_data_dir()
    test = data / "wikitext-2" / "wiki.test.tokens" if data else None
    if test is None or not test.is_file() or not (test.parent / "wiki.valid.tokens").is_file():
        sys.exit("../shared/data/wikitext-2 (wiki.valid.tokens, wiki.test.tokens) not found: this benchmark "
                 "needs WikiText-2 (see README)")
    peer_python = args.peer_venv / "bin" / "python"
    if not peer_python.is_file():
        sys.exit(f"{peer_python} not found: create the llm-compressor venv first with\n"
                 f"  bash bench/peers/setup_llmcompressor.sh {args.peer_venv.parent}")

    names = ["rtn4_g64", "gptq4_g64"]
    gptq = CompressStep(**STEPS["gptq4_g64"])
    cfg = CompressConfig(
        steps=[{**STEPS[n], "name": n} for n in names], chain=False, save_dtype="auto",
        eval={"text_path": str(test), "window": 512, "max_windows": None if args.full else args.windows,
              "dtype": "float32"},
        calibration={"n_samples": args.calib, "seq_len": 512, "seed": 0})
    model_dir = fetch_bundled_teacher()
    tokenizer = load_tokenizer(model_dir)
    work = Path(tempfile.mkdtemp(prefix="eakd-bench-llmc-"))
    calib, calib_from = _calibration(cfg.calibration, tokenizer, None, None)  # what compress_student draws
    torch.save(calib, work / "calib_ids.pt")
    t = time.perf_counter()

    compress_student(cfg, model_dir, work / "eakd")
    summary = json.loads((work / "eakd" / "summary.json").read_text())
    base = summary["baseline"]
    rows = {s["name"]: {"perplexity": s["after"]["perplexity"], "nll": s["after"]["nll"],
                        "seconds": s["seconds"] - s["after"]["seconds"], "params": s["params"]}
            for s in summary["steps"]}

    peer_out = work / "llmcompressor"
    cmd = [str(peer_python), str(PEER_SCRIPT), "--model", str(model_dir), "--calib", str(work / "calib_ids.pt"),
           "--out", str(peer_out), "--group-size", str(gptq.group_size), "--dampening", str(gptq.damp)]
    cmd += ["--actorder"] if gptq.act_order else []  # True or "auto": llm-compressor's static act-order
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    peer_wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"llm-compressor run failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    peer = json.loads(proc.stdout.strip().splitlines()[-1])
    model, loaded_by = load_peer_model(peer_out, model_dir)
    n_quant = grid_check(model, peer_out, gptq.group_size)
    ppl = perplexity(model, tokenizer, load_eval_text(test), window=cfg.eval.window,
                     max_windows=cfg.eval.max_windows, dtype=cfg.eval.dtype)
    if ppl["windows"] != base["windows"]:
        sys.exit(f"protocol mismatch: peer scored {ppl['windows']} windows, baseline {base['windows']}")
    rows["llmcompressor_gptq4_g64"] = {"perplexity": ppl["perplexity"], "nll": ppl["nll"], "seconds": peer_wall,
                                       "oneshot_seconds": peer["seconds"], "quantized_linears": n_quant,
                                       "loaded_by": loaded_by}

    rise = {k: r["perplexity"] / base["perplexity"] - 1 for k, r in rows.items()}
    for k in rows:
        rows[k]["increase"] = rise[k]
    eakd_rise, llmc_rise = rise["gptq4_g64"], rise["llmcompressor_gptq4_g64"]
    met = eakd_rise <= 1.05 * llmc_rise
    labels = {"rtn4_g64": "RTN int4 g64 (eakd)", "gptq4_g64": "GPTQ int4 g64 (eakd)",
              "llmcompressor_gptq4_g64": f"GPTQ int4 g64 (llm-compressor {peer['version']})"}
    print(f"\nSmolLM2-135M, WikiText-2 test ({base['windows']} x 512 tokens), calibration {args.calib} x 512 "
          f"from WikiText-2 valid (identical ids for both tools); {os.cpu_count()} CPU threads, fp32 compute\n")
    print("| method | perplexity | vs baseline | wall s |")
    print("|---|---|---|---|")
    print(f"| baseline (bf16 weights) | {base['perplexity']:.2f} | | |")
    for k, r in rows.items():
        print(f"| {labels[k]} | {r['perplexity']:.2f} | {100 * rise[k]:+.2f}% | {r['seconds']:.0f} |")
    claim = "int4 GPTQ: eakd's perplexity increase within 5% of llm-compressor's (eakd <= 1.05 x llmc)"
    numbers = (f"eakd {100 * eakd_rise:+.2f}% vs llm-compressor {100 * llmc_rise:+.2f}% "
               f"(limit {100 * 1.05 * llmc_rise:+.2f}%)")
    print(f"\n- [{'met' if met else 'MISSED'}] {claim}: {numbers}")
    print(f"  llm-compressor: oneshot {peer['seconds']:.0f} s of its {peer_wall:.0f} s subprocess; "
          f"{n_quant} linears loaded by {loaded_by}, all on their int4 grid")

    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"baseline": base, "rows": rows, "target": {"claim": claim, "met": met, "numbers": numbers},
              "llmcompressor_version": peer["version"],
              "peer_settings": {"bits": 4, "symmetric": True, "group_size": gptq.group_size,
                                "actorder": "static" if gptq.act_order else None, "dampening_frac": gptq.damp,
                                "eakd_act_order": gptq.act_order,
                                "ignore": ["lm_head"], "pipeline": "sequential", "dtype": "float32"},
              "calibration": {**cfg.calibration.model_dump(mode="json"), "source": calib_from},
              "eval": summary["eval"], "seconds": time.perf_counter() - t, "cpu_count": os.cpu_count()}
    (RESULTS / "compress_llmcompressor.json").write_text(json.dumps(record, indent=2, default=str))
    print(f"\nwrote {RESULTS / 'compress_llmcompressor.json'} ({time.perf_counter() - t:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
