"""The generate stage's config: seeds or a task file, styles and templates, demos, sampling, filters, the hub.

Pydantic only (torch-free, no teacher client): :func:`distill.data.dataset.generate_dataset` runs it, and the card
(:mod:`distill.data.card`) and the template resolver (:mod:`distill.data.templates`) read its fields from here rather than
from the stage. Run: ``python -c "from distill.data.config import GenerateConfig; help(GenerateConfig)"``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from distill.answers import ExtractionConfig
from distill.config import StageConfig
from distill.data.demos import METHODS as DEMO_METHODS
from distill.data.replay import ReplayConfig
from distill.data.seeds import SeedFormat
from distill.data.selfinstruct import BootstrapConfig
from distill.data.synth import SynthesisConfig

Style = Literal["icl", "cot", "instruct"]
DATASET_FORMAT = "eakd-dataset/v1"


class SamplingConfig(StageConfig):
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy (reproducible)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
    max_tokens: int = Field(256, ge=1, le=32768, description="completion length cap; longer outputs are marked truncated")
    n: int = Field(1, ge=1, le=64, description="samples per prompt")
    seed: int | None = Field(0, description="sampling seed (None = engine's choice)")
    top_logprobs: int | None = Field(None, ge=1, le=100, description="store top-k teacher logprobs per token (for logit KD)")
    stop: list[str] = Field(default_factory=list, description="stop strings: generation ends before any of them")
    repetition_penalty: float = Field(
        1.0, gt=0.0, le=2.0,
        description="penalise tokens already generated (>1; 1.0 = off). A vLLM extension: sent as extra_body over HTTP, "
                    "which the OpenAI API itself rejects")


class SelfConsistencyConfig(StageConfig):
    enabled: bool = Field(False, description="majority vote over the sampling.n samples of each prompt of `styles` "
                                             "(needs n >= 2 and temperature > 0); the vote share goes into every row")
    styles: list[Style] = Field(default_factory=lambda: ["cot"], min_length=1,
                                description="the styles whose samples vote: cot on the extracted answer, icl (labels) and "
                                            "instruct on the normalised first line (instruct only for short answers)")
    keep: Literal["voted", "gold"] = Field("gold", description="keep the samples reaching the voted answer, or the gold "
                                                               "one where the seed has it (else the voted one)")


class LengthBounds(StageConfig):
    min_instruction_words: int | None = Field(None, ge=0)
    max_instruction_words: int | None = Field(None, ge=0)
    min_response_words: int | None = Field(1, ge=0)
    max_response_words: int | None = Field(None, ge=0)


class ContaminationConfig(StageConfig):
    eval_paths: list[str] = Field(..., min_length=1, description="eval sets: JSONL (question/instruction/input/text fields) or text files, one item per line")
    n: int = Field(13, ge=3, le=64, description="n-gram length (13 as GPT-3; 8 suits short math questions)")
    min_n: int = Field(8, ge=3, description="eval items shorter than n but at least this long match as a whole")
    action: Literal["report", "filter"] = Field("filter", description="report only, or also move contaminated rows to removed")

    @model_validator(mode="after")
    def _sizes(self) -> ContaminationConfig:
        if self.min_n > self.n:
            raise ValueError(f"min_n ({self.min_n}) must be <= n ({self.n})")
        return self


class JudgeConfig(StageConfig):
    template: str = Field("judge", description="judge template (shipped name or .jinja path); sees `instruction` and `response`")
    min_score: int = Field(3, ge=1, le=5, description="rows scored below this are removed (action: filter)")
    action: Literal["report", "filter"] = Field("filter", description="only record the scores, or also remove low-scored rows")
    max_tokens: int = Field(256, ge=8, le=4096, description="completion cap of a verdict (the reason is capped at 300 characters)")


class FiltersConfig(StageConfig):
    length: LengthBounds | None = Field(None, description="word-count bounds on the prompt's last user turn and the response")
    format: bool = Field(False, description="Self-Instruct format heuristics + refusal/disclaimer responses")
    blocklist: list[str] = Field(default_factory=list, description="whole-word, case-insensitive words/phrases")
    contamination: ContaminationConfig | None = None
    judge: JudgeConfig | None = Field(None, description="LLM-as-judge: the teacher scores each surviving row 1-5 (JSON, structured outputs)")


class HubConfig(StageConfig):
    repo_id: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", description="owner/name on the Hugging Face Hub")
    token_env: str = Field("HF_TOKEN", description="name of the env var holding a write token (never the token)")
    private: bool = Field(True, description="create the dataset repo private")


class GenerateConfig(StageConfig):
    seeds: str | None = Field(None, description="seed tasks: a JSONL file or a saved HF dataset folder (this or tasks)")
    tasks: str | None = Field(None, description="a task file (YAML/JSONL: per task an instruction, labelled examples used "
                              "only as demos, unlabelled inputs, held-out items, how many inputs to synthesize; "
                              "distill.data.tasks, docs/tasks.md) instead of seeds")
    synthesis: SynthesisConfig = Field(default_factory=SynthesisConfig, description="tasks: how the teacher writes the "
                                       "new inputs a task's `synthesize` asks for (distill.data.synth)")
    seed_format: SeedFormat = Field("auto", description="eakd | gsm8k | self_instruct | auto (from the first row)")
    limit: int | None = Field(None, ge=1, description="use only the first N seeds")
    styles: list[Style] = Field(default_factory=lambda: ["icl", "cot", "instruct"], min_length=1)
    templates: dict[Style, str] = Field(default_factory=dict, description="per-style template: shipped name or .jinja path")
    num_demos: int = Field(3, ge=1, le=64, description="ICL: demonstrations per prompt")
    demo_method: Literal[DEMO_METHODS] = Field("random", description="ICL/CoT demos: random | stratified (across tasks) | bm25 (nearest neighbours)")
    demo_same_task: bool = Field(True, description="random/bm25: draw demos only from seeds of the same task")
    demo_budget_tokens: int | None = Field(None, ge=0, description="most (estimated, chars/4) tokens spent on demos per prompt")
    demo_seed: int = Field(0, description="ICL: seed of the demonstration sampler")
    erase_demos: bool = Field(False, description="ICL context distillation: the student sees the prompt without demos")
    demo_format: Literal["text", "chat"] = Field("text", description="ICL: demos inside one user message (text: the icl template) or as past "
                                                 "user/assistant turns before the question (chat: the instruct template's rendering of each demo "
                                                 "input, then its answer; what small chat models follow best)")
    cot_shots: int = Field(0, ge=0, le=32, description="CoT: worked examples (seeds with a rationale); 0 = zero-shot CoT")
    structured_cot: bool = Field(False, description="CoT: ask for JSON {rationale, answer} (structured outputs) instead of parsing "
                                 "free text; the student learns the rationale followed by 'The answer is <answer>.'")
    extraction: ExtractionConfig = ExtractionConfig()
    self_consistency: SelfConsistencyConfig = SelfConsistencyConfig()
    drop_truncated: bool = Field(True, description="move finish_reason=length rows to the removed split")
    require_gold_match: bool = Field(False, description="move rows whose answer disagrees with the gold answer to removed")
    filters: FiltersConfig = FiltersConfig()
    bootstrap: BootstrapConfig | None = Field(None, description="IF: grow the instruction pool Self-Instruct style first")
    validation_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="share of seeds held out (split by seed id)")
    sampling: SamplingConfig = SamplingConfig()
    replay: ReplayConfig | None = Field(None, description="general instructions the teacher answers zero-shot, mixed "
                                                          "into the train split (distill/data/replay.py): against a narrowly "
                                                          "trained student's negative transfer")
    sampling_per_style: dict[Style, SamplingConfig] = Field(
        default_factory=dict, description="replaces `sampling` for one style, e.g. {cot: {max_tokens: 160}} beside icl "
                                          "answers cut at their first line ({stop: ['\\n']})")
    push_to_hub: HubConfig | None = Field(None, description="also upload the finished dataset (off by default; never required)")

    @model_validator(mode="after")
    def _consistent(self) -> GenerateConfig:
        if (self.seeds is None) == (self.tasks is None):
            raise ValueError("set exactly one of generate.seeds (a seed file) and generate.tasks (a task file), got "
                             + ("both" if self.seeds else "neither"))
        if self.tasks is not None:
            # knobs of seed files that a task file decides itself: an error, not a silent no-op
            owned = {"limit": "list fewer inputs in the task file", "seed_format": "a task file has one format",
                     "validation_fraction": "held_out items are the validation split, inputs the train split",
                     "demo_method": "each input's demos are drawn at random from its task's examples",
                     "cot_shots": "task examples have no rationales; use zero-shot cot"}
            for name, why in owned.items():
                if name in self.model_fields_set and getattr(self, name) != type(self).model_fields[name].default:
                    raise ValueError(f"generate.{name} does not apply to generate.tasks ({why}); remove it")
        elif "synthesis" in self.model_fields_set and self.synthesis != SynthesisConfig():  # a dumped config's default: fine
            raise ValueError("generate.synthesis writes inputs for a task file's tasks; set generate.tasks or remove it")
        sc = self.self_consistency
        for style in sc.styles if sc.enabled else []:
            if style not in self.styles:
                raise ValueError(f"self_consistency.styles: {style} is not in generate.styles {self.styles}; add it there "
                                 "or list only generated styles in self_consistency.styles")
            s = self.sampling_per_style.get(style, self.sampling)
            if s.n < 2 or s.temperature == 0:
                where = f"sampling_per_style.{style}" if style in self.sampling_per_style else "sampling"
                raise ValueError(f"self_consistency.enabled needs sampling.n >= 2 and temperature > 0 for the {style} "
                                 f"samples to vote over (got n={s.n}, temperature={s.temperature}); set {where}.n and "
                                 f"{where}.temperature, or remove {style} from self_consistency.styles")
        if self.bootstrap is not None and "instruct" not in self.styles:
            raise ValueError("bootstrap makes instructions for the instruct style; add instruct to generate.styles")
        return self
