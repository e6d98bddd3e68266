"""Saving a finished generate-stage dataset: its splits, ``stats.json`` and card, atomically; then the Hub upload.

Owns the on-disk layout of a dataset folder: a ``DatasetDict`` (train / validation / removed, built from one
table so every split shares one schema), ``stats.json`` and the dataset card (``README.md``,
:func:`distill.data.card.render_card`), written into a temp folder and put in place by
:func:`distill.io.publish_dir`, so a crash never leaves a half-written dataset; then the optional
``push_to_hub`` upload, whose failure loses nothing local.

May import: :mod:`distill.data.card`, :mod:`distill.io`, :mod:`distill.credentials`, the data config, the
teacher's config and ``prompts``' template type (``datasets`` function-local); never
:mod:`distill.data.dataset` (which calls it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from distill.credentials import get_secret
from distill.data.card import render_card
from distill.data.config import GenerateConfig
from distill.io import publish_dir
from distill.teacher.query import TeacherConfig
from prompts import Template


def publish_dataset(rows: list[dict], stats: dict, cfg: GenerateConfig, teacher_cfg: TeacherConfig,
                    templates: dict[str, Template], out: Path) -> None:
    """Save the ``DatasetDict`` (train / validation / removed), ``stats.json`` and the card into a temp folder,
    put it in place at ``out`` (:func:`distill.io.publish_dir`), then upload it when ``push_to_hub`` asks."""
    from datasets import Dataset, DatasetDict

    kept = [r for r in rows if r["removed_reason"] is None]
    # One table, then a filter per split: every split (an empty one too) shares one schema, and an
    # empty split built on its own would have none and fail to load back.
    for r in rows:
        if r["removed_reason"] is not None:
            r["split"] = "removed"
    full = Dataset.from_list(rows) if rows else Dataset.from_dict({"id": [], "split": []})
    dd = DatasetDict({name: full.filter(lambda v, name=name: v == name, input_columns="split").remove_columns("split")
                      for name in ("train", "validation", "removed")})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    dd.save_to_disk(str(tmp))
    (tmp / "stats.json").write_text(json.dumps(stats, indent=2))
    samples = [next(r for r in kept if r["style"] == st) for st in dict.fromkeys(r["style"] for r in kept)]
    (tmp / "README.md").write_text(render_card(cfg, teacher_cfg, templates, stats, samples))
    publish_dir(tmp, out)  # the older dataset is removed only once this one is in place
    if cfg.push_to_hub is not None:  # after the local save: a failed upload loses nothing
        hub = cfg.push_to_hub
        token = get_secret(hub.token_env)
        try:
            dd.push_to_hub(hub.repo_id, token=token, private=hub.private)
        except Exception as exc:  # network, auth: the local dataset is complete either way
            why = str(exc).replace(token, "***")[:300]
            raise RuntimeError(f"generate.push_to_hub: upload to {hub.repo_id} failed ({type(exc).__name__}: {why}); "
                               f"the dataset is saved at {out}") from None
