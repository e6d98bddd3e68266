"""Born-Again distillation: each generation of the student is taught by the previous one, no external teacher.

Furlanello et al. 2018 ("Born-Again Neural Networks", arXiv 1805.04770) train a network, then train an
identical one from scratch to match the first one's output distribution (plus the labels), and repeat:
the students often beat their same-size teachers, because the teacher's soft outputs carry more than the
labels. Here, with ``train.born_again = N``:

* generation 0 is one run of :func:`distill.train.loop.run_training` as configured (sequence-level KD on the teacher's
  answers, or logit KD);
* generation ``k >= 1`` starts again from ``train.student`` (same depth pruning, same seed, same data and
  steps) and is trained by online logit KD (``kd.method``, mixed ``kd.alpha_ce`` with the CE on the dataset's
  answers; forward KL with alpha 0.5 when ``kd`` is off) from generation ``k - 1``'s saved folder — the
  parent shares the tokenizer by construction.

Generations are written to ``<out>.generations/gen-<k>`` and kept; a rerun skips the finished ones, so a
killed loop resumes at the generation it was in (which itself resumes from its checkpoints with
``save_every``). The last generation is copied to ``out`` with ``born_again.json``: per generation, the
validation loss and the agreement with the dataset's teacher tokens, so each one can be compared with its
parent.

Run: ``eakd train CONFIG`` with ``train.born_again: 1`` (or ``python bench/distill_born_again.py``).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from distill.config import ConfigError
from distill.io import publish_dir
from distill.train.config import TrainConfig
from distill.train.loop import run_training

log = logging.getLogger(__name__)


def generation_config(cfg: TrainConfig, parent: Path | None) -> TrainConfig:
    """Generation 0: ``cfg`` itself; later ones: online KD from ``parent`` (see the module docstring)."""
    base = cfg.model_copy(update={"born_again": 0})
    if parent is None:
        return base
    kd = cfg.kd.model_copy(update={"enabled": True, "teacher": str(parent), "on_policy": 0.0})
    if not cfg.kd.enabled:
        kd = kd.model_copy(update={"method": "forward_kl", "alpha_ce": 0.5})
    return base.model_copy(update={"kd": kd.__class__(**kd.model_dump())})  # re-validated


def born_again(cfg: TrainConfig, dataset_dir: str | Path, out_dir: str | Path) -> Path:
    """Train ``cfg.born_again + 1`` generations (see the module docstring); returns ``out_dir``."""
    out = Path(out_dir)
    if cfg.processes > 1:
        raise ConfigError("train.born_again with train.processes > 1 is not supported yet; train the generations "
                          "in one process")
    gens_dir = out.with_name(out.name + ".generations")
    gens_dir.mkdir(parents=True, exist_ok=True)
    record, parent = [], None
    for k in range(cfg.born_again + 1):
        folder = gens_dir / f"gen-{k}"
        if not (folder / "metrics.json").exists():
            log.info("born-again: generation %d of %d%s", k, cfg.born_again,
                     "" if parent is None else f", taught by {parent}")
            run_training(generation_config(cfg, parent), dataset_dir, folder)
        m = json.loads((folder / "metrics.json").read_text())
        agreement = m.get("teacher_agreement_after") or {}
        record.append({"generation": k, "folder": str(folder), "mode": m["mode"], "teacher": None if parent is None else str(parent),
                       "val_loss": m.get("val_loss_after"), "top1_agreement": agreement.get("top1_agreement"),
                       "loss_last": m.get("loss_last"), "seconds": m.get("seconds")})
        parent = folder
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(parent, tmp)
    (tmp / "born_again.json").write_text(json.dumps({"generations": record}, indent=2))
    publish_dir(tmp, out)
    for r in record:
        log.info("born-again gen %d: validation loss %s, top-1 agreement with the dataset's teacher %s",
                 r["generation"], r["val_loss"], r["top1_agreement"])
    return out
