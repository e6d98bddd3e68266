"""The train stage: fine-tune a student on the teacher's outputs (sequence-level KD, Kim & Rush 2016; or logit KD).

:func:`train_student` is the stage's one entry point and only dispatches:

- ``train.born_again > 0``: :func:`distill.train.born_again.born_again` trains the generations (Furlanello et al. 2018);
- ``train.processes > 1`` outside a launcher: :func:`distill.train.launch.launch_training` hands the run to
  ``accelerate launch``, whose processes each run :func:`distill.train.loop.run_training` on their share;
- otherwise one run in this process, :func:`distill.train.loop.run_training`.

The configs live in :mod:`distill.train.config` (torch-free), row encoding in :mod:`distill.train.data` and
:mod:`distill.train.encode`, the loop in :mod:`distill.train.loop` (its batches and loss terms in
:mod:`distill.train.batches` and :mod:`distill.train.batch_loss`); their public names are re-exported here, so
``from distill.train.run import TrainConfig, tokenize_row`` keeps working.

Run: ``eakd train flows/configs/demo.yaml`` (or the ``pipeline`` flow).
"""

from __future__ import annotations

import os
from pathlib import Path

from distill.train.batch_loss import (
    assistant_loss,
    collate,
    eval_rows,
    labelled_hidden,
    labelled_logits,
    mixed_loss,
    mixed_loss_terms,
    online_kd_terms,
    teacher_logits,
)
from distill.train.batches import length_grouped_batches, on_policy_rows
from distill.train.born_again import born_again
from distill.train.card import student_card, write_card
from distill.train.config import ONLINE_ONLY, KDConfig, LoraConfig, TrainConfig
from distill.train.data import IGNORE, check_same_tokenizer, tokenize_row, tokenize_row_kd
from distill.train.encode import ANSWER_TAG, EXPLAIN_TAG, rationale_tasks
from distill.train.launch import launch_training
from distill.train.loop import check_inputs, depth_prune, load_online_teacher, run_training
from distill.train.outputs import refuse_trained

__all__ = [  # the names other modules import from distill.train.run
    "ANSWER_TAG", "EXPLAIN_TAG", "IGNORE", "KDConfig", "LoraConfig", "ONLINE_ONLY", "TrainConfig",
    "assistant_loss", "check_inputs", "check_same_tokenizer", "collate", "depth_prune", "eval_rows",
    "labelled_hidden", "labelled_logits", "length_grouped_batches", "load_online_teacher", "mixed_loss",
    "mixed_loss_terms", "on_policy_rows", "online_kd_terms", "rationale_tasks", "refuse_trained", "run_training",
    "teacher_logits", "tokenize_row", "tokenize_row_kd", "train_student",
]


def train_student(cfg: TrainConfig, dataset_dir: str | Path, out_dir: str | Path) -> Path:
    """Fine-tune the student on ``dataset_dir``'s train split; save a merged safetensors model at ``out_dir``.

    With ``cfg.processes`` > 1 (and no launcher around this process yet) training is handed to
    ``accelerate launch`` (:mod:`distill.train.launch`); under a launcher each process trains on its share of
    every optimizer step's micro-batches and rank 0 evaluates and saves.
    """
    refuse_trained(out_dir)
    if "WORLD_SIZE" in os.environ and not cfg.born_again:  # one process of a launch: the launcher writes the card
        return run_training(cfg, dataset_dir, out_dir)
    if cfg.born_again:
        out = born_again(cfg, dataset_dir, out_dir)
    elif cfg.processes > 1:
        check_inputs(cfg, dataset_dir, out_dir)  # before any process starts
        out = launch_training(cfg, dataset_dir, out_dir)
    else:
        out = run_training(cfg, dataset_dir, out_dir)
    if (Path(out) / "metrics.json").is_file():
        write_card(out, student_card(out))  # the Hub model card: lineage, method, measured, how to load
    return out
