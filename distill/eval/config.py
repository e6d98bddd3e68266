"""What the evaluate stage measures, and how much of it: :class:`EvaluateConfig` (``evaluate:`` in a pipeline config).

Torch-free, so a config validates without loading model code. "The protocol above" in the field help is the
perplexity protocol of :mod:`distill.eval.perplexity`.

May import: pydantic, ``distill.config`` and the probe and lm-eval configs (themselves torch-free). Re-exported by
:mod:`distill.evaluate`, which it never imports.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from distill.config import StageConfig
from distill.lmeval.config import LmEvalConfig
from distill.probes.config import ProbesConfig


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
