"""Write the measured tables of docs/abilities.md from bench/results/ (ea_transfer_measure.json, ea_transfer.json,
ea_transfer_synth.json, ea_transfer_replay.json, ea_transfer_kd_sweep.json, ea_transfer_if.json, ea_cot.json, ea_compress.json, ea_compress_recover.json, ea_compress_qat.json): each table goes between its ``<!-- bench:NAME -->`` / ``<!-- /bench:NAME -->`` markers, so the page
always says what the JSON says. A missing JSON leaves its section saying so.

Run: ``.venv/bin/python bench/docs_abilities.py`` after the benchmarks.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ea_transfer import START_REF  # noqa: E402  (light: the bench's heavy imports are inside its functions)

RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "abilities.md"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def _load(name: str) -> dict | None:
    p = RESULTS / name
    return json.loads(p.read_text()) if p.is_file() else None


def claim(target: dict) -> str:
    """A target's claim as the bench states it now: results written before the wording was mended said "of the
    base" where the check (distill/probes/score.py ability_table) compares with where training started."""
    return target["claim"].replace("within 5 points of the base)", f"within 5 points of {START_REF})")


def measure_table(d: dict | None) -> str:
    if d is None:
        return "_Not measured yet: run `bench/ea_transfer.py --measure`._"
    seeds = list(d["seeds"].values())
    icl = seeds[0]["icl"]["zero_shot"]["per_task"]
    lines = [f"Teacher (bundled SmolLM2-135M-Instruct, vLLM, greedy), {len(seeds)} seeds × "
             f"{seeds[0]['icl']['zero_shot']['per_task'][next(iter(icl))]['n']} held-out items per family; {d['cpu']}.", "",
             "| ICL family | 0-shot | 4-shot (chat demos) | probe? |", "|---|---|---|---|"]
    for name in icl:
        z = statistics.mean(s["icl"]["zero_shot"]["per_task"][name]["strict"] for s in seeds)
        k = statistics.mean(s["icl"]["k_shot"]["per_task"][name]["strict"] for s in seeds)
        lines.append(f"| {name} | {_pct(z)} | {_pct(k)} | {'yes' if k >= 0.4 and k - z >= 0.15 else 'no'} |")
    lines += ["", "| CoT family | direct 0-shot | CoT 0-shot | direct 4-shot | CoT 4-shot (worked examples) |", "|---|---|---|---|---|"]
    for name in seeds[0]["cot"]["direct"]["per_task"]:
        vals = [statistics.mean(s["cot"][m]["per_task"][name]["strict"] for s in seeds)
                for m in ("direct", "cot", "direct_k_shot", "cot_k_shot")]
        lines.append(f"| {name} | " + " | ".join(_pct(v) for v in vals) + " |")
    return "\n".join(lines)


def _machines(d: dict) -> str:
    """Which CPU measured which seed (``--append`` adds seeds measured on another machine)."""
    if isinstance(d["cpu"], str):
        return f"{d['cpu']}; {d['seconds'] / 60:.0f} min"
    return "; ".join(f"seed {s['seed']}: {s.get('cpu', '?')}, {s['seconds'] / 60:.0f} min" for s in d["seeds"])


def transfer_table(d: dict | None) -> str:
    if d is None:
        return "_Not measured yet: run `bench/ea_transfer.py`._"
    c = d["config"]
    lines = [f"`bench/ea_transfer.py --seeds {c['seeds']}` ({len(d['seeds'])} seed{'s' if len(d['seeds']) > 1 else ''} done; families {', '.join(d['families'])}; "
             f"{c['examples']} examples and {c['inputs']} inputs per task; {c['steps']} steps of batch 8; "
             f"{c['per_task']} held-out probe items per family; {_machines(d)}).", "",
             "| arm | student | inputs | ICL gap closed (mean ± sd) | student 0-shot | of teacher 4-shot | controls: base → start → student |",
             "|---|---|---|---|---|---|---|"]
    for arm, s in d["summary"].items():
        a = d["arms"][arm]
        g = s["icl_gap_closed"]
        sd = f" ± {100 * g['stdev']:.1f}" if g.get("stdev") is not None else ""
        who = "teacher + LoRA" if a["keep_layers"] is None else f"{a['keep_layers']} of 30 layers + LoRA"
        kd = a["logit_kd"]
        who += (", SFT" if not kd else ", top-5 logit KD" if kd is True or kd == {"alpha_ce": 0.5}
                else ", top-5 logit KD (" + ", ".join(f"{k} {v}" for k, v in kd.items()) + ")")
        ctl_start = s["control_base"]["mean"] if a["keep_layers"] is None else s.get("control_start", {}).get("mean")
        lines.append(f"| {arm} | {who} | {a['inputs']} | {_pct(g['mean'])}{sd} | {_pct(s['icl_student_zero_shot']['mean'])} | "
                     f"{_pct(s['share_of_teacher_k_shot']['mean'])} | {_pct(s['control_base']['mean'])} → "
                     f"{_pct(ctl_start)} → {_pct(s['control_student']['mean'])} |")
    lines += ["", "Targets:", ""] + [f"- {'met' if t['met'] else '**not met**'}: {claim(t)} ({t['value']})" for t in d["targets"]]
    return "\n".join(lines)


def if_table(d: dict | None) -> str:
    """The transfer table, then each arm's IF pass rates (prompt level, loose / strict) beside the teacher's, the
    base's and the pruned start's, and how many verifiable training answers survived their checks."""
    if d is None:
        return "_Not measured yet: run `bench/ea_transfer.py --arms pruned24_kd,pruned24_kd_if --if-items 24`._"
    seeds = d["seeds"]

    def pair(scores: list[dict]) -> str:
        ifs = [x["if"] for x in scores if "if" in x]
        if not ifs:
            return "—"
        loose, strict = (statistics.mean(x[k] for x in ifs) for k in ("prompt_loose", "prompt_strict"))
        sd = f" ± {100 * statistics.stdev(x['prompt_loose'] for x in ifs):.1f}" if len(ifs) > 1 else ""
        return f"{_pct(loose)}{sd} / {_pct(strict)}"

    def kept(arm: str) -> str:
        src = d["arms"][arm]["inputs"]
        rep = [r["generate"][src].get("replay") for r in seeds]
        return "—" if not any(rep) else ", ".join(f"{r['kept']} of {r['checked']}" for r in rep if r)

    c = d["config"]
    lines = [transfer_table(d), "", f"Instruction following on {seeds[0]['if_probe_items']} held-out verifiable prompts per "
             f"seed (prompt level, loose / strict; ± is the spread of loose over seeds); `--if-prompts {c['if_prompts']}`. "
             f"Teacher {pair([r['teacher'] for r in seeds])}, base {pair([r['base'] for r in seeds])}, 24-layer start "
             f"{pair([r['starts']['24'] for r in seeds if '24' in r['starts']])}; held-out prompts whose writing task also "
             f"appears in training: {', '.join(str(r['if_probe_bases_in_training']) for r in seeds)} (per seed).", "",
             "| arm | verifiable training answers kept (of those checked, per seed) | student IF loose / strict |", "|---|---|---|"]
    for arm in d["summary"]:
        lines.append(f"| {arm} | {kept(arm)} | {pair([r['arms'][arm]['probes'] for r in seeds])} |")
    return "\n".join(lines)


def cot_table(d: dict | None) -> str:
    if d is None:
        return "_Not measured yet: run `bench/ea_cot.py`._"
    s, c = d["summary"], d["config"]
    cpu = d["cpu"] if isinstance(d["cpu"], str) else ", ".join(d["cpu"])
    lines = [f"`bench/ea_cot.py --seeds {c['seeds']}` (family {c['family']}, {c['examples']} worked examples, {c['inputs']} "
             f"questions, {c['samples']} self-consistency samples, {c['steps']} steps; {cpu}).", "",
             f"Teacher: direct {_pct(s['teacher']['direct'])} / CoT {_pct(s['teacher']['cot'])} 0-shot; direct "
             f"{_pct(s['teacher']['direct_k_shot'])} / CoT {_pct(s['teacher']['cot_k_shot'])} 4-shot. Base: direct "
             f"{_pct(s['base']['direct'])} / CoT {_pct(s['base']['cot'])} 0-shot.", "",
             "| training data | seeds | correct rationales kept | student direct 0-shot | student CoT 0-shot (± sd) | "
             "student CoT gain |", "|---|---|---|---|---|---|"]
    shares = s["correct_rationales"]
    for arm, label, share in (("greedy", "greedy, unfiltered", shares.get("greedy")),
                              ("sc", "self-consistency (voted)", shares.get("sc")),
                              ("gold", "gold-filtered", shares.get("gold")),
                              ("gold_mt", "gold, rationale multi-task (asked `[answer]` / `[explain]`)", shares.get("gold")),
                              ("gold_answer", "gold answers alone, no rationale (asked `[answer]`)", None)):
        st = s["students"].get(arm, {})
        if arm not in ("greedy", "sc", "gold") and not st.get("seeds"):
            continue
        gain, sd = st.get("gain"), st.get("cot_sd")
        lines.append(f"| {label} | {st.get('seeds', len(d['seeds']))} | {_pct(share)} | {_pct(st.get('direct'))} | "
                     f"{_pct(st.get('cot'))}{'' if sd is None else f' ± {100 * sd:.1f}'} | "
                     f"{'—' if gain is None else f'{100 * gain:+.1f} pts'} |")
    return "\n".join(lines)


def compress_table(d: dict | None) -> str:
    if d is None:
        return "_Not measured yet: run `make demo`, then `bench/ea_compress.py`._"
    c = d["config"]
    defaults = {"steps": "gptq64,wanda50,sparsegpt50", "recover": "0", "recover_lr": "0.0001", "qat_steps": "32",
                "qat_lr": "0.0001", "out": "ea_compress.json"}
    flags = "".join(f" --{k.replace('_', '-')} {c[k]}" for k, default in defaults.items()
                    if c.get(k) not in (None, default)
                    and (not k.startswith("qat_") or "qat" in c.get("steps", "")))
    lines = [f"`bench/ea_compress.py --data {c['data']} --seeds {c['seeds']}{flags}` "
             f"on `{Path(d['run']).name}`'s student ({c['calib']} calibration windows of 512 tokens, {c['per_task']} fresh "
             f"probe items per family and seed; {d['cpu']}; {d['seconds'] / 60:.0f} min).", "",
             "| calibration | step | ICL kept (mean ± sd over seeds) | student ICL 0-shot → step | perplexity student → step |",
             "|---|---|---|---|---|"]
    for data, steps in d["summary"].items():
        runs = [r for r in d["results"] if r["data"] == data]
        for step, ab in steps.items():
            k = ab.get("ICL")
            cell = "—" if k is None else f"{100 * k['mean']:.0f} %" + (f" ± {100 * k['stdev']:.0f}" if k["stdev"] is not None else "")
            ran = [r for r in runs if step in r["steps"]]  # a step may be missing from a seed (see the file's note)
            before = statistics.mean(r["student"]["ICL"] for r in ran)
            after = statistics.mean(r["steps"][step]["scores"]["ICL"] for r in ran)
            ppl = (statistics.mean(r["student_perplexity"] for r in ran), statistics.mean(r["steps"][step]["perplexity"] for r in ran))
            lines.append(f"| {data} | {step} | {cell} | {_pct(before)} → {_pct(after)} | {ppl[0]:.1f} → {ppl[1]:.1f} |")
    if d.get("note"):
        lines += ["", f"How it ran: {d['note']}."]
    return "\n".join(lines)


def main() -> int:
    text = DOC.read_text()
    for name, body in (("measure", measure_table(_load("ea_transfer_measure.json"))),
                       ("transfer", transfer_table(_load("ea_transfer.json"))),
                       ("synth", transfer_table(_load("ea_transfer_synth.json"))),
                       ("replay", transfer_table(_load("ea_transfer_replay.json"))),
                       ("kd_sweep", transfer_table(_load("ea_transfer_kd_sweep.json"))),
                       ("if", if_table(_load("ea_transfer_if.json"))),
                       ("cot", cot_table(_load("ea_cot.json"))),
                       ("compress", compress_table(_load("ea_compress.json"))),
                       ("compress_recover", compress_table(_load("ea_compress_recover.json"))),
                       ("compress_qat", compress_table(_load("ea_compress_qat.json")))):
        pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
        block = f"<!-- bench:{name} -->\n{body}\n<!-- /bench:{name} -->"
        if not pattern.search(text):
            sys.exit(f"{DOC}: no <!-- bench:{name} --> ... <!-- /bench:{name} --> markers")
        text = pattern.sub(lambda _m, b=block: b, text)
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
