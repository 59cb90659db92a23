"""What replaces an attention site: quantization and the INT8 op, under the settings of one compile."""

from __future__ import annotations

from typing import Any

import torch

from intfa_compile.calibration import static_amax, static_amax_tensors
from intfa_compile.config import Settings
from intfa_compile.exact_fallback import band_mask
from intfa_compile.ops import KernelOptions, int8_sdpa, scale_and_factor


def int8_attention(settings: Settings, site_key: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   attn_mask: torch.Tensor | None, is_causal: bool, scale: float | torch.Tensor | None,
                   causal_offset: int = 0, window_left: int = -1) -> torch.Tensor:
    """The replacement of the site ``site_key`` (its key for static scales and calibration): quantization and
    ``intfa::int8_attention`` under ``settings`` (traced by the rewrites into the graph)."""
    if settings.calibrate:
        if is_causal and (causal_offset != 0 or window_left >= 0):  # SDPA's is_causal is top-left, unbounded
            attn_mask = band_mask(query.shape[-2], key.shape[-2], causal_offset, window_left, query.device)
            is_causal = False
        sm_scale, factor = scale_and_factor(scale, query)
        return torch.ops.intfa.observed_attention(query, key, value, attn_mask, is_causal, sm_scale,
                                                  settings.calibrate, site_key, factor)
    ranges = static_amax(settings.scales, site_key, query, key, strict=settings.fallback == "error")
    return int8_sdpa(query, key, value, attn_mask, is_causal, scale, settings.pv_format,
                     qk_granularity=settings.qk_granularity, v_granularity=settings.v_granularity,
                     smooth_k=settings.smooth_k, smooth_q=settings.smooth_q, qk_rotation=settings.qk_rotation,
                     qk_bits=settings.qk_bits, attention_op=_attention_op(query, settings),
                     causal_offset=causal_offset, window_left=window_left,
                     kernel_options=KernelOptions.of_settings(settings),
                     static_amax=None if ranges is None else static_amax_tensors(query, ranges))


def _attention_op(query: torch.Tensor, settings: Settings) -> Any:
    """The INT8 op to insert: the triton_op Inductor traces into, on CUDA when configured; else the custom op."""
    # The triton_op is traced at compile time with the head dim as its tile size: a symbolic one keeps the custom op.
    if settings.cuda_lowering == "triton_op" and query.device.type == "cuda" and isinstance(query.shape[-1], int):
        import intfa_compile.kernels.triton_op  # noqa: F401  (registers intfa::int8_attention_triton)

        return torch.ops.intfa.int8_attention_triton
    return torch.ops.intfa.int8_attention
