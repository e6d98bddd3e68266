"""Write the measured tables of docs/benchmarks.md (and the figures quoted beside them in docs/) from bench/results/*.json.

Each table goes between its ``<!-- bench:NAME -->`` / ``<!-- /bench:NAME -->`` markers (the pattern of
bench/docs_abilities.py), so a number in the docs always says what its result file says; a missing JSON leaves its
section saying so. The prose around the markers explains; the numbers inside are rendered. ``--check`` rewrites
nothing and exits 1 when a page is out of date (a test runs it).

Run: ``.venv/bin/python bench/tables.py`` after a benchmark (``make docs`` runs it with bench/docs_abilities.py).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"


# ---- formatting: one rule per kind of number ----------------------------------------------------------------------

def _load(name: str) -> dict | None:
    p = RESULTS / name
    return json.loads(p.read_text()) if p.is_file() else None


def _missing(name: str, how: str) -> str:
    return f"_Not measured yet: `bench/results/{name}` is missing (run `{how}`)._"


def _sig(x: float, digits: int = 4) -> str:
    """4 significant digits, as the tables always printed perplexities (25.60, 505.3, 17,793, 2.5 × 10⁷)."""
    if abs(x) >= 1e6:
        exp = len(str(int(abs(x)))) - 1
        sup = str(exp).translate(str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹"))
        return f"{x / 10 ** exp:.1f} × 10{sup}"
    if abs(x) >= 10 ** digits:
        return f"{x:,.0f}"
    decimals = max(0, digits - 1 - (len(str(int(abs(x)))) - 1 if abs(x) >= 1 else 0))
    return f"{x:.{decimals}f}"


def _rise(x: float) -> str:
    """A relative change: one decimal below 100 %, whole percents above."""
    return f"{100 * x:+.1f} %" if abs(x) < 1 else f"{100 * x:+.0f} %"


def _pct(x: float | None, decimals: int = 1) -> str:
    return "—" if x is None else f"{100 * x:.{decimals}f} %"


def _m(n: int) -> str:
    return f"{n / 1e6:.1f} M"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _s(x: float) -> str:
    return f"{x:.1f} s" if x < 10 else f"{x:.0f} s"


def _targets(targets: list[dict] | None) -> list[str]:
    if not targets:
        return []
    return ["", "Targets (from the JSON):", ""] + [
        f"- {'met' if t.get('met') else ('not judged' if t.get('met') is None else '**not met**')}: {t['claim']} "
        f"({t.get('numbers', t.get('value'))})" for t in targets]


# ---- compression ---------------------------------------------------------------------------------------------------

METHOD_LABELS = {
    "rtn8": "int8 RTN per channel",
    "rtn4_g64": "int4 g64 RTN (128 does not divide 576)",
    "gptq4_g64": "int4 g64 GPTQ (act_order auto)",
    "awq4_g64": "int4 g64 AWQ",
    "magnitude50": "50 % magnitude",
    "wanda50": "50 % Wanda",
    "sparsegpt50": "50 % SparseGPT",
    "wanda_2of4": "2:4 Wanda",
    "sparsegpt_2of4": "2:4 SparseGPT",
    "depth25": "depth −25 % (angular distance)",
    "depth25_recovered": "the same + recovery steps (KD from the source)",
    "width_mlp25": "width: MLP −25 %",
    "svd20": "−20 % decoder weights, plain SVD",
    "asvd20": "the same, ASVD",
    "svdllm20": "the same, SVD-LLM (whitened)",
}
# a row's rise compared with another row's, as "(0.46× RTN's)"
COMPARED_WITH = {"gptq4_g64": ("rtn4_g64", "RTN's"), "awq4_g64": ("rtn4_g64", "RTN's"),
                 "wanda50": ("magnitude50", "magnitude's"), "sparsegpt50": ("magnitude50", "magnitude's"),
                 "asvd20": ("svd20", "SVD's"), "svdllm20": ("svd20", "SVD's")}


def _rise_of(step: dict, base_ppl: float) -> float:
    return step["after"]["perplexity"] / base_ppl - 1


def _step_label(key: str, st: dict) -> str:
    label = METHOD_LABELS.get(key, key)
    stats = st.get("stats", {})
    if key.startswith("depth25") and "importance" in stats:
        n = len(stats["importance"])
        label = label.replace("(angular", f"({round(n * st['params']['fraction'])} of {n} blocks, angular")
    if key == "width_mlp25" and "intermediate_size" in stats:
        a, b = stats["intermediate_size"]
        label += f" ({a} → {b})"
    return label


def compress_methods(d: dict | None) -> str:
    if d is None:
        return _missing("compress_methods.json", ".venv/bin/python bench/compress_methods.py")
    base, steps = d["baseline"], d["steps"]
    bp = base["perplexity"]
    ev, cal = d["eval"], d["calibration"]
    lines = [f"fp32 compute; calibration {cal['n_samples']} × {cal['seq_len']} tokens of WikiText-2 valid; perplexity on "
             f"the first {ev['max_windows']} × {ev['window']}-token windows of WikiText-2 test; decode latency = greedy, "
             f"{ev['latency_prompt_tokens']}-token prompt, {ev['latency_new_tokens']} new tokens, median of "
             f"{ev['latency_repeats']}; {d['cpu_count']} cores; {d['seconds'] / 60:.0f} min in all.", "",
             "| step | parameters (non-zero) | bytes on disk | perplexity | vs baseline | one stream, ms/token | "
             "batch of 8, tokens/s | method wall time |", "|---|---|---|---|---|---|---|---|",
             f"| source | {_m(base['params_total'])} ({_m(base['params_nonzero'])}) | {_mb(base['bytes_on_disk'])} | "
             f"{_sig(bp)} | | {base['latency']['single_ms_per_token']:.1f} | "
             f"{base['latency']['batched_tokens_per_s']:.0f} | |"]
    for key, st in steps.items():
        a = st["after"]
        rise = _rise_of(st, bp)
        note = ""
        if key in COMPARED_WITH and COMPARED_WITH[key][0] in steps:
            other, name = COMPARED_WITH[key]
            note = f" ({rise / _rise_of(steps[other], bp):.2f}× {name})"
        if key == "depth25_recovered" and "depth25" in steps:
            gap = _rise_of(steps["depth25"], bp)
            note = f": {_pct((gap - rise) / gap, 0)} of the gap closed"
        nz = a["params_nonzero"]
        params = f"{_m(a['params_total'])} ({_m(nz)})" if nz != a["params_total"] else _m(a["params_total"])
        lines.append(f"| {_step_label(key, st)} | {params} | {_mb(a['bytes_on_disk'])} | {_sig(a['perplexity'])} | "
                     f"{_rise(rise)}{note} | {a['latency']['single_ms_per_token']:.1f} | "
                     f"{a['latency']['batched_tokens_per_s']:.0f} | "
                     f"{_s(st.get('method_seconds', st['seconds']))} |")
    return "\n".join(lines + _targets(d.get("targets")))


def owl_table(d: dict | None) -> str:
    name = "compress_methods_wanda50_wanda50_owl_wanda70_wanda70_owl.json"
    if d is None:
        return _missing(name, ".venv/bin/python bench/compress_methods.py --only wanda50,wanda50_owl,wanda70,wanda70_owl")
    bp, s = d["baseline"]["perplexity"], d["steps"]
    lines = ["| Wanda | uniform | OWL (per-block sparsity) | OWL's rise vs uniform's | non-zero weights (uniform / OWL) | "
             "method wall time (uniform / OWL) |", "|---|---|---|---|---|---|"]
    for pct in (50, 70):
        u, o = s.get(f"wanda{pct}"), s.get(f"wanda{pct}_owl")
        if not (u and o):
            continue
        ru, ro = _rise_of(u, bp), _rise_of(o, bp)
        blocks = o["stats"].get("block_sparsity", [])
        lines.append(f"| {pct} % | {_sig(u['after']['perplexity'])} ({_rise(ru)}) | **{_sig(o['after']['perplexity'])}** "
                     f"({_rise(ro)}; blocks {_pct(min(blocks), 0)}–{_pct(max(blocks), 0)}) | {ro / ru:.2f}× | "
                     f"{_m(u['after']['params_nonzero'])} / {_m(o['after']['params_nonzero'])} | "
                     f"{_s(u['method_seconds'])} / {_s(o['method_seconds'])} |")
    o70 = s.get("wanda70_owl")
    if o70 and o70["stats"].get("block_sparsity"):
        b = o70["stats"]["block_sparsity"]
        lines += ["", f"At 70 % OWL kept the first and last blocks at {_pct(b[0], 0)} and {_pct(b[-1], 0)} sparsity and pruned "
                      f"the quietest blocks to {_pct(max(b), 0)}."]
    return "\n".join(lines)


def svdllm_allocation(d: dict | None) -> str:
    name = "compress_methods_svdllm20_svdllm20_energy_svdllm20_uniform_svdllm20_per_layer.json"
    if d is None:
        return _missing(name, ".venv/bin/python bench/compress_methods.py --only svdllm20,svdllm20_energy,"
                              "svdllm20_uniform,svdllm20_per_layer")
    bp, s = d["baseline"]["perplexity"], d["steps"]
    how = {"svdllm20": ("`fisher` (`auto`, the default)", "measured sensitivity: Fisher-weighted output loss of each "
                        "dropped component"),
           "svdllm20_energy": ("`energy`", "kept whitened spectral energy, `Σ log E_l`"),
           "svdllm20_per_layer": ("`per_layer`", "every layer keeps 80 % of its weights"),
           "svdllm20_uniform": ("`uniform`", "one rank ratio for every layer")}
    lines = [f"| `rank_allocation` | how ranks are chosen | parameters | perplexity | vs baseline ({_sig(bp)}) | "
             "method wall time |", "|---|---|---|---|---|---|"]
    for key, (label, text) in how.items():
        if key in s:
            st = s[key]
            lines.append(f"| {label} | {text} | {_m(st['after']['params_total'])} | {_sig(st['after']['perplexity'])} | "
                         f"{_rise(_rise_of(st, bp))} | {_s(st['method_seconds'])} |")
    if all(k in s for k in ("svdllm20", "svdllm20_uniform", "svdllm20_per_layer")):
        r = _rise_of(s["svdllm20"], bp)
        lines += ["", f"The measured allocation's rise is {r / _rise_of(s['svdllm20_uniform'], bp):.2f}× the uniform "
                      f"one's and {r / _rise_of(s['svdllm20_per_layer'], bp):.2f}× per_layer's."]
    return "\n".join(lines)


def llmcompressor(d: dict | None) -> str:
    if d is None:
        return _missing("compress_llmcompressor.json", ".venv/bin/python bench/compress_llmcompressor.py")
    r = d["rows"]
    lc = r["llmcompressor_gptq4_g64"]
    return "\n".join([
        "| int4 g64 | perplexity | vs baseline | compression wall time |", "|---|---|---|---|",
        f"| source | {_sig(d['baseline']['perplexity'])} | | |",
        f"| RTN | {_sig(r['rtn4_g64']['perplexity'])} | {_rise(r['rtn4_g64']['increase'])} | "
        f"{_s(r['rtn4_g64']['seconds'])} |",
        f"| eakd GPTQ (act-order chosen per layer) | **{_sig(r['gptq4_g64']['perplexity'])}** | "
        f"**{_rise(r['gptq4_g64']['increase'])}** | {_s(r['gptq4_g64']['seconds'])} |",
        f"| llm-compressor {d['llmcompressor_version']} GPTQ (static act-order) | {_sig(lc['perplexity'])} | "
        f"{_rise(lc['increase'])} | {_s(lc['seconds'])} ({_s(lc['oneshot_seconds'])} in `oneshot`) |",
        "", f"The peer's output: {lc['quantized_linears']} linears on their int4 grid, loaded by {lc['loaded_by']}.",
    ] + _targets([d["target"]]))


def qat_table(d: dict | None) -> str:
    if d is None:
        return _missing("compress_qat.json", ".venv/bin/python bench/compress_qat.py")
    bp, s = d["baseline"]["perplexity"], d["steps"]
    lines = [f"| int4 g64 | perplexity | vs baseline ({_sig(bp)}) | bits per code: Shannon / Huffman / stored fixed-width "
             "→ zstd | weights file | load |", "|---|---|---|---|---|---|"]
    rtn_rise = s["rtn4_g64"]["rise"] if "rtn4_g64" in s else None
    for key, label in (("rtn4_g64", "RTN"), ("gptq4_g64", "GPTQ"), ("qat4_g64", "**QAT**"),
                       ("qaf4_g64", "**QAF**")):
        if key not in s:
            continue
        st, z = s[key], s.get(key + "_zstd", s[key])
        rise = _rise(st["rise"])
        if key in ("qat4_g64", "qaf4_g64") and rtn_rise:
            label += f" ({st['method_seconds']:,.0f} s)"
            rise = f"**{rise}: {_pct((rtn_rise - st['rise']) / rtn_rise, 0)} of RTN's loss recovered**"
        lines.append(f"| {label} | {_sig(st['perplexity'])} | {rise} | {st['shannon_bits']:.2f} / {st['huffman_bits']:.2f} / "
                     f"{st['stored_bits']:.2f} → {z['stored_bits']:.2f} | {_mb(st['weights_bytes'])} → "
                     f"{_mb(z['weights_bytes'])} | {st['load_s']:.2f} → {z['load_s']:.2f} s |")
    extra = []
    qaf = s.get("qaf4_g64", {}).get("qaf")
    if qaf:
        extra = ["", f"QAF: {qaf['steps']} steps, lr {qaf['lr']:g}; LoftQ start: relative weight error "
                     f"{qaf['weight_error_rtn']:.4f} → {qaf['weight_error_start']:.4f} before any training."]
    qat = s.get("qat4_g64", {}).get("qat")
    if qat:
        extra = ["", f"QAT: {qat['steps']} steps, lr {qat['lr']:g}, {qat['tokens']:,} training tokens, "
                     f"{qat['seconds']:.0f} s."] + extra
    return "\n".join(lines + extra + _targets(d.get("targets")))


def tensor_decomp(d: dict | None) -> str:
    if d is None:
        return _missing("compress_tensor_decomp.json", ".venv/bin/python bench/compress_tensor_decomp.py")
    sm = d["summary"]
    n = len({x["layer"] for x in d["layers"]})
    lines = ["| kept parameters | SVD: weight / output error | Tucker | CP | lowest output error |", "|---|---|---|---|---|"]
    for ratio in d["config"]["ratios"].split(","):
        r = {m: sm.get(f"{m}@{ratio}") for m in ("svd", "tucker", "cp")}
        if not all(r.values()):
            continue
        best = min(r, key=lambda m: r[m]["output_error_mean"])
        lines.append(f"| {_pct(float(ratio), 0)} | " + " | ".join(
            f"{r[m]['weight_error_mean']:.3f} / {'**' if m == best else ''}{r[m]['output_error_mean']:.3f}"
            f"{'**' if m == best else ''}" for m in ("svd", "tucker", "cp")) + " | " +
            ", ".join(f"{m.upper()} on {r[m]['wins']} of {n}" for m in ("svd", "tucker", "cp") if r[m]["wins"]) + " |")
    return "\n".join([f"{n} linears of blocks {d['config']['blocks']}; mean over the layers.", ""] + lines)


def whole_model_factorizations(d: dict | None, per_layer: dict | None, allocation: dict | None) -> str:
    if d is None:
        return _missing("compress_methods_svd20_tucker20.json", ".venv/bin/python bench/compress_methods.py --only svd20,tucker20")
    s = d["steps"]
    lines = ["| step | parameters | perplexity | one stream, ms/token |", "|---|---|---|---|"]
    src = d["baseline"]["latency"]["single_ms_per_token"]
    if "tucker20" in s:
        t = s["tucker20"]
        lines.append(f"| Tucker, each layer ≤ 80 % | {_m(t['after']['params_total'])} | {_sig(t['after']['perplexity'])} | "
                     f"{t['after']['latency']['single_ms_per_token']:.1f} (source {src:.1f}) |")
    if per_layer and "svd20_per_layer" in per_layer["steps"]:
        p = per_layer["steps"]["svd20_per_layer"]
        lines.append(f"| plain SVD, each layer 80 % | {_m(p['after']['params_total'])} | {_sig(p['after']['perplexity'])} | "
                     f"{p['after']['latency']['single_ms_per_token']:.1f} (separate run) |")
    if "svd20" in s:
        v = s["svd20"]
        lines.append(f"| plain SVD, ranks by spectral energy | {_m(v['after']['params_total'])} | "
                     f"{_sig(v['after']['perplexity'])} | {v['after']['latency']['single_ms_per_token']:.1f} |")
    if allocation and "svdllm20" in allocation["steps"]:
        a = allocation["steps"]["svdllm20"]
        lines.append(f"| SVD-LLM, ranks by Fisher sensitivity (rank allocation table) | {_m(a['after']['params_total'])} | "
                     f"**{_sig(a['after']['perplexity'])}** | |")
    return "\n".join(lines)


def hints(d: dict | None, d10: dict | None) -> str:
    if d is None:
        return _missing("compress_hints.json", ".venv/bin/python bench/compress_hints.py")
    c = d["config"]
    kd = d["arms"]["kd"]
    rows = [("logit KD alone", d["arms"]["kd"]),
            (f"+ FitNets hints (×{c['hint_weight']:g})", d["arms"].get("kd_hints"))]
    if d10:
        c10 = d10["config"]
        rows.append((f"+ hints (×{c10['hint_weight']:g})", d10["arms"].get("kd_hints")))
    rows.append((f"+ hints (×{c['hint_weight']:g}) + TinyBERT attention maps (×{c['attention_weight']:g})",
                 d["arms"].get("kd_hints_attention")))
    if d10:
        rows.append((f"+ hints (×{c10['hint_weight']:g}) + attention maps (×{c10['attention_weight']:g})",
                     d10["arms"].get("kd_hints_attention")))
    rows.append((f"+ discriminator on the final hidden states (×{c['adversarial_weight']:g})", d["arms"].get("kd_adversarial")))
    lines = [f"{c['steps']} recovery steps per arm; scored on {c['windows']} × 512 tokens of WikiText-2 test (source "
             f"perplexity {_sig(d['baseline']['perplexity'])}).", "",
             "| recovery (weights) | held-out KL | vs logit KD alone | perplexity | recovery time |", "|---|---|---|---|---|"]
    for label, a in rows:
        if a is None:
            continue
        vs = "" if a is kd else f"{(a['kl'] / kd['kl'] - 1) * 100:+.1f} %"
        lines.append(f"| {label} | {a['kl']:.4f} | {vs} | {_sig(a['perplexity'])} | {_s(a['seconds'])} |")
    if d10:
        lines += ["", f"The logit-KD arm's held-out KL in the two runs: {kd['kl']:.4f} and {d10['arms']['kd']['kl']:.4f}."]
    acc = d["arms"].get("kd_adversarial", {}).get("discriminator_accuracy")
    if acc:
        lines += ["", f"Discriminator accuracy: {acc[0]:.2f} over the first fifth of the steps, {acc[-1]:.2f} over the last."]
    return "\n".join(lines)


# ---- distillation --------------------------------------------------------------------------------------------------

def distill_trl(d: dict | None) -> str:
    if d is None:
        return _missing("distill_trl.json", ".venv/bin/python bench/distill_trl.py")
    a, v = d["arms"], d.get("versions", {})
    label = {"eakd_sft": "eakd SFT (loss on the assistant tokens)", "trl_sft": "TRL `SFTTrainer` (completion-only loss)",
             "eakd_kd": "eakd online KD (generalized JSD β 0.5, fp32 teacher beside the student)",
             "trl_gkd": "TRL `GKDTrainer` (λ = 0, β 0.5, `seq_kd` off)"}
    peer = {"eakd_sft": "trl_sft", "eakd_kd": "trl_gkd"}
    lines = [f"TRL {v.get('trl', '?')}, peft {v.get('peft', '?')}, transformers {v.get('transformers', '?')}, torch "
             f"{v.get('torch', '?')}; {d['config']['steps']} steps of {d['config']['batch_size']}; "
             f"{d['seconds'] / 60:.1f} min.", "",
             "| arm | tokens/s | s/step | peak RSS |", "|---|---|---|---|"]
    for key, text in label.items():
        if key not in a:
            continue
        x = a[key]
        tps, rss = f"{x['tokens_per_s']:.1f}", f"{x['peak_rss_mib']:,.0f} MiB"
        if key in peer and peer[key] in a:
            p = a[peer[key]]
            tps = f"**{tps}** ({x['tokens_per_s'] / p['tokens_per_s']:.2f}×)"
            if key == "eakd_kd":
                rss = f"**{rss} ({x['peak_rss_mib'] / p['peak_rss_mib']:.2f}×)**"
        lines.append(f"| {text} | {tps} | {x['seconds'] / x['steps']:.2f} | {rss} |")
    if "eakd_kd" in a and "trl_gkd" in a:  # eakd's generalized JSD is divided by beta(1 - beta): 4x TRL's at beta 0.5
        beta = d["config"]["beta"]
        e, t = (statistics.mean(a[k]["losses"][-max(1, len(a[k]["losses"]) // 5):]) for k in ("eakd_kd", "trl_gkd"))
        lines += ["", f"KD loss over the last fifth of the steps: eakd {e:.2f} × β(1−β) = {e * beta * (1 - beta):.3f}, "
                      f"TRL {t:.3f}."]
    return "\n".join(lines + _targets(d.get("targets")))


def kd_vs_sft(runs: list[tuple[str, dict | None]]) -> str:
    lines = ["| run (file) | steps, KD `alpha_ce` | held-out KL(teacher ‖ student): SFT / top-k KD / full-vocab KD | "
             "top-k vs SFT | top-k vs full | s/step top-k / full |", "|---|---|---|---|---|---|"]
    for name, d in runs:
        if d is None:
            lines.append(f"| `{name}` | missing | | | | |")
            continue
        c, a = d["config"], d["arms"]
        kl = {k: a[k]["held_out"]["kl_full"] for k in ("sft", "topk", "full")}
        lines.append(f"| `{name}` | {c['steps']}, {c['alpha_ce']:g} | {kl['sft']:.3f} / {kl['topk']:.3f} / {kl['full']:.3f} | "
                     f"{(1 - kl['topk'] / kl['sft']) * 100:.1f} % lower | {(kl['topk'] / kl['full'] - 1) * 100:+.1f} % | "
                     f"{a['topk']['seconds_per_step']:.2f} / {a['full']['seconds_per_step']:.2f}: "
                     f"{a['full']['seconds_per_step'] / a['topk']['seconds_per_step']:.2f}× |")
    main = runs[0][1]
    if main:
        a, ho = main["arms"], main["arms"]["sft"]["held_out"]
        lines += ["", f"k = {main['config']['k']}; {ho['rows']} held-out rows, {ho['tokens']:,} answer tokens. Top-1 "
                      f"agreement (main run): " + ", ".join(f"{k} {_pct(a[k]['held_out']['top1_agreement'])}" for k in a) +
                      "; last train loss: " + ", ".join(f"{k} {a[k]['loss_last']:.2f}" for k in a) + "."]
        lines += _targets(main.get("targets"))
    return "\n".join(lines)


def born_again(d: dict | None) -> str:
    if d is None:
        return _missing("distill_born_again.json", ".venv/bin/python bench/distill_born_again.py")
    g = d["generations"]
    lines = [f"{d['validation_rows']} validation rows; {d['config']['steps']} steps × {d['config']['batch_size']}, "
             f"lr {d['config']['lr']:g}, student depth-pruned to {d['config']['keep_layers']} layers + LoRA.", "",
             "| generation | trained by | validation CE | top-1 agreement | KL(original teacher ‖ student) |",
             "|---|---|---|---|---|"]
    for x in g:
        by = "the teacher's answers (SFT)" if x["teacher"] is None else f"generation {x['generation'] - 1}"
        kl = f"{x['kl_full_vs_original_teacher']:.3f}"
        if x["generation"] > 0:
            kl += f" ({(x['kl_full_vs_original_teacher'] / g[0]['kl_full_vs_original_teacher'] - 1) * 100:+.1f} %)"
        lines.append(f"| {x['generation']} | {by} | {x['val_ce']:.3f} | {_pct(x['top1_agreement_vs_original'])} | {kl} |")
    return "\n".join(lines)


def context(d: dict | None) -> str:
    if d is None:
        return _missing("distill_context.json", ".venv/bin/python bench/distill_context.py")
    a, q = d["arms"], d["questions"]
    label = {"teacher_few_shot": "teacher few-shot, demos as chat turns",
             "teacher_few_shot_text": "teacher few-shot, demos as text in one message (`prompts/icl.jinja`)",
             "student_before": "teacher = student, zero-shot, before training",
             "student_after": "**student zero-shot after context distillation**",
             "control_after": "control: trained as long on the teacher's zero-shot answers"}
    lines = [f"{len(d['tasks'])} task families, {q['train']} training and {q['held_out']} held-out questions; "
             f"evaluation in {d['eval_dtype']}; the teacher was right on "
             f"{_pct(d['generate']['context']['teacher_accuracy'], 0)} of the training answers.", "",
             f"| arm ({q['held_out']} held-out questions) | accuracy |", "|---|---|"]
    for key, text in label.items():
        if key in a:
            extra = ""
            if key == "student_after":
                extra = f": {_pct(d['gap_closed'])} of the gap closed**"
            elif key == "control_after":
                extra = f" ({_pct(d['control_gap_closed'], 0)} of the gap)"
            acc = _pct(a[key]["accuracy"])
            lines.append(f"| {text} | {'**' + acc + extra if key == 'student_after' else acc + extra} |")
    return "\n".join(lines + _targets(d.get("targets")))


# ---- teacher and data ----------------------------------------------------------------------------------------------

def throughput(plain: dict | None, run1: dict | None, many: dict | None, overflow: dict | None) -> str:
    lines = ["| workload (file) | raw AsyncOpenAI loop | eakd `openai` | curator | distilabel | eakd cached rerun |",
             "|---|---|---|---|---|---|"]

    def row(label: str, w: dict, ratios: dict | None = None) -> str:
        raw = w["raw"]["wall_s"]
        cells = [f"{raw:.1f} s"]
        e = w.get("eakd")
        cells.append(f"{e['wall_s']:.1f} s ({raw / e['wall_s']:.2f}×)" if e else "not run")
        if e and "eakd_arrival" in w:
            cells[-1] += f"; arrival order {w['eakd_arrival']['wall_s']:.1f} s ({raw / w['eakd_arrival']['wall_s']:.2f}×)"
        for peer in ("curator", "distilabel"):
            p = w.get(peer)
            cells.append(f"{p['wall_s']:.1f} s (eakd {p['wall_s'] / e['wall_s']:.2f}×)" if p and e else "not run")
        c = w.get("eakd_cached")
        cells.append(f"{c['wall_s']:.2f} s ({e['wall_s'] / c['wall_s']:,.0f}× the first run)" if c and e else "")
        return f"| {label} | " + " | ".join(cells) + " |"

    if plain:
        a = plain["args"]
        lines.append(row(f"plain, {a['n']} GSM8K questions (`teacher_throughput.json`)", plain["workloads"]["plain"]))
    if run1:
        lines.append(row("ICL, 512 questions × 4 demo sets of 4 shots (`teacher_throughput_run1_n512.json`, from its log)",
                         run1["workloads"]["icl"]))
    if many:
        a = many["args"]
        lines.append(row(f"ICL, {a['n']} questions × {a['many_demo_sets']} demo sets of {a['many_shots']} shots, before the "
                         "slot-queue fix (`teacher_throughput_icl_many.json`)", many["workloads"]["icl_many"]))
    if overflow:
        a = overflow["args"]
        lines.append(row(f"**ICL overflow: {a['n']} questions × {a['many_demo_sets']} demo sets of {a['many_shots']} shots, "
                         f"server KV cache {a['server_kv_cache_gib']} GiB** (`teacher_throughput_icl_overflow.json`)",
                         overflow["workloads"]["icl_many"]))
        sm = overflow["summary"]["icl_many"]
        lines += ["", f"Overflow run: share of greedy answers identical to the raw loop's: eakd {_pct(sm['eakd']['same_text_as_raw'], 0)}, "
                      f"curator {_pct(sm['curator']['same_text_as_raw'], 0)}, distilabel {_pct(sm['distilabel']['same_text_as_raw'], 0)}; "
                      f"eakd sent {overflow['workloads']['icl_many']['eakd']['prefix_groups']} prefix groups."]
    if not (plain or run1 or many or overflow):
        return _missing("teacher_throughput.json", ".venv/bin/python bench/teacher_throughput.py")
    return "\n".join(lines)


def throughput_inprocess(d: dict | None) -> str:
    if d is None:
        return _missing("teacher_throughput_inprocess.json", "python bench/teacher_throughput.py --skip-server")
    ip, a = d["in_process"], d["args"]
    lines = [f"One engine, {a['kv_cache_gib']} GiB KV cache, {a['n']} prompts per workload.", "",
             "| workload | raw `LLM.chat` | eakd, arrival order | eakd, prefix-scheduled |", "|---|---|---|---|"]
    names = {"plain": "plain", "icl": f"ICL, {a['demo_sets']} demo sets of {a['shots']} shots",
             "icl_many": f"ICL, {a['many_demo_sets']} demo sets of {a['many_shots']} shots (prefixes overflow the KV cache)"}
    for key, label in names.items():
        if key not in ip:
            continue
        w = ip[key]
        raw = w["raw"]["wall_s"]
        arr = f"{w['eakd_arrival']['wall_s']:,.1f} s" if "eakd_arrival" in w else "—"
        lines.append(f"| {label} | {raw:,.1f} s | {arr} | {w['eakd']['wall_s']:,.1f} s ({raw / w['eakd']['wall_s']:.2f}×) |")
    return "\n".join(lines)


def batch_vs_online(d: dict | None) -> str:
    if d is None:
        return _missing("batch_vs_online.json", "python bench/batch_vs_online.py --n 256")
    o, b = d["online"], d["batch"]
    return (f"{d['args']['n']} GSM8K questions, greedy, {d['args']['max_tokens']} tokens: the local batch runner took "
            f"**{b['total_s']:.1f} s including its engine start**, the online path {o['total_s']:.1f} s "
            f"({o['server_start_s']:.1f} s server start + {o['requests_s']:.1f} s of requests): "
            f"**{d['batch_vs_online_total']:.2f}× faster end to end** ({o['requests_s'] / b['total_s']:.2f}× against the online "
            f"requests alone), with **{_pct(d['same_text_share'], 0)} of records identical** in text.")


def self_consistency(gsm: dict | None, demo: dict | None) -> str:
    lines = []
    if gsm:
        s, a = gsm["runs"], gsm["args"]
        sc = s["self_consistency"]["self_consistency"]
        lines.append(f"- GSM8K train, {a['n']} questions, {a['shots']}-shot CoT, {a['samples']} samples at T = "
                     f"{a['temperature']} (`cot_self_consistency.json`): greedy keeps {s['single_sample']['kept_rows']} "
                     f"finished rationales, {s['single_sample']['kept_correct']} correct "
                     f"({s['single_sample']['removed_by_reason'].get('truncated', 0)} truncated); self-consistency + gold keeps "
                     f"{s['self_consistency']['kept_rows']}; sampled accuracy {_pct(sc['all_samples_accuracy'])}, "
                     f"voted {_pct(sc['voted_accuracy'])}.")
    if demo:
        s, sc = demo["runs"], demo["runs"]["self_consistency"]["self_consistency"]
        lines.append(f"- The demo's seed tasks, zero-shot CoT (`cot_self_consistency_demo_seeds.json`): greedy "
                     f"**{_pct(s['single_sample']['kept_correct_share'])}** correct ({s['single_sample']['kept_correct']} of "
                     f"{s['single_sample']['kept_rows_with_gold']} graded rationales); self-consistency + gold keeps "
                     f"**{sc['kept_rows']} rationales, {_pct(sc['kept_correct_share'], 0)} correct**, covering "
                     f"{sc['questions_covered']} questions against greedy's {s['single_sample']['correct_questions']}; the vote "
                     f"alone keeps {sc['voted_rows']} rationales, {_pct(sc['voted_rows_correct_share'])} correct (samples right "
                     f"{_pct(sc['all_samples_accuracy'], 0)} of the time, the voted answer {_pct(sc['voted_accuracy'], 0)}).")
    return "\n".join(lines) or _missing("cot_self_consistency.json", "python bench/cot_self_consistency.py")


def self_instruct(d: dict | None, scaling: dict | None) -> str:
    lines = []
    if d:
        b, ag = d["bootstrap"], d["bootstrap"]["novelty_agreement"]
        rb = b["removed_by"]
        lines.append(f"- `self_instruct_bootstrap.json`: **{d['rows_kept']} rows** ({d['rows_kept_bootstrapped']} bootstrapped "
                     f"instructions + {d['rows_kept'] - d['rows_kept_bootstrapped']} seed tasks; {d['rows_removed']} removed rows "
                     f"kept with their reasons, {d['removed_by_reason'].get('truncated', 0)} of them truncated answers). "
                     f"{b['rounds']} rounds gave {b['candidates']:,} candidates; the heuristics removed "
                     f"{rb['exact_repeat']} exact repeats, {rb['format']} on format and {rb['length']} on length. ROUGE-L and "
                     f"MinHash-LSH on the same candidates: {ag['both']} dropped by both, {ag['only_rougel']} by ROUGE-L only, "
                     f"{ag['only_minhash']} by MinHash only (Jaccard {ag['jaccard']:.2f}; MinHash recall "
                     f"{_pct(ag['minhash_recall'])} of ROUGE-L's drops, precision {_pct(ag['minhash_precision'], 0)}).")
    if scaling:
        r = scaling["rows"]
        lines.append(f"- `novelty_scaling.json`: from {r[0]['n']:,} to {r[-1]['n']:,} candidates ROUGE-L's time grows with "
                     f"slope **{scaling['slopes']['rouge_l']:.2f}** on a log-log fit ({r[0]['rouge_s']:.2f} s → "
                     f"{r[-1]['rouge_s']:.1f} s), MinHash-LSH's with slope **{scaling['slopes']['minhash_lsh']:.2f}** "
                     f"({r[0]['minhash_s']:.2f} s → {r[-1]['minhash_s']:.2f} s); at {r[-1]['n']:,} MinHash is "
                     f"{r[-1]['speedup']:.0f}× faster.")
    return "\n".join(lines) or _missing("self_instruct_bootstrap.json", "python bench/self_instruct_bootstrap.py")


def structured_cot(d: dict | None) -> str:
    if d is None:
        return _missing("structured_cot.json", "python bench/structured_cot.py --questions 64")
    v = d["variants"]
    names = {"the_answer_is": '"The answer is"', "answer_colon": '"Answer:"', "last_number": "last number",
             "json": "JSON field"}
    lines = ["| variant | answer found | usable rows (not truncated, parsed) | truncated | how the answer was found | "
             "gold match |", "|---|---|---|---|---|---|"]
    for key, label in (("free_text", "free text, answer extractor (`cot.jinja`)"),
                       ("structured", "JSON `{rationale, answer}`, structured decoding (`cot_json.jinja`)")):
        x = v[key]
        how = ", ".join(f"{names.get(k, k)} {n}" for k, n in x["extraction"].items())
        lines.append(f"| {label} | {x['answer_found']} / {x['rows']} | {x['usable_rows']} ({_pct(x['usable_share'], 0)}) | "
                     f"{x['removed_by_reason'].get('truncated', 0)} | {how} | "
                     f"{x['gold_match']} |")
    j = v["structured"].get("judge")
    if j:
        sc = ", ".join(f"{n} × {s}" for s, n in j["score_counts"].items() if n)
        lines += ["", f"Judge on the {j['rows']} structured rows: {j['judged']} scored ({j['invalid']} verdicts invalid, kept "
                      f"and marked), scores {sc} (of 5), mean {j['mean_score']:.2f}."]
    return "\n".join(lines)


def structured_selfinstruct(d: dict | None) -> str:
    if d is None:
        return _missing("structured_selfinstruct.json", "python bench/structured_selfinstruct.py --prompts 64")
    v = d["variants"]
    lines = ["| variant | answers parsed into ≥ 1 instruction | candidates | kept after heuristics + novelty | schema re-asks |",
             "|---|---|---|---|---|"]
    for key, label in (("free_text", "numbered list, parsed from free text"),
                       ("structured", "JSON `{\"instructions\": [...]}`, structured decoding + validation")):
        x = v[key]
        lines.append(f"| {label} | {x['answers_parsed']} / {x['answers']} ({_pct(x['parseable_share'])}) | {x['candidates']} | "
                     f"{x['kept_after_filters']} | {x['schema_retries'] if key == 'structured' else '–'} |")
    return "\n".join(lines)


def dtype_cpu(d: dict | None) -> str:
    if d is None:
        return _missing("dtype_cpu.json", ".venv/bin/python bench/dtype_cpu.py --vllm")
    r, q = d["results"], d["bf16_over_fp32"]
    return "\n".join([
        f"Machine: {d['machine']}, {d['cpus']} CPUs, native bf16: {'yes' if d['native_bf16'] else 'no'}.", "",
        "| metric | fp32 | bf16 | bf16 / fp32 |", "|---|---|---|---|",
        f"| 1024³ torch matmul, GFLOP/s | {r['float32']['matmul_gflops']:.1f} | {r['bfloat16']['matmul_gflops']:.1f} | "
        f"{q['matmul_gflops']:.3f} |",
        f"| vLLM offline generation, bundled teacher, 64 prompts × 64 tokens, out tok/s | "
        f"{r['float32']['vllm_out_tok_s']:.1f} | {r['bfloat16']['vllm_out_tok_s']:.1f} | {q['vllm_out_tok_s']:.2f} |"])


# ---- flows, viewer, reliability ------------------------------------------------------------------------------------

def prefect_overhead(d: dict | None) -> str:
    if d is None:
        return _missing("prefect_overhead.json", "python bench/prefect_overhead.py --pairs 2 --shards 4")
    runs = "; ".join(f"{r['direct_s']:.1f} vs {r['flow_s']:.1f} s" for r in d["runs"])
    return (f"Direct vs as the flow with {d['args']['shards']} shard tasks, alternating: {runs} — **median overhead "
            f"{d['median_overhead']:+.1%}** (target {d['target']}: {'met' if d['meets_target'] else 'not met'}). Prefect's "
            f"temporary API start-up ({d['prefect_api_start_s']:.0f} s, not counted) is paid once per process without a server.")


def viewer_scale(d: dict | None) -> str:
    if d is None:
        return _missing("viewer_scale.json", "python bench/viewer_scale.py")
    sc, rss = d["scenarios"], d["rss_mb"]
    kb = [s["bytes_per_response"] / 1000 for k, s in sc.items() if k not in ("meta", "search_new_term")]
    return (f"{d['args']['rows']:,} rows: index built in {d['index_build_s']:.2f} s, +{rss['anon_growth_on_open']:.0f} MB of "
            f"the viewer's own memory, `/api/rows` p50 {sc['first_page']['p50_ms']:.0f} ms for the first page, "
            f"{sc['deep_page']['p50_ms']:.0f} ms for a deep page, {sc['search_new_term']['p50_ms']:.0f} ms for a new search "
            f"term (p95 {sc['search_new_term']['p95_ms']:.0f} ms), {sc['removed_by_reason']['p50_ms']:.0f} ms for a removal "
            f"reason; {min(kb):.0f}–{max(kb):.0f} KB per page.")


def reliability(d: dict | None) -> str:
    if d is None:
        return _missing("reliability.json", "make reliability")
    label = {"faults_injected": "faults injected (429 ± `Retry-After`, 500/502/503, hangs, resets, malformed JSON, empty "
                                "choices, truncation, server death)",
             "crashes_survived": "crashes survived (`kill -9`, then resume: generate ×5, train, compress, the vLLM server)",
             "bad_inputs_tried": "bad inputs tried (one-line error, non-zero exit, earlier output intact)",
             "secret_files_scanned": "produced files scanned for a planted API key",
             "records_checked": "records checked after faults and crashes",
             "records_lost": "**records lost**", "records_duplicated": "**records duplicated**"}
    lines = ["| what | count |", "|---|---|"]
    for k, v in d.items():
        n = f"**{v}**" if k in ("records_lost", "records_duplicated") else str(v)
        lines.append(f"| {label.get(k, k)} | {n} |")
    return "\n".join(lines)


def gguf_roundtrip(d: dict | None) -> str:
    if d is None:
        return _missing("gguf_roundtrip.json", "bench/gguf_roundtrip.py (needs llama-cpp-python)")
    p, t = d["protocol"], d["torch"]
    cpu = d.get("cpu", {})
    lines = [f"WikiText-2 test perplexity, {p['windows']} x {p['window']} tokens ({p['tokens']:,}), the same ids to both "
             f"engines; llama-cpp-python {d.get('llama_cpp_python', '?')}, {d.get('threads', '?')} threads, "
             f"{cpu.get('model', '?')} ({'AVX-512 BF16' if cpu.get('flags', {}).get('avx512_bf16') else 'AVX2 only'}).", "",
             "| engine | type | file | perplexity | vs torch |", "|---|---|---|---|---|",
             f"| eakd (torch) | {t['dtype']} compute | {_mb(d['source_safetensors_bytes'])} | {t['perplexity']:.3f} | |"]
    for r in d["llama_cpp"]:
        lines.append(f"| llama.cpp | {r['type']} | {_mb(r['bytes'])} | {r['perplexity']:.3f} | {r['vs_torch'] * 100:+.2f} % |")
    return "\n".join(lines)


def transplant(d: dict | None) -> str:
    if d is None:
        return _missing("transplant.json", "bench/transplant.py")
    m, cpu = d["mapping"], d.get("cpu", {})
    lines = [f"{d['slices']} x {d['slice_bytes']}-byte slices of WikiText-2 test, fp32, {d.get('torch_threads', '?')} threads; "
             f"{cpu.get('model', '?')} ({'AVX-512 BF16' if cpu.get('avx512_bf16') else 'no AVX-512 BF16'}); "
             f"`--vocab {d['vocab_requested']}` gave {m['new_vocab']:,} tokens.", "",
             "| | vocab | params | bytes/token | bits/byte |", "|---|---|---|---|---|"]
    for name, label in (("original", "original"), ("transplanted", "transplanted (before any KD)")):
        a = d["arms"][name]
        lines.append(f"| {label} | {a['vocab']:,} | {_m(a['params'])} | {a['bytes_per_token']:.2f} | {a['bits_per_byte']:.3f} |")
    lines += ["", f"Mapping: {m['exact']:,} exact, {m['special']} special, {m['averaged']:,} averaged "
                  f"({m['mean_pieces_averaged']:.2f} old pieces each), {m['fallback']} fallback. Training the tokenizer took "
                  f"{d['train_tokenizer_s']} s, the transplant {d['transplant_s']} s. Bits per byte: "
                  f"{d['bpb_ratio_transplanted_vs_original']:.2f}x the original's."]
    return "\n".join(lines)


def model_scaling(d: dict | None) -> str:
    if d is None:
        return _missing("model_scaling.json", "bench/model_scaling.py")
    st = d["settings"]
    big = max(r["params"] for r in d["rows"])
    verdicts = []
    for method in ("wanda50", "gptq4_g64"):
        got = [r for r in d["rows"] if r["params"] == big and r["method"] == method and r.get("streamed") and "vmhwm_bytes" in r]
        ratio = max((r["vmhwm_bytes"] / r["fp32_bytes"] for r in got), default=None)
        verdicts.append(f"{method} not measured at that size" if ratio is None else
                        f"{method} {'**met**' if ratio <= 0.35 else '**not met**'} ({ratio:.2f}×)")
    lines = [f"Calibration {st['calibration']}; perplexity {st['eval']}; weights {st['weights']}. Peak RSS is each "
             "child process's `VmHWM` (imports included). Target: " + d["target"] + " — " + "; ".join(verdicts) + ".", "",
             "| shape | parameters | method | path | peak RSS | × fp32 weights | wall | machine |",
             "|---|---|---|---|---|---|---|---|"]
    order = {"135m": 0, "0.5b": 1, "1.5b": 2}
    for r in sorted(d["rows"], key=lambda r: (order.get(r["shape"], 9), r["method"], not r.get("streamed"))):
        path = "streamed" if r.get("streamed") else "whole model"
        if "vmhwm_bytes" not in r:
            lines.append(f"| {r['shape']} | {_m(r['params'])} | {r['method']} | {path} | — | — | — | "
                         f"{r.get('skipped') or r.get('error', '?')} |")
            continue
        same = {True: ", same bytes as streamed", False: ", bytes differ from streamed"}.get(r.get("same_bytes_as_streamed"), "")
        lines.append(f"| {r['shape']} | {_m(r['params'])} | {r['method']} | {path}{same} | "
                     f"{r['vmhwm_bytes'] / 2 ** 30:.2f} GiB | {r['vmhwm_bytes'] / r['fp32_bytes']:.2f}× | "
                     f"{_s(r['wall_s'])} | {r.get('cpu', '?')} |")
    return "\n".join(lines)


def train_mfu(d: dict | None) -> str:
    if d is None:
        return _missing("train_mfu.json", "bench/train_mfu.py")
    st, peak, m = d["settings"], d["gemm_peak_gflops"], d["machine"]
    spread = {k: (peak["before"][k]["gflops"], peak["after"][k]["gflops"]) for k in peak["used"]}
    lines = [f"{st['student']}, {st['steps']} steps of {st['batch_size']} × {st['max_length']} tokens "
             f"({st['data']}); {m['cpu']}{' with AVX-512 BF16' if m['avx512_bf16'] else ''}, {m['cores']} cores, "
             f"{m['torch_threads']} torch threads. FLOPs per token: {st['flops']}. GEMM peak measured in the same "
             "run, before and after the arms: " + "; ".join(f"{k} {a:.0f} / {b:.0f} GFLOP/s" for k, (a, b) in spread.items())
             + f". Target: {d['target']} — **{'met' if d['target_met'] else 'not met'}**.", "",
             "| arm | tokens/s | GFLOP/s achieved | MFU (of the same dtype's GEMM peak) |", "|---|---|---|---|"]
    for name, r in d["arms"].items():
        if "mfu" not in r:
            lines.append(f"| {name} | — | — | {r.get('skipped', '?')} |")
            continue
        lines.append(f"| {name} | {r['tokens_per_s']:.1f} | {r['achieved_gflops']:.1f} | {100 * r['mfu']:.1f} % |")
    return "\n".join(lines)


def data_scaling(d: dict | None) -> str:
    if d is None:
        return _missing("data_scaling.json", "python bench/data_scaling.py")
    m, st, c = d["machine"], d["settings"], d["cache_lookup"]
    lines = [f"The generate stage through the `openai` backend against `bench/loopback_stub.py` (answers at once), "
             f"{', '.join(st['styles'])} prompts ({st['num_demos']} demos), max_concurrency {st['concurrency']}, a response "
             f"cache pre-filled with {st['cache_prefill_entries']:,} entries; {m['cpu']}"
             f"{' with AVX-512 BF16' if m['avx512_bf16'] else ''}, {m['cores']} cores. Each size in a fresh process.", "",
             "| requests | stage wall | per request (stage / teacher phase) | peak RSS (VmHWM) | rows train / validation / removed | on disk |",
             "|---|---|---|---|---|---|"]
    for n, r in d["runs"].items():
        rows = r["rows"]
        lines.append(f"| {int(n):,} | {_s(r['wall_s'])} | {r['overhead_ms_per_request']:.2f} / {r['teacher_ms_per_request']:.2f} ms "
                     f"| {r['peak_rss_mib']:.0f} MiB | {rows['train']:,} / {rows['validation']:,} / {rows['removed']:,} "
                     f"| {r['disk_mib']:.0f} MiB |")
    sizes = list(d["runs"])
    ratio = d["peak_rss_ratio_largest_to_smallest"]
    v = d["viewer"]
    lines += ["", f"Peak RSS at {int(sizes[-1]):,} / at {int(sizes[0]):,} requests: **{ratio:.2f}×** (target ≤ 2×: "
              f"**{'met' if ratio <= 2 else 'not met'}**). Response cache at {c['entries']:,} entries ({c['file_mib']:.0f} MiB): "
              f"a lookup of one stored key p50 {c['hit']['single_p50_us']:.0f} µs (p95 {c['hit']['single_p95_us']:.0f} µs), "
              f"{c['hit']['batched_us_per_key']:.0f} µs a key in batches of 500; a missing key {c['miss']['single_p50_us']:.0f} µs. "
              f"`eakd view` on the {int(sizes[-1]):,}-request dataset: indexed in {v['index_build_s']:.2f} s, first page "
              f"{v['first_page']['first_ms']:.0f} ms (p50 {v['first_page']['p50_ms']:.0f} ms), "
              f"{v['open_to_first_page_s']:.2f} s from open to the first page."]
    return "\n".join(lines)


# ---- pages ---------------------------------------------------------------------------------------------------------

def _blocks() -> dict[str, dict[str, Callable[[], str]]]:
    L = _load
    cm_svdllm = "compress_methods_svdllm20_svdllm20_energy_svdllm20_uniform_svdllm20_per_layer.json"
    return {
        "benchmarks.md": {
            "compress_methods": lambda: compress_methods(L("compress_methods.json")),
            "owl": lambda: owl_table(L("compress_methods_wanda50_wanda50_owl_wanda70_wanda70_owl.json")),
            "svdllm_allocation": lambda: svdllm_allocation(L(cm_svdllm)),
            "llmcompressor": lambda: llmcompressor(L("compress_llmcompressor.json")),
            "qat": lambda: qat_table(L("compress_qat.json")),
            "qaf": lambda: qat_table(L("compress_qat_rtn4_g64_qaf4_g64.json")),
            "tensor_decomp": lambda: tensor_decomp(L("compress_tensor_decomp.json")),
            "whole_model_factorizations": lambda: whole_model_factorizations(
                L("compress_methods_svd20_tucker20.json"), L("compress_methods_svd20_per_layer.json"), L(cm_svdllm)),
            "hints": lambda: hints(L("compress_hints.json"), L("compress_hints_hint10_attn005.json")),
            "distill_trl": lambda: distill_trl(L("distill_trl.json")),
            "kd_vs_sft": lambda: kd_vs_sft([(n, L(n)) for n in (
                "distill_kd_vs_sft.json", "distill_kd_vs_sft_alpha05.json", "distill_kd_vs_sft_steps60.json",
                "distill_kd_vs_sft_alpha0.json")]),
            "born_again": lambda: born_again(L("distill_born_again.json")),
            "context": lambda: context(L("distill_context.json")),
            "throughput": lambda: throughput(L("teacher_throughput.json"), L("teacher_throughput_run1_n512.json"),
                                             L("teacher_throughput_icl_many.json"), L("teacher_throughput_icl_overflow.json")),
            "throughput_inprocess": lambda: throughput_inprocess(L("teacher_throughput_inprocess.json")),
            "self_consistency": lambda: self_consistency(L("cot_self_consistency.json"),
                                                         L("cot_self_consistency_demo_seeds.json")),
            "self_instruct": lambda: self_instruct(L("self_instruct_bootstrap.json"), L("novelty_scaling.json")),
            "structured_cot": lambda: structured_cot(L("structured_cot.json")),
            "structured_selfinstruct": lambda: structured_selfinstruct(L("structured_selfinstruct.json")),
            "dtype_cpu": lambda: dtype_cpu(L("dtype_cpu.json")),
            "batch_vs_online": lambda: batch_vs_online(L("batch_vs_online.json")),
            "prefect_overhead": lambda: prefect_overhead(L("prefect_overhead.json")),
            "viewer_scale": lambda: viewer_scale(L("viewer_scale.json")),
            "reliability": lambda: reliability(L("reliability.json")),
        },
        "teacher.md": {"batch_vs_online": lambda: batch_vs_online(L("batch_vs_online.json"))},
        "reliability.md": {"reliability": lambda: reliability(L("reliability.json"))},
        "deployment.md": {"prefect_overhead": lambda: prefect_overhead(L("prefect_overhead.json"))},
        "report.md": {"viewer_scale": lambda: viewer_scale(L("viewer_scale.json"))},
        "compression.md": {"gguf_roundtrip": lambda: gguf_roundtrip(L("gguf_roundtrip.json"))},
        "transplant.md": {"transplant": lambda: transplant(L("transplant.json"))},
        "scaling.md": {"model_scaling": lambda: model_scaling(L("model_scaling.json")),
                       "train_mfu": lambda: train_mfu(L("train_mfu.json")),
                       "data_scaling": lambda: data_scaling(L("data_scaling.json"))},
    }


def render(text: str, blocks: dict[str, Callable[[], str]], doc: Path) -> str:
    """``text`` with every ``<!-- bench:NAME -->`` block of ``blocks`` rewritten; a block without markers is an error."""
    for name, body in blocks.items():
        pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
        if not pattern.search(text):
            sys.exit(f"{doc}: no <!-- bench:{name} --> ... <!-- /bench:{name} --> markers")
        block = f"<!-- bench:{name} -->\n{body()}\n<!-- /bench:{name} -->"
        text = pattern.sub(lambda _m, b=block: b, text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 when a page differs from its JSON")
    args = ap.parse_args(argv)
    stale = []
    for page, blocks in _blocks().items():
        doc = DOCS / page
        old = doc.read_text()
        new = render(old, blocks, doc)
        if new != old:
            stale.append(doc)
            if not args.check:
                doc.write_text(new)
                print(f"wrote {doc.relative_to(ROOT)}")
    if args.check and stale:
        print("out of date (run `make docs`): " + ", ".join(str(d.relative_to(ROOT)) for d in stale), file=sys.stderr)
        return 1
    if not stale:
        print("docs up to date with bench/results/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
