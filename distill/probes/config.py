"""What the EA probes measure, and how much of it (torch-free: validating a config imports no model code).

Defaults come from a measurement of the bundled 135M teacher (``bench/ea_transfer.py --measure``, numbers in
docs/abilities.md): the ICL families where its few-shot accuracy clearly beats zero-shot, the CoT families
where thinking step by step beats answering directly, and control tasks it answers zero-shot already.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from distill.config import StageConfig

DEFAULT_ICL = ["review_gb", "animal_plant", "larger", "smaller", "successor", "first_letter"]
DEFAULT_CONTROLS = ["continent", "capital"]
DEFAULT_COT = ["sum3"]


class ProbesConfig(StageConfig):
    """Held-out ability probes run for the teacher, the student's base and the student (``evaluate.probes``)."""

    icl_tasks: list[str] = Field(default_factory=lambda: list(DEFAULT_ICL),
                                 description="ICL probe families (distill/probes/families.py): 0-shot vs k-shot")
    controls: list[str] = Field(default_factory=lambda: list(DEFAULT_CONTROLS),
                                description="negative-control families, asked 0-shot: a drop below the base is flagged")
    cot_tasks: list[str] = Field(default_factory=lambda: list(DEFAULT_COT),
                                 description="CoT probe families: direct answer vs the CoT prompt")
    task_file: str | None = Field(None, description="user tasks (generate.tasks format): their held_out items become ICL "
                                                    "probes, with k-shot demos from their examples")
    per_task: int = Field(8, ge=1, le=1000, description="held-out items per task family")
    pool_per_task: int = Field(8, ge=1, le=1000, description="items per family reserved as the k-shot demo pool")
    shots: int = Field(4, ge=0, le=32, description="ICL: demonstrations in the k-shot prompt (0: zero-shot only)")
    if_items: int = Field(16, ge=0, le=5000, description="verifiable-instruction prompts generated here (0: no IF probe)")
    if_file: str | None = Field(None, description="your own verifiable-instruction items (JSONL; distill/probes/ifeval.py)")
    seed: int = Field(1234, description="item sampler seed; items whose input appears in the training data are skipped")
    max_new_tokens: int = Field(24, ge=1, le=512, description="ICL, direct and control answers (the first line is graded)")
    cot_max_new_tokens: int = Field(160, ge=16, le=4096, description="CoT answers (rationale + 'The answer is ...')")
    if_max_new_tokens: int = Field(160, ge=16, le=4096, description="IF responses")
    teacher: bool = Field(True, description="also probe the teacher (the reference for the gap closed)")
    tolerance: float = Field(0.05, ge=0.0, le=1.0, description="a student more than this below its base is flagged "
                                                                 "as negative transfer")

    @field_validator("icl_tasks", "controls", "cot_tasks")
    @classmethod
    def _known(cls, names: list[str], info) -> list[str]:
        from distill.probes.families import FAMILIES

        want = "cot" if info.field_name == "cot_tasks" else "icl"
        for n in names:
            if n not in FAMILIES:
                raise ValueError(f"unknown task family {n!r}; choose from {', '.join(FAMILIES)}")
            if FAMILIES[n].ability != want:
                raise ValueError(f"{n!r} is a {FAMILIES[n].ability} family; {info.field_name} takes {want} families")
        return names
