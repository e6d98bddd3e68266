"""The compress stage's configs: one typed step class per method, the calibration text, the evaluation protocol, the chain.

A step is a pydantic discriminated union on ``method`` (:data:`Step`): each method is one small class (``GptqStep``,
``WandaStep``, ...) built from a few field groups on :class:`StepBase` (method, name, quality gates): quantization
(:class:`QuantFields`), pruning (:class:`PruneFields`, :class:`OwlFields`), budgets (:class:`BudgetFields`,
:class:`RankBudgetFields`), KD steps (:class:`TrainFields`, :class:`RecoveryFields`), :class:`DampFields`. A field
of another method is an error naming the field, the method and its fields (a value equal to the old flat step's
default, which every dumped ``config.yaml`` holds, is dropped: it never had an effect). What the stage asks of a
method is a class trait (``calibrated``, ``structured``, ``trained``) or its field group; the method-name sets
(:data:`QUANT`, :data:`CALIBRATED`, ...) are derived from the classes, once. A new method is one class here (one
line in :data:`Step`) plus its function in :mod:`compress.methods`'s dispatch table. :func:`CompressStep` builds
the class of ``method`` from keyword fields, as the one flat step class did.

Pydantic only, no compression code: :mod:`compress.stage` runs them and :mod:`compress.eval` measures with
:class:`EvalConfig`, both importing this module rather than each other.

Run: ``python -c "from compress.config import CompressStep; print(CompressStep(method='gptq', bits=4))"``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import Field, TypeAdapter, ValidationError, WrapValidator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from distill.config import ConfigError, StageConfig
from distill.probes.config import ProbesConfig

STORAGE_DTYPES = ("float32", "bfloat16", "float16")


# --- field groups ------------------------------------------------------------------------------------------

class StepBase(StageConfig):
    """What every step has: its method, a name and the quality gates; and the traits the stage reads."""

    calibrated: ClassVar[bool] = False  # reads calibration windows (compress.calib_data)
    reads_gram: ClassVar[bool] = True  # a calibrated method reads each linear's input Gram (False: per-channel sums)
    structured: ClassVar[bool] = False  # changes the architecture: must come before anything recorded by name
    trained: ClassVar[bool] = False  # trains inside the method, the pre-compression model teaching (recover_steps = its steps)

    method: str
    max_ppl_increase: float | None = Field(None, gt=0.0, description="quality gate: stop the chain when perplexity rises more than this fraction over the baseline (0.05 = 5%)")
    min_accuracy: float | None = Field(None, ge=0.0, le=1.0, description="quality gate: stop the chain when task accuracy on the held-out questions falls below this fraction (needs compress.eval task accuracy)")
    name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _own_fields(cls, data: Any) -> Any:
        """Refuse a field of another method (or none), naming it, this method and the fields this method has."""
        if not isinstance(data, dict):
            return data
        kept, errors = {}, []
        for key, value in data.items():
            if key in cls.model_fields:
                kept[key] = value
            elif not (key in _FLAT_DEFAULTS and value == _FLAT_DEFAULTS[key]):  # a dumped flat step's default: no effect
                errors.append(InitErrorDetails(type=PydanticCustomError("step_field", _foreign_field(cls, key)),
                                               loc=(key,), input=value))
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return kept

    def params(self) -> dict[str, Any]:
        """The fields that matter for this step's method (recorded in the manifest and the summary)."""
        raise NotImplementedError


class QuantFields(StepBase):
    """Grouped weight quantization (rtn/gptq/awq/qat/qaf): must end a chain (see compress/plan.py _check_order)."""

    bits: int = Field(4, ge=2, le=8, description="rtn/gptq/awq/qat/qaf: weight bits")
    group_size: int | None = Field(128, ge=1, description="rtn/gptq/awq/qat/qaf: input columns per scale (None: per output channel)")
    symmetric: bool = Field(True, description="rtn/gptq/awq/qat/qaf: symmetric codes (no zero point)")
    entropy_coding: Literal["none", "zstd"] = Field("none", description="rtn/gptq/awq/qat/qaf: store the codes fixed-width (none) or entropy-coded with Zstandard (zstd: fewer bytes, decoded at load; see compress.entropy)")

    def params(self) -> dict[str, Any]:
        quant: dict[str, Any] = {"bits": self.bits, "group_size": self.group_size, "symmetric": self.symmetric}
        if self.entropy_coding != "none":
            quant["entropy_coding"] = self.entropy_coding
        return quant


class PruneFields(StepBase):
    """Weights zeroed (magnitude/wanda/sparsegpt); recovery keeps their zeros (compress.recover.zero_masks)."""

    sparsity: float = Field(0.5, ge=0.0, lt=1.0, description="magnitude/wanda/sparsegpt: fraction of weights zeroed per layer")
    nm: str | None = Field(None, pattern=r"^\d+:\d+$", description="magnitude/wanda/sparsegpt: semi-structured N:M, e.g. '2:4' (overrides sparsity)")

    def nm_tuple(self) -> tuple[int, int] | None:
        if self.nm is None:
            return None
        n, m = (int(x) for x in self.nm.split(":"))
        if not 0 < n < m:
            raise ConfigError(f"compress step {self.method}: nm must be N:M with 0 < N < M, got {self.nm!r}")
        return n, m

    def params(self) -> dict[str, Any]:
        return {"sparsity": self.sparsity, "nm": self.nm}


class OwlFields(PruneFields):
    """Pruning by activation-aware scores (wanda/sparsegpt), which OWL can allocate per block."""

    allocation: Literal["uniform", "owl"] = Field("uniform", description="wanda/sparsegpt: the same sparsity in every block (uniform) or OWL's per-block sparsity from outlier ratios, same global budget (owl; unstructured only)")
    owl_lambda: float = Field(0.08, ge=0.0, lt=0.5, description="owl: block sparsities stay within sparsity +- owl_lambda")
    owl_m: float = Field(5.0, gt=1.0, description="owl: a Wanda score is an outlier above owl_m times its layer's mean")

    def params(self) -> dict[str, Any]:
        owl = {"allocation": "owl", "owl_lambda": self.owl_lambda, "owl_m": self.owl_m} if self.allocation == "owl" else {}
        return super().params() | owl


class DampFields(StepBase):
    """Hessian-based methods (gptq/sparsegpt)."""

    damp: float = Field(0.01, ge=0.0, description="gptq/sparsegpt: Hessian dampening as a fraction of its mean diagonal")


class BudgetFields(StepBase):
    """A parameter budget removed from the decoder linears (svd/asvd/svdllm/cp/tucker)."""

    param_reduction: float = Field(0.2, gt=0.0, lt=1.0, description="svd (without rank_ratio)/asvd/svdllm: fraction of decoder-linear weights removed, ranks allocated per layer; cp/tucker: the fraction each decoder linear loses")

    def params(self) -> dict[str, Any]:
        return {"param_reduction": self.param_reduction}


class RankBudgetFields(BudgetFields):
    """Low-rank factorization whose budget is split over the layers (svd without rank_ratio/asvd/svdllm)."""

    rank_allocation: Literal["auto", "fisher", "energy", "uniform", "per_layer"] = Field("auto", description="svd (without rank_ratio)/asvd/svdllm: how the budget is split over layers: by measured sensitivity (fisher: Fisher-weighted output loss per dropped component; energy: kept spectral energy), one rank ratio for all (uniform), or the same kept share per layer (per_layer); auto: fisher with calibration data, else energy (see compress.factorize)")

    def params(self) -> dict[str, Any]:
        return super().params() | ({"rank_allocation": self.rank_allocation} if self.rank_allocation != "auto" else {})


class TrainFields(StepBase):
    """KD steps from the pre-compression model: recovery after the method, or the method's own training (qat/qaf)."""

    recover_steps: int = Field(0, ge=0, description="depth/width/svd/asvd/svdllm/cp/tucker: KD steps from the pre-compression model afterwards (Minitron-style recovery); magnitude/wanda/sparsegpt: the same, keeping the pruned zeros (masked); qat/qaf: the quantization-aware training steps (required)")
    recover_lr: float = Field(1e-4, gt=0.0, description="recovery: AdamW peak learning rate")


class RecoveryFields(TrainFields):
    """Recovery distillation after a pruning/factorization step (compress.recover), with its feature terms."""

    recover_hint_weight: float = Field(0.0, ge=0.0, description="recovery: weight of the FitNets hint term (each kept block's output regresses on its source block's, through a learned projection; see compress.recover)")
    recover_attention_weight: float = Field(0.0, ge=0.0, description="recovery: weight of the TinyBERT attention-map term (runs eager attention)")
    recover_adversarial_weight: float = Field(0.0, ge=0.0, description="recovery: weight of the adversarial term (a discriminator on the final hidden states learns teacher vs student; the student learns to fool it; see compress.recover)")


# --- one class per method ----------------------------------------------------------------------------------

class RtnInt8Step(StepBase):
    """int8 per-channel round-to-nearest weights (compress.quantize)."""

    method: Literal["rtn_int8"] = "rtn_int8"

    def params(self) -> dict[str, Any]:
        return {"bits": 8}


class RtnStep(QuantFields):
    """Grouped round-to-nearest, no calibration (compress.quantize)."""

    method: Literal["rtn"] = "rtn"


class GptqStep(DampFields, QuantFields):
    """GPTQ: quantization with second-order error compensation (compress.gptq)."""

    calibrated: ClassVar[bool] = True
    method: Literal["gptq"] = "gptq"
    act_order: bool | Literal["auto"] = Field("auto", description="gptq: quantize columns in order of decreasing Hessian diagonal (true), in their order (false), or per layer whichever gives the lower output error (auto)")

    def params(self) -> dict[str, Any]:
        return QuantFields.params(self) | {"damp": self.damp, "act_order": self.act_order}


class AwqStep(QuantFields):
    """AWQ: activation-aware scales before round-to-nearest (compress.awq)."""

    calibrated: ClassVar[bool] = True
    method: Literal["awq"] = "awq"


class QatStep(TrainFields, QuantFields):
    """Quantization-aware training through the fake quantizer, the pre-compression model teaching (compress.qat)."""

    calibrated: ClassVar[bool] = True
    trained: ClassVar[bool] = True
    method: Literal["qat"] = "qat"

    def params(self) -> dict[str, Any]:
        return QuantFields.params(self) | {"steps": self.recover_steps, "lr": self.recover_lr}


class QafStep(TrainFields, QuantFields):
    """Quantization-aware fine-tuning: LoRA adapters beside the frozen quantized base (compress.qaf)."""

    calibrated: ClassVar[bool] = True
    trained: ClassVar[bool] = True
    method: Literal["qaf"] = "qaf"
    lora_rank: int = Field(16, ge=1, description="qaf: rank of the adapters trained beside the frozen quantized base")
    loftq_iters: int = Field(1, ge=0, le=20, description="qaf: LoftQ alternations that start the adapters from the quantization error (0: QLoRA's zero start)")

    def params(self) -> dict[str, Any]:
        return QuantFields.params(self) | {"steps": self.recover_steps, "lr": self.recover_lr,
                                           "lora_rank": self.lora_rank, "loftq_iters": self.loftq_iters}


class MagnitudeStep(RecoveryFields, PruneFields):
    """Magnitude pruning, unstructured or N:M (compress.prune)."""

    method: Literal["magnitude"] = "magnitude"


class WandaStep(RecoveryFields, OwlFields):
    """Wanda: |W| x ||X|| per output row (compress.prune)."""

    calibrated: ClassVar[bool] = True
    reads_gram: ClassVar[bool] = False  # ||X_j||^2 alone
    method: Literal["wanda"] = "wanda"


class SparseGptStep(RecoveryFields, DampFields, OwlFields):
    """SparseGPT: pruning with second-order weight updates (compress.sparsegpt)."""

    calibrated: ClassVar[bool] = True
    method: Literal["sparsegpt"] = "sparsegpt"

    def params(self) -> dict[str, Any]:
        return OwlFields.params(self) | {"damp": self.damp}


class DepthStep(RecoveryFields):
    """Whole decoder blocks dropped by angular distance (compress.structured)."""

    calibrated: ClassVar[bool] = True
    structured: ClassVar[bool] = True
    method: Literal["depth"] = "depth"
    fraction: float = Field(0.25, ge=0.0, lt=1.0, description="depth: fraction of decoder blocks dropped")

    def params(self) -> dict[str, Any]:
        return {"fraction": self.fraction}


class WidthStep(RecoveryFields):
    """MLP channels and KV-head groups removed by activation importance (compress.structured)."""

    calibrated: ClassVar[bool] = True
    structured: ClassVar[bool] = True
    method: Literal["width"] = "width"
    mlp_fraction: float = Field(0.25, ge=0.0, lt=1.0, description="width: fraction of MLP channels removed")
    kv_head_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="width: fraction of KV-head groups removed")

    def params(self) -> dict[str, Any]:
        return {"mlp_fraction": self.mlp_fraction, "kv_head_fraction": self.kv_head_fraction}


class SvdStep(RecoveryFields, RankBudgetFields):
    """Truncated SVD: one rank ratio for every layer, or a param_reduction budget (compress.factorize)."""

    method: Literal["svd"] = "svd"
    rank_ratio: float | None = Field(None, gt=0.0, le=1.0, description="svd: kept rank / min(out, in), the same for every layer (None: use param_reduction)")

    def params(self) -> dict[str, Any]:
        return {"rank_ratio": self.rank_ratio} if self.rank_ratio is not None else RankBudgetFields.params(self)


class AsvdStep(RecoveryFields, RankBudgetFields):
    """ASVD: activation-scaled SVD (compress.lowrank_aware)."""

    calibrated: ClassVar[bool] = True
    method: Literal["asvd"] = "asvd"


class SvdllmStep(RecoveryFields, RankBudgetFields):
    """SVD-LLM: SVD after whitening by the input covariance (compress.lowrank_aware)."""

    calibrated: ClassVar[bool] = True
    method: Literal["svdllm"] = "svdllm"


class CpStep(RecoveryFields, BudgetFields):
    """CP decomposition of each decoder linear reshaped to a 4-way tensor (compress.tensorized)."""

    method: Literal["cp"] = "cp"


class TuckerStep(RecoveryFields, BudgetFields):
    """Tucker decomposition of each decoder linear reshaped to a 4-way tensor (compress.tensorized)."""

    method: Literal["tucker"] = "tucker"


def _untagged(value: Any, handler: Any) -> Any:
    """Validate through the union, naming errors as the flat step did: ``steps.0.sparsity``, not
    ``steps.0.gptq.sparsity``, and an unknown or missing method as ``steps.0.method``."""
    try:
        return handler(value)
    except ValidationError as err:
        tag = value.get("method") if isinstance(value, dict) else None
        errors = []
        for e in err.errors():
            loc = e["loc"]
            if e["type"] in ("union_tag_invalid", "union_tag_not_found"):  # no method, or none of ours
                kind, msg = ("missing", "Field required") if tag is None else ("step_method", "unknown method")
                errors.append(InitErrorDetails(type=PydanticCustomError(kind, f"{msg}: one of {', '.join(METHODS)}"),
                                               loc=("method",), input=tag))
            else:
                errors.append(InitErrorDetails(type=PydanticCustomError(e["type"], e["msg"]),
                                               loc=loc[1:] if loc and loc[0] == tag else loc, input=e["input"]))
        raise ValidationError.from_exception_data("Step", errors) from None


# One compress step: the class of its ``method``. A new method adds its class here.
Step = Annotated[RtnInt8Step | RtnStep | GptqStep | AwqStep | QatStep | QafStep | MagnitudeStep | WandaStep
                 | SparseGptStep | DepthStep | WidthStep | SvdStep | AsvdStep | SvdllmStep | CpStep | TuckerStep,
                 Field(discriminator="method"), WrapValidator(_untagged)]

STEP_CLASSES: dict[str, type[StepBase]] = {c.model_fields["method"].default: c for c in get_args(get_args(Step)[0])}
METHODS = tuple(STEP_CLASSES)


def _methods(has: Any) -> frozenset[str]:
    return frozenset(m for m, c in STEP_CLASSES.items() if has(c))


# the method-name sets the stage's rules read, derived from the classes (their field groups and traits)
QUANT = _methods(lambda c: issubclass(c, QuantFields))  # grouped weight quantization: must end a chain
STRUCTURED = _methods(lambda c: c.structured)  # change the architecture: must come before anything recorded by name
CALIBRATED = _methods(lambda c: c.calibrated)
SPARSIFYING = _methods(lambda c: issubclass(c, PruneFields))  # recovery keeps their zeros (compress.recover.zero_masks)
RECOVERABLE = _methods(lambda c: issubclass(c, RecoveryFields))  # recovery distillation may follow them
TRAINED = _methods(lambda c: c.trained)  # train inside the method (recover_steps = its steps)

# every field's default in the one flat step this union replaced (what a dumped config.yaml holds for every step)
_FLAT_DEFAULTS = {k: f.default for c in STEP_CLASSES.values() for k, f in c.model_fields.items() if k != "method"}
_OWNERS = {k: [m for m, c in STEP_CLASSES.items() if k in c.model_fields] for k in _FLAT_DEFAULTS}


def _foreign_field(cls: type[StepBase], key: str) -> str:
    method = cls.model_fields["method"].default
    common = [k for k in StepBase.model_fields if k != "method"]
    own = [k for k in cls.model_fields if k not in common and k != "method"] + common
    fix = f"it belongs to {', '.join(_OWNERS[key])}" if key in _OWNERS else "or check the spelling"
    return f"{method} has no field {key!r}; remove it ({fix}); fields of {method}: {', '.join(own)}"


def recover_steps(step: StepBase) -> int:
    """The KD steps ``step`` trains (recovery, or qat/qaf's own training); 0 for a method without them."""
    return step.recover_steps if isinstance(step, TrainFields) else 0


_ONE_STEP = TypeAdapter(list[Step])


def CompressStep(**fields: Any) -> Step:  # noqa: N802 - the name a step has always been built with
    """The step class of ``fields["method"]`` from keyword fields: ``CompressStep(method="gptq", bits=4)`` is a
    :class:`GptqStep`. Raises ConfigError naming each bad field as in a one-step list (``steps[0].sparsity: gptq
    has no field 'sparsity' ...``)."""
    try:
        return _ONE_STEP.validate_python([fields])[0]
    except ValidationError as err:
        lines = []
        for e in err.errors():
            where = "steps" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"])
            lines.append(f"{where}: {e['msg']}" + (f" (got {e['input']!r})" if e["type"] != "missing" else ""))
        raise ConfigError("\n".join(lines)) from None


class CalibrationConfig(StageConfig):
    """Calibration text for the data-aware methods (gptq, awq, wanda, sparsegpt, depth, width, asvd, svdllm)."""

    # None: WikiText-2 valid from ../shared/data when present, else the caller's text (the flow passes
    # the generated dataset's training answers). Never the perplexity text: that would tune on the test.
    text_path: str | None = None
    data: Literal["text", "dataset", "mix"] = Field(
        "text", description="what the windows are cut from: text (text_path / WikiText-2 / the caller's text), "
                            "dataset (the training conversations of an eakd dataset, rendered with the student's "
                            "chat template: what the student reads when it answers), or mix (half of each)")
    dataset: str | None = Field(None, description="data: dataset/mix: the eakd dataset folder; null: the pipeline's "
                                                  "generated dataset (`eakd compress`: --dataset)")
    n_samples: int = Field(64, ge=1, description="random windows drawn from the text")
    seq_len: int = Field(512, ge=8, description="tokens per window")
    seed: int = 0


class EvalConfig(StageConfig):
    """Perplexity protocol (see :mod:`distill.evaluate`); ``max_windows: null`` is the full protocol."""

    text_path: str | None = None  # None: the caller passes the text
    window: int = Field(512, ge=2)
    max_windows: int | None = Field(16, ge=1)
    # auto: bf16 where the hardware computes it natively, else fp32 (see distill.models.resolve_dtype)
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # task accuracy: greedy answers to the validation prompts (with a gold answer) of an eakd dataset
    tasks_dataset: str | None = Field(None, description="eakd dataset folder whose validation split holds the held-out questions; null: the pipeline's generated dataset (`eakd compress`: none)")
    max_examples: int = Field(16, ge=0, description="held-out questions answered per model (0: no task accuracy)")
    max_new_tokens: int = Field(256, ge=1, le=8192, description="greedy generation budget per answer")
    batch_size: int = Field(8, ge=1, description="prompts per generation batch")
    probes: ProbesConfig | None = Field(None, description="EA probes (distill/probes/) on every model: per-ability scores "
                                                          "and the share of the source's each step keeps (no teacher)")
    latency: bool = Field(True, description="time greedy decoding (one stream and a batch) of every model")
    latency_prompt_tokens: int = Field(128, ge=1, description="latency: prompt length (the eval text's first tokens)")
    latency_new_tokens: int = Field(32, ge=2, description="latency: tokens generated per stream")
    latency_batch: int = Field(8, ge=1, description="latency: streams decoded together for the batched figure")
    latency_repeats: int = Field(3, ge=1, description="latency: timed repeats (the median is reported)")


def _default_steps() -> list[Step]:
    # svd -> magnitude -> rtn_int8, so every step's effect survives to the end: SVD after pruning would
    # refill the zeros (its factors are dense), and pruning after int8 would have to re-quantize.
    # rank_ratio 0.6 factorizes only the rectangular layers (for SmolLM2-135M: MLP 1536x576 and k/v
    # 192x576, each ~17-20% fewer weights); a square layer saves weights only below 0.5, which plain
    # truncated SVD (no fine-tuning) pays for with a large perplexity increase. Sparsity 0.3 is where
    # one-shot magnitude pruning of small LLMs stays close to the dense model.
    return [SvdStep(rank_ratio=0.6), MagnitudeStep(sparsity=0.3), RtnInt8Step()]


class CompressConfig(StageConfig):
    steps: list[Step] = Field(default_factory=_default_steps)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    # Storage dtype of the non-int8 tensors; "auto" keeps the source model's (bf16 for the bundled teacher),
    # so byte counts compare with the baseline instead of doubling from the fp32 working copy.
    save_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # true: each step starts from the previous step's output (the deployable chain);
    # false: each step starts from the source model (the families compared side by side).
    chain: bool = True
    streaming: bool | Literal["auto"] = Field(
        "auto", description="read, compress and write the model one decoder block at a time, so memory grows with "
                            "one block, not the model (compress.streamed; rtn_int8/rtn/gptq/magnitude/wanda/sparsegpt, "
                            "the same artifact byte for byte; no task accuracy, probes or latency). auto: stream when "
                            "the whole-model path (about 2x the model's fp32 bytes) would exceed memory_budget_gb; "
                            "true: always (other methods fall back to the whole model, with a log line); false: never")
    memory_budget_gb: float | None = Field(
        None, gt=0.0, description="streaming auto: memory the whole-model path may use, GiB; null: MemAvailable at start")
