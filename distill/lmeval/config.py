"""What the lm-evaluation-harness hook runs (``evaluate.lm_eval``; torch-free: validating it imports no model code).

lm-eval (EleutherAI's lm-evaluation-harness, https://github.com/EleutherAI/lm-evaluation-harness) scores the
student and its base on YAML task definitions over local files; nothing is fetched from the hub. The shipped
tasks (``distill/lmeval/tasks/``) are listed in ``SHIPPED_TASKS``; ``include_path`` adds your own task YAMLs.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from distill.config import StageConfig

# task name -> what it scores (docs/deployment.md, "lm-evaluation-harness")
SHIPPED_TASKS = {
    "eakd_gsm8k": "GSM8K train (../shared/data/gsm8k/train.jsonl), last rows first: generative, exact match on the "
                  "last number (flexible-extract) and on '#### N' (strict-match)",
    "eakd_demo_icl": "the demo's 24 held-out ICL items (flows/configs/demo_tasks.yaml), the student's zero-shot "
                     "prompt: first line, exact match",
    "eakd_demo_cot": "the demo's 4 held-out CoT items (sum3): 'The answer is N', exact match",
}


class LmEvalConfig(StageConfig):
    """lm-eval tasks run on the student and its base (``eakd evaluate --lm-eval TASKS`` sets ``tasks``)."""

    tasks: list[str] = Field(min_length=1, description="lm-eval task names: shipped ones (eakd_gsm8k, eakd_demo_icl, "
                                                       "eakd_demo_cot) or tasks in include_path")
    limit: int | None = Field(32, ge=1, description="score the first N documents of each task (null: all of them)")
    num_fewshot: int | None = Field(None, ge=0, le=64, description="few-shot examples per prompt (null: the task's own)")
    batch_size: int = Field(8, ge=1, description="sequences per forward pass / generation batch")
    include_path: list[str] = Field(default_factory=list, description="folders (or YAML files) of your own lm-eval "
                                                                      "task definitions over local data")
    chat_template: bool = Field(True, description="wrap prompts in the model's chat template (an instruct student "
                                                  "learned chat prompts)")
    max_gen_toks: int | None = Field(None, ge=1, le=8192, description="cap generated tokens per answer (null: the "
                                                                      "task's generation_kwargs)")
    seed: int = Field(1234, description="lm-eval's random, numpy, torch and few-shot sampling seeds")

    @field_validator("tasks")
    @classmethod
    def _names(cls, names: list[str]) -> list[str]:
        out = [n.strip() for n in names if n.strip()]
        if not out:
            raise ValueError("name at least one lm-eval task, e.g. eakd_gsm8k")
        if len(set(out)) != len(out):
            raise ValueError(f"a task is named twice: {out}")
        return out

    @field_validator("include_path", mode="before")
    @classmethod
    def _one_path(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


def parse_task_list(text: str) -> list[str]:
    """``"eakd_gsm8k, eakd_demo_icl"`` (the ``--lm-eval`` option) -> ``["eakd_gsm8k", "eakd_demo_icl"]``."""
    return [t.strip() for t in text.split(",") if t.strip()]
