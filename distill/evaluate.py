"""Evaluation: perplexity of a causal LM on raw text, parameter counts, and the evaluate stage.

Protocol (fixed so numbers from different runs and stages compare):

* tokenize the whole text once, without special tokens;
* cut the ids into non-overlapping windows of ``window`` tokens and drop the last partial window;
* QUICK protocol: score only the first ``max_windows`` windows (default 16 x 512 tokens, seconds on a
  CPU for a 135M model); FULL protocol: ``max_windows=None`` scores every window;
* each window is scored on its own (no context carried over) on all of its ``window - 1`` next-token
  predictions; perplexity = ``exp(total NLL / total predicted tokens)``.

This is the non-overlapping ("stride = window") variant of the Hugging Face perplexity guide
(https://huggingface.co/docs/transformers/perplexity), as used for WikiText-2 in e.g. GPTQ (Frantar et
al. 2023). Non-overlapping windows give somewhat higher perplexity than a sliding window, so only compare
numbers measured with the same window size. Scoring runs under ``torch.no_grad`` and, for
``dtype="bfloat16"``, under ``torch.autocast`` on the model's device.

The evaluate stage (:func:`evaluate_student`) measures a student, and the base model it started from,
on three things: perplexity on held-out text (the protocol above); validation loss and agreement with
the teacher on the dataset's validation split (:func:`distill.train.run.eval_rows`: top-1 agreement, KL on
the cached top-k); and task accuracy: greedy answers to validation prompts that have a gold answer,
parsed exactly as the dataset builder parsed the teacher's (:func:`answer_of`) and checked with
:func:`distill.answers.answers_match` — per style, plus how often the student gives the teacher's answer.

Run: ``eakd evaluate CONFIG --model DIR --dataset DIR --out DIR`` (or the pipeline's ``evaluate`` stage);
``python -c "from distill.evaluate import perplexity; ..."`` for perplexity alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from distill.answers import ExtractionConfig, answer_key, answers_match, extract_answer
from distill.config import ConfigError, StageConfig, dump_config, shared_data_dir
from distill.generation import generate_greedy
from distill.io import publish_dir, write_text_atomic
from distill.lmeval.config import LmEvalConfig
from distill.models import (
    load_causal_lm,
    load_tokenizer,
    resolve_dtype,
    resolve_model_path,
)
from distill.probes.config import ProbesConfig
from distill.train.card import CARD_BEGIN, CARD_END

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16")


def load_eval_text(path: str | Path) -> str:
    """Read a WikiText-style raw text file as is (UTF-8)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"eval text {p} not found; set eval.text_path to a raw text file "
                          "(e.g. WikiText-2 wiki.test.raw) or pass the text directly")
    text = p.read_text(encoding="utf-8")
    if not text.strip():
        raise ConfigError(f"eval text {p} is empty; point eval.text_path at a file with text in it")
    return text


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``{"total", "nonzero"}`` over the model's unique parameters (a tied weight counts once)."""
    total = nonzero = 0
    for p in model.parameters():  # parameters() already yields a shared Parameter only once
        total += p.numel()
        nonzero += int(torch.count_nonzero(p.detach()))
    return {"total": total, "nonzero": nonzero}


def window_ids(ids: Tensor, window: int, max_windows: int | None) -> Tensor:
    """``ids`` [n] -> [w, window]: consecutive non-overlapping windows, partial tail dropped, first ``max_windows``."""
    n_full = ids.numel() // window
    if max_windows is not None:
        n_full = min(n_full, max_windows)
    return ids[: n_full * window].view(n_full, window)


def window_nll(logits: Tensor, ids: Tensor) -> Tensor:
    """Summed next-token NLL: ``logits`` [T, V] predicting ``ids`` [T] (position t predicts t+1) -> scalar fp32."""
    return torch.nn.functional.cross_entropy(logits[:-1].float(), ids[1:], reduction="sum")


def _check_args(window: int, max_windows: int | None, dtype: str) -> None:
    if window < 2:
        raise ConfigError(f"eval.window must be >= 2 (one prediction needs two tokens), got {window}")
    if max_windows is not None and max_windows < 1:
        raise ConfigError(f"eval.max_windows must be >= 1 or null (= all windows), got {max_windows}")
    if dtype not in DTYPES:
        raise ConfigError(f"eval.dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def perplexity(model: nn.Module, tokenizer: Any, text: str, window: int = 512, max_windows: int | None = 16,
               dtype: str = "auto") -> dict[str, Any]:
    """Score ``text`` with the protocol above.

    Returns ``{"perplexity", "nll" (mean per predicted token, nats), "tokens" (predicted tokens),
    "windows", "window", "dtype", "seconds", "tokens_per_s"}``.
    """
    device = next(model.parameters()).device
    if dtype == "auto":
        dtype = resolve_dtype(dtype, device.type)
    _check_args(window, max_windows, dtype)
    ids = torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long)
    windows = window_ids(ids, window, max_windows)
    if windows.shape[0] == 0:
        raise ConfigError(f"eval text has {ids.numel()} tokens, fewer than one window of {window}; "
                          "use a longer text or a smaller eval.window")
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if dtype == "bfloat16"
                else contextlib.nullcontext())
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64)
    start = time.perf_counter()
    try:
        with torch.no_grad(), autocast:
            for row in windows:
                row = row.to(device)
                logits = model(input_ids=row[None, :], use_cache=False).logits[0]
                total += window_nll(logits, row).double().cpu()
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    tokens = windows.shape[0] * (window - 1)
    nll = float(total) / tokens
    result = {"perplexity": math.exp(nll), "nll": nll, "tokens": tokens, "windows": int(windows.shape[0]),
              "window": window, "dtype": dtype, "seconds": seconds,
              "tokens_per_s": windows.numel() / seconds if seconds > 0 else float("inf")}
    log.debug("perplexity %.3f over %d windows of %d (%s, %.1fs)", result["perplexity"], result["windows"],
              window, dtype, seconds)
    return result


def teacher_agreement(model: nn.Module, rows: list, pad_id: int, batch_size: int = 8) -> dict[str, Any] | None:
    """How closely the student follows the teacher on held-out teacher completions.

    ``rows`` are training rows from :mod:`distill.train.run` (``(ids, labels)`` or, with cached top-k,
    ``(ids, labels, topk_ids, topk_logprobs)``); the labels are the teacher's own tokens. Returns
    ``{"top1_agreement"`` (share of positions where the student's argmax is the teacher's token — its
    top-1 at temperature 0), ``"kl_topk"`` (mean KL(teacher || student) over the top-k + tail buckets,
    None without cached top-k), ``"tokens"}``; None when there are no rows. One forward pass, shared
    with the validation loss (:func:`distill.train.run.eval_rows`).
    """
    from distill.train.run import eval_rows

    return eval_rows(model, rows, pad_id, batch_size, None, None)["agreement"]


# --- the evaluate stage ----------------------------------------------------------------------------------

WIKITEXT_TEST = "wikitext-2/wiki.test.tokens"  # under ../shared/data (or $EAKD_DATA_DIR)
VALIDATION_TEXT = "dataset validation split (teacher outputs)"
# A structured-CoT dataset teaches the student "<rationale>\nThe answer is <answer>." (distill.data.dataset)
STRUCTURED_COT_EXTRACTION = ExtractionConfig(patterns=["the_answer_is"])


class EvaluateConfig(StageConfig):
    """What :func:`evaluate_student` measures, and how much of it. The defaults suit a GPU or a tiny model; a
    135M model on a 2-core CPU wants fewer windows, prompts and tokens (see flows/configs/demo.yaml)."""

    text_path: str | None = Field(None, description="held-out raw text for perplexity; null: WikiText-2 test from "
                                                    "../shared/data, else the dataset's validation teacher outputs")
    window: int = Field(512, ge=2, description="perplexity window in tokens (see the protocol above)")
    max_windows: int | None = Field(16, ge=1, description="score the first N windows (quick protocol); null: all (full)")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="compute precision: bf16 autocast where the hardware has native bf16, else fp32")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available, else cpu")
    max_length: int = Field(512, ge=16, description="truncate validation conversations to N tokens for loss and "
                                                    "agreement (set it to train.max_length to compare with training)")
    max_examples: int = Field(32, ge=0, description="validation prompts with a gold answer answered for task "
                                                    "accuracy, taken round-robin across styles (0: skip)")
    max_new_tokens: int = Field(256, ge=1, le=8192, description="greedy generation budget per answer")
    batch_size: int = Field(8, ge=1, description="sequences per forward pass and per generation batch")
    baseline: bool = Field(True, description="also evaluate the base model (train.student), so reports show base -> student")
    probes: ProbesConfig | None = Field(None, description="EA probes: per-ability scores (ICL 0-shot vs k-shot, CoT vs "
                                                          "direct, verifiable instructions) on held-out items for the "
                                                          "teacher, the base and the student (distill/probes/)")
    lm_eval: LmEvalConfig | None = Field(None, description="lm-evaluation-harness tasks over local data on the base and "
                                                           "the student (distill/lmeval/; `eakd evaluate --lm-eval TASKS`)")


def find_eval_text(text_path: str | None, dataset_dir: str | Path | None,
                   setting: str = "evaluate.text_path") -> tuple[str, str]:
    """(text, source) for perplexity: the configured file, else WikiText-2 test from the shared data, else the
    dataset's held-out teacher outputs. ``setting`` names the config key in the error when none is found."""
    if text_path:
        return load_eval_text(text_path), text_path
    data = shared_data_dir()
    if data and (data / WIKITEXT_TEST).is_file():
        return load_eval_text(data / WIKITEXT_TEST), WIKITEXT_TEST
    if dataset_dir is not None and (Path(dataset_dir) / "dataset_dict.json").is_file():
        from datasets import load_from_disk

        dd = load_from_disk(str(dataset_dir))
        val = dd.get("validation")
        texts = [m[-1]["content"] for m in val["messages"] if m] if val is not None and "messages" in val.column_names else []
        if texts:
            return "\n\n".join(texts), VALIDATION_TEXT
    raise ConfigError(f"{setting}: no evaluation text found; set it to a text file")


def answer_of(text: str, style: str, extraction: ExtractionConfig, structured_cot: bool = False) -> str | None:
    """The answer in a completion, parsed as :func:`distill.data.dataset._rows_for` parses the teacher's: CoT with
    the dataset's extraction patterns (a structured-CoT dataset taught "The answer is X."), ICL and
    instruct: the first line."""
    text = text.strip()
    if style == "cot":
        return extract_answer(text, STRUCTURED_COT_EXTRACTION if structured_cot else extraction).answer
    first = text.splitlines()[0].strip() if text else ""
    return first or None


def _accuracy_block(records: list[dict]) -> dict[str, Any]:
    n = len(records)
    correct = sum(r["correct"] for r in records)
    judged = [r["agrees_with_teacher"] for r in records if r["agrees_with_teacher"] is not None]
    teacher = [r["teacher_correct"] for r in records if r["teacher_correct"] is not None]

    def share(xs: list[bool]) -> float | None:
        return round(sum(xs) / len(xs), 4) if xs else None

    return {"rows": n, "correct": correct, "accuracy": share([r["correct"] for r in records]),
            "no_answer": sum(r["answer"] is None for r in records),
            "teacher_agreement": share(judged),  # same normalised answer as the teacher's, where it had one
            "teacher_accuracy": share(teacher)}  # the teacher's own answers on the same prompts


def score_answers(outputs: list[str], rows: list[dict], extraction: ExtractionConfig,
                  structured_cot: bool = False) -> dict[str, Any]:
    """Grade one generated ``output`` per dataset ``row`` (``style``, ``gold``, the teacher's ``answer``).

    Returns ``{"rows", "correct", "accuracy", "no_answer", "teacher_agreement", "teacher_accuracy",
    "per_style": {style: the same counts}, "per_row": [one record per row]}``.
    """
    if len(outputs) != len(rows):
        raise ValueError(f"{len(outputs)} outputs for {len(rows)} rows")
    records = []
    for text, row in zip(outputs, rows):
        style = row.get("style") or "instruct"
        pred, gold, teacher = answer_of(text, style, extraction, structured_cot), row.get("gold"), row.get("answer")
        records.append({"id": row.get("id"), "style": style, "gold": gold, "teacher_answer": teacher, "output": text,
                        "answer": pred, "correct": answers_match(pred, gold) is True,
                        "teacher_correct": answers_match(teacher, gold),
                        "agrees_with_teacher": None if answer_key(teacher) is None else answer_key(pred) == answer_key(teacher)})
    styles = dict.fromkeys(r["style"] for r in records)
    return _accuracy_block(records) | {
        "per_style": {s: _accuracy_block([r for r in records if r["style"] == s]) for s in styles}, "per_row": records}


def select_task_rows(rows: list[dict], max_examples: int) -> list[dict]:
    """Up to ``max_examples`` rows with a gold answer, one per distinct (style, prompt) — self-consistency keeps
    several answers to one prompt — taken round-robin across styles in dataset order, so a small cap covers
    every style."""
    by_style: dict[str, list[dict]] = {}
    seen: set[str] = set()
    for r in rows:
        msgs, style = r.get("messages") or [], r.get("style") or "instruct"
        if r.get("gold") is None or not str(r["gold"]).strip() or len(msgs) < 2 or msgs[-1]["role"] != "assistant":
            continue
        prompt = json.dumps([style, msgs[:-1]], sort_keys=True)
        if prompt not in seen:
            seen.add(prompt)
            by_style.setdefault(style, []).append(r)
    queues, picked = [list(q) for q in by_style.values()], []
    while len(picked) < max_examples and any(queues):
        for q in queues:
            if q and len(picked) < max_examples:
                picked.append(q.pop(0))
    return picked


def encode_validation(tokenizer: Any, split: Any, max_length: int) -> tuple[list, str | None]:
    """The validation split as :func:`distill.train.run.train_student` encodes it: on the teacher's own token ids
    with its cached top-k where the split has them (so KL is measurable), else on the chat text.
    Returns (rows, why there is no KL — None when there is)."""
    from distill.logprobs import is_packed
    from distill.train.run import check_same_tokenizer, tokenize_row, tokenize_row_kd

    cols = split.column_names
    if split.num_rows == 0 or "messages" not in cols:
        return [], "the validation split is empty" if split.num_rows == 0 else "the validation split has no messages"
    msgs = split["messages"]
    why = "the dataset has no cached teacher top-k log-probs (generate.sampling.top_logprobs)"
    if "teacher_token_ids" in cols and "teacher_logprobs" in cols:
        ids, lps = split["teacher_token_ids"], split["teacher_logprobs"]
        packed = [json.loads(lp) for lp in lps[:8] if lp is not None]
        if any(x is None for x in ids) or any(x is None for x in lps):
            why = "some validation rows lack the teacher's token ids or top-k log-probs"
        elif not all(is_packed(p) for p in packed):
            why = "the teacher's log-probs name tokens as strings (an OpenAI-compatible endpoint), not ids"
        else:
            try:
                check_same_tokenizer(tokenizer, ids, [m[-1]["content"] for m in msgs])
            except ConfigError:
                why = "the model's tokenizer does not match the teacher's"
            else:
                k = max(int(p["k"]) for p in packed) or 1
                rows = (tokenize_row_kd(tokenizer, m, t, lp, max_length, k) for m, t, lp in zip(msgs, ids, lps))
                return [r for r in rows if r], None
    return [r for r in (tokenize_row(tokenizer, m, max_length) for m in msgs) if r], why


def dataset_extraction(dataset_dir: Path) -> tuple[ExtractionConfig, bool, str]:
    """(extraction patterns, structured CoT?, where they came from): the generate config in the dataset's
    ``stats.json``, else the defaults."""
    stats = dataset_dir / "stats.json"
    config = json.loads(stats.read_text()).get("config", {}) if stats.is_file() else {}
    if "extraction" not in config:
        return ExtractionConfig(), False, "defaults (the dataset records no generate config)"
    return ExtractionConfig.model_validate(config["extraction"]), bool(config.get("structured_cot")), "the dataset's stats.json"


def _measure(path: Path, cfg: EvaluateConfig, text: str | None, text_skip: str | None, split: Any,
             task_rows: list[dict], extraction: ExtractionConfig, structured_cot: bool, device: str,
             probe_prompts: list | None = None, keep_layers: int | None = None,
             lm_tasks: Any = None) -> dict[str, Any]:
    """Every metric of one model; the task accuracy's per-row records under ``"per_row"``."""
    from distill.train.run import eval_rows

    t0 = time.perf_counter()
    tok = load_tokenizer(path)
    model = load_causal_lm(path, dtype="float32", device=device)
    if keep_layers is not None:  # the student's start: its base depth-pruned as train.keep_layers prunes it
        from distill.train.run import depth_prune

        depth_prune(model, keep_layers)
    compute = resolve_dtype(cfg.dtype, device)
    autocast = torch.bfloat16 if compute == "bfloat16" else None
    out: dict[str, Any] = {"model": str(path) + (f" pruned to {keep_layers} layers" if keep_layers else ""),
                           "layers": getattr(model.config, "num_hidden_layers", None),
                           "parameters": count_parameters(model)["total"], "device": device, "dtype": compute}
    if text is None:
        out["perplexity"] = {"perplexity": None, "reason": text_skip}
    else:
        ppl = perplexity(model, tok, text, cfg.window, cfg.max_windows, compute)
        out["perplexity"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in ppl.items()}
    t = time.perf_counter()
    rows, kl_note = encode_validation(tok, split, cfg.max_length)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ev = eval_rows(model, rows, pad, cfg.batch_size, autocast, None)  # kd=None: the loss is CE on the teacher's tokens
    out["validation"] = {"rows": len(rows), "loss": None if ev["loss"] is None else round(ev["loss"], 4),
                         **(ev["agreement"] or {"top1_agreement": None, "kl_topk": None, "tokens": 0}),
                         "kl_note": kl_note, "seconds": round(time.perf_counter() - t, 2)}
    if not rows:
        out["validation"]["reason"] = kl_note
    if not task_rows:
        out["accuracy"] = {"accuracy": None, "reason": "evaluate.max_examples is 0" if cfg.max_examples == 0 else
                           "no validation row has a gold answer (column 'gold') and an assistant turn"}
    else:
        t = time.perf_counter()
        outputs, truncated = generate_greedy(model, tok, [r["messages"][:-1] for r in task_rows], cfg.max_new_tokens,
                                             cfg.batch_size, autocast, [r.get("style") != "cot" for r in task_rows])
        out["accuracy"] = score_answers(outputs, task_rows, extraction, structured_cot) | {
            "truncated": truncated, "max_new_tokens": cfg.max_new_tokens, "seconds": round(time.perf_counter() - t, 2)}
    if probe_prompts:
        from distill.probes.run import probe_model

        t = time.perf_counter()
        out["probes"], out["probe_records"] = probe_model(model, tok, probe_prompts, cfg.probes, cfg.batch_size, autocast)
        out["probes"]["seconds"] = round(time.perf_counter() - t, 2)
    if lm_tasks is not None:  # distill.lmeval.run.PreparedTasks
        from distill.lmeval.run import run_tasks

        out["lm_eval"] = run_tasks(model, tok, lm_tasks, cfg.lm_eval, compute)
    out["seconds"] = round(time.perf_counter() - t0, 2)
    acc = out["accuracy"]
    log.info("%s: perplexity %s | val loss %s | top-1 %s | accuracy %s | %.1f s", path, out["perplexity"]["perplexity"],
             out["validation"]["loss"], out["validation"]["top1_agreement"],
             "n/a" if acc["accuracy"] is None else f"{acc['correct']}/{acc['rows']}", out["seconds"])
    return out


def _probe_setup(cfg: EvaluateConfig, dd: Any, teacher_cfg: Any) -> tuple[list | None, dict | None]:
    """The probe prompts (items whose input a training row used are skipped) and the teacher's probe results."""
    if cfg.probes is None:
        return None, None
    from distill.probes.run import build_prompts, dataset_inputs, probe_teacher

    seen = dataset_inputs(dd)
    try:
        prompts = build_prompts(cfg.probes, seen)
    except ValueError as exc:
        raise ConfigError(f"evaluate.probes: {exc}") from None
    log.info("probes: %d prompts (%d training inputs excluded)", len(prompts), len(seen))
    if not cfg.probes.teacher or teacher_cfg is None:
        return prompts, None
    t = time.perf_counter()
    scores, records = probe_teacher(prompts, cfg.probes, teacher_cfg)
    return prompts, {"model": teacher_cfg.model_id(), "probes": scores | {"seconds": round(time.perf_counter() - t, 2)},
                     "probe_records": records}


def _abilities(cfg: EvaluateConfig, teacher: dict | None, results: dict[str, dict]) -> list[dict] | None:
    if cfg.probes is None:
        return None
    from distill.probes.score import ability_table

    get = lambda m: (m or {}).get("probes")  # noqa: E731
    return ability_table(get(teacher), get(results.get("base")), get(results.get("student")), cfg.probes.tolerance,
                         start=get(results.get("start")))


def _lm_eval_block(results: dict[str, dict], dd: Any) -> tuple[dict | None, list[dict]]:
    """eval.json's ``lm_eval`` (each task's metrics, model beside model; None when not run) and the scored samples
    (for ``lm_eval_samples.jsonl``); pops the per-model lm-eval results out of ``results``."""
    per_model = {name: m.pop("lm_eval") for name, m in results.items() if "lm_eval" in m}
    if not per_model:
        return None, []
    from distill.lmeval.run import compare

    train = dd.get("train")
    train_ids = ({str(i).rsplit(":", 2)[0] for i in train["id"]}  # a row id is <seed id>:<style>:<n>
                 if train is not None and "id" in train.column_names else None)
    block = compare(per_model, train_ids)
    return block, [{"model": name} | rec for name, r in per_model.items() for rec in r.pop("records")]


def _check_out_dir(out: Path) -> None:
    if (out / "eval.json").exists():
        raise ConfigError(f"{out} already holds an evaluation; remove it or choose another output folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} exists and is not an eakd evaluation; remove it or choose another output folder")


def _readme(ev: dict[str, Any]) -> str:
    lines = ["# eakd evaluation", "", (f"Model `{ev['model']}` on `{ev['dataset']}` (validation split); "
                                       f"perplexity on {ev['eval_text_source']}; eakd {ev['eakd_version']}."), "",
             "| metric | " + " | ".join(n for n in ("base", "start", "student") if ev.get(n)) + " |",
             "|---|" + "---|" * sum(bool(ev.get(n)) for n in ("base", "start", "student"))]
    models = [ev[n] for n in ("base", "start", "student") if ev.get(n)]
    for label, get in [("perplexity", lambda m: m["perplexity"]["perplexity"]),
                       ("validation loss", lambda m: m["validation"]["loss"]),
                       ("top-1 agreement with the teacher", lambda m: m["validation"]["top1_agreement"]),
                       ("KL(teacher || model), top-k", lambda m: m["validation"]["kl_topk"]),
                       ("task accuracy", lambda m: m["accuracy"]["accuracy"])]:
        lines.append(f"| {label} | " + " | ".join("—" if get(m) is None else str(get(m)) for m in models) + " |")
    if ev.get("abilities"):
        from distill.probes.score import ability_markdown

        lines += ["", "Abilities (held-out probes, distill/probes/; gap closed = (student - base) / (teacher - base)):", "",
                  *ability_markdown(ev["abilities"])]
    if ev.get("lm_eval"):
        from distill.lmeval.run import markdown_table

        lines += ["", "lm-evaluation-harness (distill/lmeval/; value ± stderr over the scored documents):", "",
                  *markdown_table(ev["lm_eval"])]
    return "\n".join(lines) + "\n\nEverything, with the reasons for any missing number: `eval.json`; " \
        "each graded answer: `predictions.jsonl` (probes: `probes.jsonl`).\n"




def record_in_model_card(model_dir: str | Path, eval_dir: str | Path) -> Path:
    """Write the evaluation in ``eval_dir`` into ``model_dir/README.md`` (the student's model card) as one
    section between markers: a later evaluation replaces it, the rest of the card is kept. Atomic (a
    temporary file renamed over the card), so a crash leaves the old card whole. Returns the card's path."""
    card, ev = Path(model_dir) / "README.md", json.loads((Path(eval_dir) / "eval.json").read_text())
    section = "\n".join([CARD_BEGIN, "## Evaluation", "", _readme(ev).split("\n", 2)[2].rstrip(),
                         f"(`{Path(eval_dir).resolve()}`, {ev['created']})", CARD_END])
    old = card.read_text() if card.is_file() else f"# {Path(model_dir).name}\n"
    if CARD_BEGIN in old and CARD_END in old:
        head, rest = old.split(CARD_BEGIN, 1)
        new = head + section + rest.split(CARD_END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + section + "\n"
    write_text_atomic(card, new)
    return card


def evaluate_student(cfg: EvaluateConfig, model_dir: str | Path, dataset_dir: str | Path, out_dir: str | Path, *,
                     base_model: str | Path | None = None, eval_text: str | None = None,
                     eval_source: str | None = None, teacher_cfg: Any = None,
                     base_keep_layers: int | None = None) -> Path:
    """Measure ``model_dir`` (and ``base_model``, a folder or ``bundled``) on ``dataset_dir``'s validation split
    and the perplexity text; write ``out_dir/eval.json``, ``predictions.jsonl``, ``README.md`` and the config.

    ``eval_text`` is the perplexity text (``eval_source`` says where it came from); when None it is found by
    :func:`find_eval_text` from ``cfg.text_path`` and the dataset. The output appears whole or not at all.
    ``teacher_cfg`` (a :class:`distill.teacher.query.TeacherConfig`): with ``cfg.probes.teacher``, the teacher answers
    the probes too, as the reference for the gap closed. ``base_keep_layers`` (``train.keep_layers``): also measure
    the student's start — the base depth-pruned as training pruned it — so a loss the pruning caused is not read
    as negative transfer from training.
    """
    from datasets import load_from_disk

    from distill.provenance import code_version

    t0 = time.perf_counter()
    out, ds_path = Path(out_dir), Path(dataset_dir)
    _check_out_dir(out)
    if not (ds_path / "dataset_dict.json").is_file():
        raise ConfigError(f"{ds_path} is not an eakd dataset (no dataset_dict.json); run `eakd generate` first")
    dd = load_from_disk(str(ds_path))
    if "validation" not in dd:
        raise ConfigError(f"{ds_path} has no validation split (it has {', '.join(dd)}); the evaluation scores held-out "
                          "rows: generate with generate.validation_fraction > 0")
    model_path = resolve_model_path(str(model_dir))
    base_path = resolve_model_path(str(base_model)) if base_model is not None else None
    if base_path is not None and base_path.resolve() == model_path.resolve():
        log.info("the base model is the evaluated model (%s); evaluating it once", model_path)
        base_path = None
    if eval_text is None:
        eval_text, eval_source = find_eval_text(cfg.text_path, ds_path)
    tok = load_tokenizer(model_path)
    probe = eval_text[: 16 * cfg.window]  # a token spans far fewer than 16 characters: enough to tell, fast
    n_tokens = len(tok(probe, add_special_tokens=False, verbose=False)["input_ids"])
    if n_tokens < cfg.window and len(probe) < len(eval_text):
        n_tokens = len(tok(eval_text, add_special_tokens=False, verbose=False)["input_ids"])
    text, text_skip = eval_text, None
    if n_tokens < cfg.window:  # a configured text must be long enough; a fallback text may just be short
        text_skip = (f"the eval text ({eval_source}) has {n_tokens} tokens, fewer than one window of {cfg.window}; "
                     "set evaluate.text_path to a longer text or lower evaluate.window")
        if cfg.text_path:
            raise ConfigError(f"evaluate.text_path: {text_skip}")
        log.warning("perplexity skipped: %s", text_skip)
        text = None
    val = dd["validation"]
    extraction, structured, extraction_from = dataset_extraction(ds_path)
    cols = [c for c in ("id", "style", "gold", "answer", "messages") if c in val.column_names]
    task_rows = select_task_rows(val.select_columns(cols).to_list() if cols else [], cfg.max_examples)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("evaluate.device=cuda but no CUDA device is visible; use evaluate.device=cpu or auto")

    models = [("base", base_path, None), ("start", base_path if base_keep_layers else None, base_keep_layers),
              ("student", model_path, None)]
    with tempfile.TemporaryDirectory(prefix="eakd-lmeval-") as lm_work:
        lm_tasks = None
        if cfg.lm_eval is not None:  # before the teacher probes and any model load: a bad task name fails fast
            from distill.lmeval.run import prepare_tasks

            lm_tasks = prepare_tasks(cfg.lm_eval, Path(lm_work))
        probe_prompts, teacher_probes = _probe_setup(cfg, dd, teacher_cfg)
        results = {name: _measure(p, cfg, text, text_skip, val, task_rows, extraction, structured, device,
                                  probe_prompts, keep, lm_tasks)
                   for name, p, keep in models if p is not None}
    lm_eval, lm_records = _lm_eval_block(results, dd)
    predictions = [{"model": name} | r for name, m in results.items() for r in m["accuracy"].pop("per_row", [])]
    probe_rows = [{"model": name} | r for name, m in [("teacher", teacher_probes or {})] + list(results.items())
                  for r in m.pop("probe_records", [])]
    ev = {"format": "eakd-eval/v1", "eakd_version": code_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
          "model": str(model_path), "base_model": None if base_path is None else str(base_path), "dataset": str(ds_path),
          "eval_text_source": eval_source or "passed in by the caller",
          "perplexity_protocol": {"window": cfg.window, "max_windows": cfg.max_windows,
                                  "protocol": "full" if cfg.max_windows is None else "quick"},
          "extraction": extraction.model_dump(mode="json") | {"structured_cot": structured, "from": extraction_from},
          "rows": {"validation": val.num_rows, "task": len(task_rows)},
          "config": cfg.model_dump(mode="json"), "base": results.get("base"), "start": results.get("start"),
          "student": results["student"],
          "teacher": teacher_probes, "abilities": _abilities(cfg, teacher_probes, results), "lm_eval": lm_eval,
          "seconds": round(time.perf_counter() - t0, 2)}
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dump_config(cfg, tmp / "evaluate_config.yaml")
    (tmp / "predictions.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions))
    if lm_records:
        (tmp / "lm_eval_samples.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n"
                                                           for r in lm_records))
    if probe_rows:
        (tmp / "probes.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in probe_rows))
    (tmp / "README.md").write_text(_readme(ev))
    (tmp / "eval.json").write_text(json.dumps(ev, indent=2))
    publish_dir(tmp, out)  # replaces an empty folder (checked above)
    log.info("evaluation saved to %s (%.1f s)", out, ev["seconds"])
    return out
