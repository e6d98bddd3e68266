"""The compress stage's configs: one step per method, the calibration text, the evaluation protocol, the chain.

Pydantic only, no compression code: :mod:`compress.stage` runs them and :mod:`compress.eval` measures with
:class:`EvalConfig`, both importing this module rather than each other.

Run: ``python -c "from compress.config import CompressConfig; print(CompressConfig())"``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from distill.config import ConfigError, StageConfig
from distill.probes.config import ProbesConfig

Method = Literal["rtn_int8", "rtn", "gptq", "awq", "qat", "qaf", "magnitude", "wanda", "sparsegpt", "depth", "width",
                 "svd", "asvd", "svdllm", "cp", "tucker"]
STORAGE_DTYPES = ("float32", "bfloat16", "float16")
QUANT = {"rtn", "gptq", "awq", "qat", "qaf"}  # grouped weight quantization: must end a chain (see compress/plan.py _check_order)
STRUCTURED = {"depth", "width"}  # change the architecture: must come before anything recorded by name
CALIBRATED = {"gptq", "awq", "qat", "qaf", "wanda", "sparsegpt", "depth", "width", "asvd", "svdllm"}



class CompressStep(StageConfig):
    """One compression step. Only the fields of its own method are used (see ``params``)."""

    method: Method
    sparsity: float = Field(0.5, ge=0.0, lt=1.0, description="magnitude/wanda/sparsegpt: fraction of weights zeroed per layer")
    nm: str | None = Field(None, pattern=r"^\d+:\d+$", description="magnitude/wanda/sparsegpt: semi-structured N:M, e.g. '2:4' (overrides sparsity)")
    allocation: Literal["uniform", "owl"] = Field("uniform", description="wanda/sparsegpt: the same sparsity in every block (uniform) or OWL's per-block sparsity from outlier ratios, same global budget (owl; unstructured only)")
    owl_lambda: float = Field(0.08, ge=0.0, lt=0.5, description="owl: block sparsities stay within sparsity +- owl_lambda")
    owl_m: float = Field(5.0, gt=1.0, description="owl: a Wanda score is an outlier above owl_m times its layer's mean")
    rank_ratio: float | None = Field(None, gt=0.0, le=1.0, description="svd: kept rank / min(out, in), the same for every layer (None: use param_reduction)")
    param_reduction: float = Field(0.2, gt=0.0, lt=1.0, description="svd (without rank_ratio)/asvd/svdllm: fraction of decoder-linear weights removed, ranks allocated per layer; cp/tucker: the fraction each decoder linear loses")
    rank_allocation: Literal["auto", "fisher", "energy", "uniform", "per_layer"] = Field("auto", description="svd (without rank_ratio)/asvd/svdllm: how the budget is split over layers: by measured sensitivity (fisher: Fisher-weighted output loss per dropped component; energy: kept spectral energy), one rank ratio for all (uniform), or the same kept share per layer (per_layer); auto: fisher with calibration data, else energy (see compress.factorize)")
    bits: int = Field(4, ge=2, le=8, description="rtn/gptq/awq/qat/qaf: weight bits")
    group_size: int | None = Field(128, ge=1, description="rtn/gptq/awq/qat/qaf: input columns per scale (None: per output channel)")
    symmetric: bool = Field(True, description="rtn/gptq/awq/qat/qaf: symmetric codes (no zero point)")
    entropy_coding: Literal["none", "zstd"] = Field("none", description="rtn/gptq/awq/qat/qaf: store the codes fixed-width (none) or entropy-coded with Zstandard (zstd: fewer bytes, decoded at load; see compress.entropy)")
    lora_rank: int = Field(16, ge=1, description="qaf: rank of the adapters trained beside the frozen quantized base")
    loftq_iters: int = Field(1, ge=0, le=20, description="qaf: LoftQ alternations that start the adapters from the quantization error (0: QLoRA's zero start)")
    damp: float = Field(0.01, ge=0.0, description="gptq/sparsegpt: Hessian dampening as a fraction of its mean diagonal")
    act_order: bool | Literal["auto"] = Field("auto", description="gptq: quantize columns in order of decreasing Hessian diagonal (true), in their order (false), or per layer whichever gives the lower output error (auto)")
    fraction: float = Field(0.25, ge=0.0, lt=1.0, description="depth: fraction of decoder blocks dropped")
    mlp_fraction: float = Field(0.25, ge=0.0, lt=1.0, description="width: fraction of MLP channels removed")
    kv_head_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="width: fraction of KV-head groups removed")
    recover_steps: int = Field(0, ge=0, description="depth/width/svd/asvd/svdllm/cp/tucker: KD steps from the pre-compression model afterwards (Minitron-style recovery); magnitude/wanda/sparsegpt: the same, keeping the pruned zeros (masked); qat/qaf: the quantization-aware training steps (required)")
    recover_lr: float = Field(1e-4, gt=0.0, description="recovery: AdamW peak learning rate")
    recover_hint_weight: float = Field(0.0, ge=0.0, description="recovery: weight of the FitNets hint term (each kept block's output regresses on its source block's, through a learned projection; see compress.recover)")
    recover_attention_weight: float = Field(0.0, ge=0.0, description="recovery: weight of the TinyBERT attention-map term (runs eager attention)")
    recover_adversarial_weight: float = Field(0.0, ge=0.0, description="recovery: weight of the adversarial term (a discriminator on the final hidden states learns teacher vs student; the student learns to fool it; see compress.recover)")
    max_ppl_increase: float | None = Field(None, gt=0.0, description="quality gate: stop the chain when perplexity rises more than this fraction over the baseline (0.05 = 5%)")
    min_accuracy: float | None = Field(None, ge=0.0, le=1.0, description="quality gate: stop the chain when task accuracy on the held-out questions falls below this fraction (needs compress.eval task accuracy)")
    name: str | None = None

    def nm_tuple(self) -> tuple[int, int] | None:
        if self.nm is None:
            return None
        n, m = (int(x) for x in self.nm.split(":"))
        if not 0 < n < m:
            raise ConfigError(f"compress step {self.method}: nm must be N:M with 0 < N < M, got {self.nm!r}")
        return n, m

    def params(self) -> dict[str, Any]:
        """The fields that matter for this step's method."""
        quant = {"bits": self.bits, "group_size": self.group_size, "symmetric": self.symmetric}
        if self.entropy_coding != "none":
            quant["entropy_coding"] = self.entropy_coding
        prune = {"sparsity": self.sparsity, "nm": self.nm}
        aware = prune | ({"allocation": "owl", "owl_lambda": self.owl_lambda, "owl_m": self.owl_m}
                         if self.allocation == "owl" else {})
        lowrank = {"param_reduction": self.param_reduction} | (
            {"rank_allocation": self.rank_allocation} if self.rank_allocation != "auto" else {})
        return {"magnitude": prune, "wanda": aware, "sparsegpt": aware | {"damp": self.damp},
                "svd": {"rank_ratio": self.rank_ratio} if self.rank_ratio is not None else lowrank,
                "asvd": lowrank, "svdllm": lowrank, "cp": {"param_reduction": self.param_reduction},
                "tucker": {"param_reduction": self.param_reduction}, "rtn_int8": {"bits": 8},
                "rtn": quant, "gptq": quant | {"damp": self.damp, "act_order": self.act_order}, "awq": quant,
                "qat": quant | {"steps": self.recover_steps, "lr": self.recover_lr},
                "qaf": quant | {"steps": self.recover_steps, "lr": self.recover_lr, "lora_rank": self.lora_rank,
                                "loftq_iters": self.loftq_iters},
                "depth": {"fraction": self.fraction},
                "width": {"mlp_fraction": self.mlp_fraction, "kv_head_fraction": self.kv_head_fraction},
                }[self.method]


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


def _default_steps() -> list[CompressStep]:
    # svd -> magnitude -> rtn_int8, so every step's effect survives to the end: SVD after pruning would
    # refill the zeros (its factors are dense), and pruning after int8 would have to re-quantize.
    # rank_ratio 0.6 factorizes only the rectangular layers (for SmolLM2-135M: MLP 1536x576 and k/v
    # 192x576, each ~17-20% fewer weights); a square layer saves weights only below 0.5, which plain
    # truncated SVD (no fine-tuning) pays for with a large perplexity increase. Sparsity 0.3 is where
    # one-shot magnitude pruning of small LLMs stays close to the dense model.
    return [CompressStep(method="svd", rank_ratio=0.6), CompressStep(method="magnitude", sparsity=0.3),
            CompressStep(method="rtn_int8")]


class CompressConfig(StageConfig):
    steps: list[CompressStep] = Field(default_factory=_default_steps)
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
