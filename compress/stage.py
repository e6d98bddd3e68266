"""The compress stage: apply pruning, low-rank factorization and int8 quantization to a student, in order.

:func:`compress_student` loads a safetensors model folder (plain Hugging Face or a previous eakd-compressed
artifact), measures it, then applies ``cfg.steps`` as a chain. After each step it writes a complete,
loadable artifact to ``out_dir/<NN>-<method>/`` (see :mod:`compress.artifact`) with ``recipe.json`` (the
step configs applied so far) and ``metrics.json``, and finally ``out_dir/summary.json`` with the
baseline and a before/after record per step. Every folder and JSON file is written to a temp name and
renamed into place, so a crash never leaves a half-written step that looks complete.

Methods and sources: ``magnitude`` (Han et al. 2015), ``svd`` (Denton et al. 2014), ``rtn_int8``
(the RTN baseline of Dettmers et al. 2022 / Frantar et al. 2023); see :mod:`compress`.

Run: ``python -c "from compress.stage import CompressConfig, compress_student; ..."`` — or ``eakd``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from compress.artifact import load_compressed, new_manifest, quant_entry, read_manifest, save_compressed
from compress.eval import measure
from compress.factorize import factorize_model
from compress.prune import prune_model
from compress.quantize import quantize_model
from distill.config import ConfigError, StageConfig
from distill.evaluate import load_eval_text
from distill.models import check_model_dir, load_tokenizer

log = logging.getLogger(__name__)

Method = Literal["rtn_int8", "magnitude", "svd"]
STORAGE_DTYPES = ("float32", "bfloat16", "float16")


class CompressStep(StageConfig):
    """One compression step. Only the field of its own method is used."""

    method: Method
    sparsity: float = Field(0.5, ge=0.0, lt=1.0, description="magnitude: fraction of weights zeroed per layer")
    rank_ratio: float = Field(0.5, gt=0.0, le=1.0, description="svd: kept rank / min(out, in)")
    name: str | None = None

    def params(self) -> dict[str, Any]:
        """The fields that matter for this step's method."""
        return {"magnitude": {"sparsity": self.sparsity}, "svd": {"rank_ratio": self.rank_ratio},
                "rtn_int8": {"bits": 8}}[self.method]


class EvalConfig(StageConfig):
    """Perplexity protocol (see :mod:`distill.evaluate`); ``max_windows: null`` is the full protocol."""

    text_path: str | None = None  # None: the caller passes the text
    window: int = Field(512, ge=2)
    max_windows: int | None = Field(16, ge=1)
    # auto: bf16 where the hardware computes it natively, else fp32 (see distill.models.resolve_dtype)
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"


def _default_steps() -> list[CompressStep]:
    # svd -> magnitude -> rtn_int8, so every step's effect survives to the end: SVD after pruning would
    # refill the zeros (its factors are dense), and pruning after int8 would have to re-quantize.
    # rank_ratio 0.6 factorizes only the rectangular layers (for SmolLM2-135M: MLP 1536x576 and k/v
    # 192x576, each ~17-20% fewer weights); a square layer saves weights only below 0.5, which plain
    # truncated SVD (no fine-tuning) pays for with a large perplexity increase. Sparsity 0.3 is where
    # one-shot magnitude pruning of small LLMs stays close to the dense model.
    return [CompressStep(method="svd", rank_ratio=0.6), CompressStep(method="magnitude", sparsity=0.3),
            CompressStep(method="rtn_int8")]


class CompressConfig(StageConfig):
    steps: list[CompressStep] = Field(default_factory=_default_steps)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    # Storage dtype of the non-int8 tensors; "auto" keeps the source model's (bf16 for the bundled teacher),
    # so byte counts compare with the baseline instead of doubling from the fp32 working copy.
    save_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # true: each step starts from the previous step's output (the deployable chain);
    # false: each step starts from the source model (the families compared side by side).
    chain: bool = True


def _source_dtype(model_dir: Path, manifest: dict[str, Any] | None) -> str:
    """The dtype the source folder stores its floats in (``float32`` when it does not say)."""
    found = manifest.get("dtype") if manifest else None
    if not found:
        config = json.loads((model_dir / "config.json").read_text())
        found = config.get("dtype") or config.get("torch_dtype")
    if found not in STORAGE_DTYPES:
        log.info("source %s does not name a float storage dtype (%r); saving float32", model_dir, found)
        return "float32"
    return found


def _apply(model: nn.Module, step: CompressStep, manifest: dict[str, Any]) -> dict[str, Any]:
    """Run one step in place, record it in ``manifest``; returns scalar stats for the summary."""
    if step.method == "magnitude":
        stats = prune_model(model, step.sparsity)
    elif step.method == "svd":
        result = factorize_model(model, step.rank_ratio)
        for name, rank in result["factorized"].items():
            manifest["factorized"][name] = rank
            manifest["quantized"].pop(name, None)  # its int8 weight no longer exists
        stats = {"rank_ratio": step.rank_ratio, "layers_factorized": len(result["factorized"]),
                 "layers_left_dense": len(result["skipped"]), "weights_before": result["params_before"],
                 "weights_after": result["params_after"]}
    elif step.method == "rtn_int8":
        quantized = quantize_model(model)
        for name in quantized:
            manifest["quantized"][name] = quant_entry()
        stats = {"layers_quantized": len(quantized)}
    else:  # unreachable while Method and this chain agree
        raise ConfigError(f"compress step method {step.method!r} is not one of rtn_int8, magnitude, svd")
    if step.method != "rtn_int8" and manifest["quantized"]:
        # Layers quantized by an earlier step must stay on their int8 grid, or the artifact would not
        # hold what was measured.
        quantize_model(model, names=list(manifest["quantized"]))
    return stats


@torch.no_grad()
def _round_to_storage(model: nn.Module, dtype: str, manifest: dict[str, Any]) -> None:
    """Round float weights to the storage dtype in place, so what is measured is what is saved."""
    if dtype == "float32":
        return
    target = getattr(torch, dtype)
    int8_weights = {f"{name}.weight" for name in manifest["quantized"]}
    for name, p in model.named_parameters():
        if name not in int8_weights and p.is_floating_point():
            p.copy_(p.to(target).to(p.dtype))


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished ``tmp`` folder to ``final``, replacing an older ``final`` from a previous run."""
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)


def _fmt(n: int | None, unit: str = "") -> str:
    if n is None:
        return "?"
    return f"{n / 1e6:.2f}M{unit}" if n >= 1e5 else f"{n}{unit}"


def compress_student(cfg: CompressConfig, model_dir: Path, out_dir: Path, eval_text: str | None = None,
                     eval_source: str | None = None) -> Path:
    """Measure ``model_dir``, apply ``cfg.steps`` in order, save each step under ``out_dir``; returns ``out_dir``.

    ``eval_text`` is the perplexity text; when None it is read from ``cfg.eval.text_path``. ``eval_source``
    says where the text came from (recorded in ``summary.json``; defaults to ``cfg.eval.text_path``).
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    check_model_dir(model_dir)
    if eval_text is None:
        if cfg.eval.text_path is None:
            raise ConfigError("compress needs an eval text: set compress.eval.text_path or pass eval_text")
        eval_text = load_eval_text(cfg.eval.text_path)
    elif cfg.eval.text_path is not None:
        log.info("using the eval text passed in; compress.eval.text_path (%s) is ignored", cfg.eval.text_path)

    source_manifest = read_manifest(model_dir)
    manifest = copy.deepcopy(source_manifest) if source_manifest else new_manifest()
    storage = _source_dtype(model_dir, source_manifest) if cfg.save_dtype == "auto" else cfg.save_dtype
    manifest["dtype"] = storage
    recipe_path = model_dir / "recipe.json"
    recipe: list[dict[str, Any]] = json.loads(recipe_path.read_text()) if recipe_path.is_file() else []

    model = load_compressed(model_dir, dtype="float32")  # compression math in fp32; storage dtype on save
    tokenizer = load_tokenizer(model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    baseline = measure(model, tokenizer, eval_text, model_dir, cfg.eval)
    log.info("baseline %s: ppl %.3f, params %s, bytes %s", model_dir, baseline["perplexity"],
             _fmt(baseline["params_total"]), _fmt(baseline["bytes_on_disk"], "B"))
    summary: dict[str, Any] = {
        "source": str(model_dir),
        "eval_text_source": eval_source or cfg.eval.text_path or "passed in by the caller",
        "baseline": baseline,
        "steps": [],
        "eval": {**cfg.eval.model_dump(mode="json"), "protocol": "full" if cfg.eval.max_windows is None else "quick",
                 "windows": baseline["windows"], "tokens": baseline["tokens"], "dtype": baseline["dtype"]},
        "save_dtype": storage,
        "chain": cfg.chain,
        "complete": False,
    }
    before = baseline
    source_state = (copy.deepcopy(manifest), list(recipe))
    for index, step in enumerate(cfg.steps, start=1):
        dirname = f"{index:02d}-{step.method}"
        name = step.name or dirname
        start = time.perf_counter()
        if not cfg.chain and index > 1:  # side by side: every step from the source model
            model = load_compressed(model_dir, dtype="float32")
            manifest, recipe = copy.deepcopy(source_state[0]), list(source_state[1])
            before = baseline
        stats = _apply(model, step, manifest)
        _round_to_storage(model, storage, manifest)
        manifest["steps"].append({"name": name, "method": step.method, "params": step.params(), "stats": stats})
        recipe.append(step.model_dump(mode="json"))
        final = out_dir / dirname
        tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{dirname}.tmp-"))
        try:
            save_compressed(model, tmp, tokenizer, manifest, dtype=storage)
            _write_json(tmp / "recipe.json", recipe)
            after = measure(model, tokenizer, eval_text, tmp, cfg.eval)
            _write_json(tmp / "metrics.json", {"name": name, "method": step.method, "before": before,
                                               "after": after, "stats": stats})
            _publish(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        seconds = time.perf_counter() - start
        summary["steps"].append({"name": name, "method": step.method, "params": step.params(), "stats": stats,
                                 "before": before, "after": after, "artifact": str(final), "seconds": seconds})
        _write_json(out_dir / "summary.json", summary)
        log.info("step %d/%d %s: ppl %.3f -> %.3f, params %s -> %s (nonzero %s), bytes %s -> %s, %.1fs",
                 index, len(cfg.steps), step.method, before["perplexity"], after["perplexity"],
                 _fmt(before["params_total"]), _fmt(after["params_total"]), _fmt(after["params_nonzero"]),
                 _fmt(before["bytes_on_disk"], "B"), _fmt(after["bytes_on_disk"], "B"), seconds)
        before = after
    summary["complete"] = True
    _write_json(out_dir / "summary.json", summary)
    if not cfg.steps:
        log.info("compress: no steps configured; wrote the baseline only (%s)", out_dir / "summary.json")
    return out_dir

