"""The train stage's configs: LoRA, logit KD, and the run (torch-free: validating a YAML loads no model code).

:func:`distill.train.run.train_student` takes a :class:`TrainConfig`; field help says what each knob does and a
sensible value. Run: ``python -c "from distill.train.config import TrainConfig; print(TrainConfig())"``.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from distill.config import StageConfig


class LoraConfig(StageConfig):
    enabled: bool = Field(True, description="LoRA adapters (peft); false = full fine-tuning")
    r: int = Field(16, ge=1, le=1024, description="adapter rank")
    alpha: int = Field(32, ge=1, description="adapter scale numerator (scale = alpha / r)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the adapter input")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="module names that get adapters")
    save_adapter: bool = Field(False, description="also save the unmerged adapter as a peft folder `adapter/` in the "
                               "student (vLLM serves it over the base with --enable-lora --lora-modules NAME=student/adapter)")


ONLINE_ONLY = ("generalized_jsd", "total_variation", "skew_forward_kl", "skew_reverse_kl")


class KDConfig(StageConfig):
    enabled: bool = Field(False, description="logit KD: offline from the dataset's cached teacher top-k logprobs, or online with kd.teacher")
    method: Literal["forward_kl", "reverse_kl", "generalized_jsd", "total_variation", "skew_forward_kl",
                    "skew_reverse_kl"] = Field("forward_kl", description="divergence (offline top-k: forward_kl or reverse_kl on the top-k + tail buckets; online: any of distill.train.losses)")
    alpha_ce: float = Field(0.5, ge=0.0, le=1.0, description="loss = (1 - alpha_ce) * KD + alpha_ce * CE on the teacher's tokens")
    temperature: float = Field(1.0, gt=0.0, le=20.0, description="softening of both distributions (T^2-scaled)")
    teacher: str | None = Field(None, description="online logit KD: the teacher model (a folder or 'bundled', same tokenizer as the student) run in eval/no-grad beside the student, full-vocabulary loss; or a vLLM server's URL (http://127.0.0.1:8000/v1, same tokenizer) that scores each batch with its prompt_logprobs top-k (forward_kl/reverse_kl on the top-k + tail, as offline); null: offline top-k from the dataset")
    served_top_k: int = Field(20, ge=1, le=1000, description="served teacher (kd.teacher is a URL): top-k logprobs per position asked of the server (vLLM's prompt_logprobs; its --max-logprobs, default 20, must be >= k)")
    served_api_key_env: str = Field("OPENAI_API_KEY", description="served teacher: name of the env var (or secrets-file entry) holding the server's API key, if it wants one (never the key)")
    served_cache_path: str | None = Field(None, description="served teacher: SQLite cache of the server's scores (null: $EAKD_HOME/cache/teacher.sqlite), so a resumed run does not ask again")
    teacher_dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="online KD: the teacher's weights (bfloat16 halves its memory; auto: the student's compute dtype)")
    chunk_size: int | None = Field(256, ge=1, description="online KD: positions per chunk of the loss, so [positions x vocab] fp32 intermediates stay small (null: all at once)")
    on_policy: float = Field(0.0, ge=0.0, le=1.0, description="GKD's lambda: the share of micro-batches whose answers the student samples itself, scored by the online teacher (needs kd.teacher)")
    on_policy_max_new_tokens: int = Field(64, ge=1, le=4096, description="on-policy: tokens the student samples per answer")
    on_policy_temperature: float = Field(1.0, gt=0.0, le=10.0, description="on-policy: the student's sampling temperature")
    cross_tokenizer: Literal["aligned", "uld", "off"] = Field("aligned", description="offline KD when the student's tokenizer is not the teacher's (needs the dataset's byte-level top-k): aligned = likelihood matching over shared byte chunks + top-k where a chunk is one token on both sides; uld = sorted top-k Wasserstein (ULD); off = refuse")
    beta: float = Field(0.5, gt=0.0, lt=1.0, description="generalized_jsd: the mixture weight")
    skew: float = Field(0.1, gt=0.0, lt=1.0, description="skew_forward_kl/skew_reverse_kl: the skew alpha (DistiLLM)")

    @model_validator(mode="after")
    def _online_methods_need_a_teacher(self) -> KDConfig:
        if self.served() and urlsplit(self.teacher).username is not None:
            raise ValueError("the URL holds credentials (user:key@host), which would be written to the run's "
                             "train_config.yaml: drop them and put the key in the env var named by "
                             "kd.served_api_key_env")
        if self.enabled and self.served() and self.method in ONLINE_ONLY:
            raise ValueError(f"method {self.method!r} needs the teacher's full distribution, but a served teacher "
                             f"(kd.teacher is a URL) gives its top-{self.served_top_k} only: use forward_kl or reverse_kl")
        if self.enabled and self.teacher is None and self.method in ONLINE_ONLY:
            raise ValueError(f"method {self.method!r} needs the teacher's full distribution: set train.kd.teacher "
                             "(online KD), or use forward_kl/reverse_kl with the dataset's cached top-k")
        if self.enabled and self.teacher is None and self.on_policy > 0:
            raise ValueError("on_policy > 0 needs a teacher to score the student's own answers: set train.kd.teacher")
        return self

    def served(self) -> bool:
        """Whether the teacher is a server (a URL) rather than a model loaded beside the student."""
        return self.teacher is not None and self.teacher.startswith(("http://", "https://"))

    def method_kw(self) -> dict[str, float]:
        return {"generalized_jsd": {"beta": self.beta}, "skew_forward_kl": {"alpha": self.skew},
                "skew_reverse_kl": {"alpha": self.skew}}.get(self.method, {})


class TrainConfig(StageConfig):
    student: str = Field("bundled", description="base model folder, or 'bundled'")
    keep_layers: int | None = Field(None, ge=1, description="depth-prune the student to N evenly spaced layers")
    lora: LoraConfig = LoraConfig()
    kd: KDConfig = KDConfig()
    epochs: int = Field(1, ge=1, le=1000, description="passes over the train split")
    max_steps: int | None = Field(None, ge=1, description="stop after N optimizer steps (overrides epochs)")
    batch_size: int = Field(4, ge=1, description="sequences per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(2e-4, gt=0, lt=1, description="peak learning rate (linear warmup, cosine decay)")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="share of steps spent warming up")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_length: int = Field(512, ge=16, description="truncate sequences to this many tokens")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="matmul precision: bf16 autocast where the hardware has native bf16, else fp32")
    save_dtype: Literal["float32", "bfloat16"] = Field("bfloat16", description="dtype of the saved student")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available, else cpu")
    log_every: int = Field(5, ge=1, description="log one line every N steps")
    save_every: int | None = Field(None, ge=1, description="checkpoint every N steps; a rerun resumes from the last one")
    seed: int = Field(0, description="shuffling and init seed")
    rationale_multitask: bool = Field(False, description="Distilling step-by-step: every CoT row with a parsed answer trains two tasks, '[answer] question' -> the answer alone and '[explain] question' -> the teacher's rationale (sequence-level or online KD)")
    processes: int = Field(1, ge=1, le=1024, description="data-parallel processes: >1 hands training to `accelerate launch` (one GPU each; gloo on CPU), same global batch per step = batch_size x grad_accum x processes")
    born_again: int = Field(0, ge=0, le=16, description="Born-Again generations after the first: generation k trains the same student from the same start with online logit KD (kd.alpha_ce mixed with the CE) from generation k-1 instead of an external teacher; the last one is the result (see distill.train.born_again)")
