"""Training checkpoints with exact resume, in safetensors + JSON (no pickle anywhere).

A checkpoint holds everything the next step depends on: the trainable parameters (the LoRA adapters,
or every weight for full fine-tuning), AdamW's moments and step counts, torch's RNG state (dropout),
the batch sampler's RNG state and the rest of the current epoch's batch queue, the loss history so
far and the validation metrics measured before training. Resuming from it reproduces the uninterrupted
run's loss trajectory step for step (tested with a real ``kill -9``).

Each checkpoint is written to a temp folder and renamed into place, so a crash mid-write leaves the
previous checkpoint as the latest complete one. A checkpoint carries a fingerprint of the config and
the data; resuming with different inputs is refused rather than silently mixing two runs.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from distill.config import ConfigError
from distill.io import publish_dir

KEEP = 2  # checkpoints kept; older ones are deleted after a newer one is complete


def checkpoint_root(out_dir: Path) -> Path:
    """Checkpoints live beside the output folder, which only appears once training is done."""
    return out_dir.with_name(out_dir.name + ".ckpt")


def _tensors(model, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {f"param.{n}": p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        for key, value in opt.state.get(p, {}).items():
            if torch.is_tensor(value):
                out[f"opt.{i}.{key}"] = value.detach().cpu().contiguous()
    out["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        out["rng.cuda"] = torch.cuda.get_rng_state()
    return out


def save_checkpoint(root: Path, step: int, model, opt, sampler: random.Random, queue: list[list[int]],
                    history: list[dict], before: dict, fingerprint: str, on_policy_batches: int = 0) -> Path:
    """Write ``root/step-NNNNNN`` atomically; returns it. ``on_policy_batches``: the student-sampled micro-batches
    so far (metrics.json counts the whole run's, not the resumed process's)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(dict(sorted(_tensors(model, opt).items())), str(tmp / "state.safetensors"))
    version, internal, gauss = sampler.getstate()
    meta = {"step": step, "fingerprint": fingerprint, "sampler": [version, list(internal), gauss],
            "queue": queue, "history": history, "before": before,
            "on_policy_batches": on_policy_batches}
    (tmp / "meta.json").write_text(json.dumps(meta))
    publish_dir(tmp, final)
    for old in sorted(root.glob("step-*"))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    done = sorted(p for p in root.glob("step-*") if (p / "meta.json").is_file() and (p / "state.safetensors").is_file())
    return done[-1] if done else None


def load_checkpoint(path: Path, model, opt, sampler: random.Random, fingerprint: str) -> dict:
    """Restore model/optimizer/RNG state in place; returns the JSON metadata (step, queue, history, …)."""
    meta = json.loads((path / "meta.json").read_text())
    if meta["fingerprint"] != fingerprint:
        raise ConfigError(
            f"{path} was written by a run with a different config or dataset; delete {path.parent} to start over, "
            "or rerun with the same inputs to resume")
    tensors = load_file(str(path / "state.safetensors"))
    named = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in tensors.items():
            if key.startswith("param."):
                named[key[len("param."):]].copy_(value)
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        state = {key.split(".", 2)[2]: v.to(p.device) for key, v in tensors.items() if key.startswith(f"opt.{i}.")}
        if state:
            if "step" in state:
                state["step"] = state["step"].cpu()  # AdamW keeps its step counter on the CPU
            opt.state[p] = state
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    version, internal, gauss = meta["sampler"]
    sampler.setstate((version, tuple(internal), gauss))
    return meta
