"""The ``intfa::int8_attention`` operator: INT-FlashAttention's forward pass as one PyTorch op.

On CUDA it runs the Triton kernel in ``intfa_compile.kernels``; on every other device it runs
``fast_int8_attention_cpu``, which computes what the kernel computes up to fp32 rounding (its step-by-step twin,
``cpu_attention.int8_flash_attention_cpu``, is the oracle both are tested against). ``int8_sdpa`` is the
convenience entry that quantizes 16/32-bit Q, K, V and calls the op.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.fx.experimental.symbolic_shapes import statically_known_true

from .attention_call import (
    OUT_DTYPES,
    AttentionCall,
    KernelOptions,
    LaunchOptions,
    bind_op_arguments,
    check_call,
    empty_output,
    kernel_shape_problem,
    op_signature,
    out_dtype_name,
    static_sizes,
)
from .cpu_fast_attention import fast_int8_attention_cpu
from .exact_fallback import exact_attention
from .numerics import QK_ROTATIONS, check_choice
from .pv_formats import DEFAULT_PV_FORMAT
from .pv_formats import pv_format as pv_format_named
from .quantize import (
    K_BLOCK_TOKENS,
    Q_BLOCK_TOKENS,
    center_queries,
    quantize_qk,
    quantize_static,
    quantize_value,
    quantize_value_static,
    smooth,
)
from .rotation import rotate_and_quantize_qk

log = logging.getLogger("intfa_compile")

__all__ = ["OUT_DTYPES", "KernelOptions", "LaunchOptions", "int8_attention", "int8_sdpa", "out_dtype_name"]


_EXACT_INPUTS = ("exact_query", "exact_key", "exact_value", "scale_factor")
"""The op's arguments beyond the call: the 16/32-bit inputs of a site whose shapes were symbolic at compile time,
for the exact fallback (``_int8_attention``)."""

OP_SIGNATURE = op_signature(*_EXACT_INPUTS)
"""``intfa::int8_attention``'s parameters: ``AttentionCall``'s fields, flat, then ``_EXACT_INPUTS``."""


def _int8_attention(*args: Any, **kwargs: Any) -> Tensor:
    """softmax(Q·Kᵀ·sm_scale + mask)·V from INT8 inputs (INT-FlashAttention, Chen et al. 2024).

    The parameters (``OP_SIGNATURE``) are ``AttentionCall``'s fields with ``options`` spread out:
    q (B, Hq, Nq, D) and k (B, Hk, Nk, D) are INT8 with per-token fp32 scales (B, H, N); Hq is a
    multiple of Hk (GQA). v is INT8 with per-channel scales (B, Hk, D) (full INT8: P is quantized to
    INT8 too), e4m3 with per-channel scales (pv_format="fp8": P rounded to e4m3, an FP8 P·V GEMM), or
    16/32-bit with ``v_scale=None`` (half-INT8). ``attn_mask`` is boolean (True = keep)
    or additive, broadcastable to (B, Hq, Nq, Nk). With ``is_causal`` key j is seen by query i iff
    j <= i + ``causal_offset``: 0 is SDPA's ``is_causal`` (top-left), Nk − Nq is bottom-right
    (``torch.nn.attention.bias.causal_lower_right``); ``window_left`` >= 0 also drops the keys
    j < i + causal_offset − window_left (sliding-window attention, as Mistral's). ``out_dtype`` is the
    result's dtype by name (``OUT_DTYPES``: "float16", "bfloat16" or "float32"). The kernel's options follow
    (``attention_call.KernelOptions``): ``p_scale`` ("fixed", 1/127, or "row_block"), ``kv_block`` (keys per
    block, which the result depends on) and ``launch`` (the words of the CUDA kernel's launch options that are
    on, e.g. "tma_loads"; they never change the result and are ignored elsewhere). ``exact_query``,
    ``exact_key``, ``exact_value``: the 16/32-bit tensors the INT8 inputs were quantized from, and
    ``scale_factor`` the 0-d factor of a scale known only at run time (already folded into q_scale; the softmax
    scale is ``sm_scale`` times it), given where the shapes were symbolic at compile time: if the kernel turns
    out unable to take them (a head dim above ``MAX_HEAD_DIM``, value's head dim other than query's:
    ``kernel_shape_problem``) the op computes the attention exactly from them (``exact_fallback``). Returns
    ``out_dtype``, strided like q.
    """
    arguments = bind_op_arguments(OP_SIGNATURE, args, kwargs)
    exact_query, exact_key, exact_value = (arguments[name] for name in _EXACT_INPUTS[:3])
    if (exact_query is None) != (exact_value is None) or (exact_query is None) != (exact_key is None):
        raise ValueError("exact_query, exact_key and exact_value come together")
    call = AttentionCall.of_op_arguments(arguments)
    out = empty_output(call, exact_value)
    if exact_query is not None:
        problem, _ = kernel_shape_problem(call.q.shape, call.k.shape, call.v.shape)
        if problem is not None:
            exact = exact_query, exact_key, exact_value, arguments["scale_factor"]
            out.copy_(exact_attention(exact, call.attn_mask, call.is_causal, call.sm_scale, call.causal_offset,
                                      call.window_left, problem))
            return out
    check_call(call)
    if call.q.device.type == "cuda":
        # Imported here: Triton reads TRITON_INTERPRET when the kernel is defined.
        from intfa_compile.kernels.int8_flash_attention import int8_flash_attention_triton

        return int8_flash_attention_triton(call, out)
    return fast_int8_attention_cpu(call, out)


_int8_attention.__signature__ = OP_SIGNATURE  # type: ignore[attr-defined]
int8_attention = torch.library.custom_op("intfa::int8_attention", mutates_args=())(_int8_attention)


@int8_attention.register_fake
def _int8_attention_fake(*args: Any, **kwargs: Any) -> Tensor:
    """The op's output without computing it, for tracing. Refuses what the real implementation refuses; sizes only
    where they are plain numbers and the real one would check them too (with exact inputs it may turn to the
    exact fallback instead)."""
    arguments = bind_op_arguments(OP_SIGNATURE, args, kwargs)
    call = AttentionCall.of_op_arguments(arguments)
    check_call(call, shapes=arguments["exact_query"] is None and static_sizes(*call.tensors))
    return empty_output(call, arguments["exact_value"])


def scale_and_factor(scale: Any, query: Tensor) -> tuple[float, Tensor | None]:
    """The op's ``sm_scale`` (a Python float) and, for a scale known only at run time, a 0-d fp32 factor that
    multiplies it: a one-element tensor (a learned temperature, a scale computed from sizes), a symbolic float,
    or the default 1/√D of a symbolic head dim (``torch.compile(..., dynamic=True)``)."""
    if scale is None:
        scale = query.shape[-1] ** -0.5
    if isinstance(scale, bool):
        raise TypeError("scale must be a number, a one-element tensor or None, got a bool")
    if isinstance(scale, (int, float)):
        return float(scale), None
    if isinstance(scale, Tensor):
        if not statically_known_true(scale.numel() == 1):
            raise ValueError(f"a tensor scale must hold one number, got shape {tuple(scale.shape)}")
        return 1.0, scale.reshape(()).to(device=query.device, dtype=torch.float32)
    if isinstance(scale, (torch.SymFloat, torch.SymInt)):
        return 1.0, torch.scalar_tensor(scale, dtype=torch.float32, device=query.device)
    raise TypeError(f"scale must be a number, a one-element tensor or None, got {type(scale).__name__}")


def fold_factor(q_int8: Tensor, q_scale: Tensor, factor: Tensor | None) -> tuple[Tensor, Tensor]:
    """Q's integers and scales with a run-time scale factor folded in: the kernel multiplies Q·Kᵀ by the query
    scale, so |factor| joins it, and a negative factor flips the integers' signs (symmetric: ±127 stay in
    range), keeping every query scale ≥ 0 as the kernel's folded exponent needs."""
    if factor is None:
        return q_int8, q_scale
    return torch.where(factor < 0, -q_int8, q_int8), q_scale * factor.abs()


def _exact_inputs(query: Tensor, key: Tensor, value: Tensor, factor: Tensor | None) -> dict[str, Tensor | None]:
    """The op's ``exact_*`` arguments where symbolic shapes leave open whether the kernel takes them (a head dim
    may turn out above its limit when the op runs); nothing where it is decided (the rewrite checked it)."""
    if kernel_shape_problem(query.shape, key.shape, value.shape)[1]:
        return {}
    return {"exact_query": query, "exact_key": key, "exact_value": value, "scale_factor": factor}


def centring_fits(attn_mask: Tensor | None, exact: dict[str, Tensor | None]) -> bool:
    """Whether ``smooth_q`` centres Q at a site: its per-key term joins the mask, so only where that mask stays one
    row per head (no mask, or one whose query dim is 1 or broadcast with stride 0, such as Hugging Face's expanded
    padding mask; a causal flag is kept apart) and
    where the op cannot turn to its exact fallback (which takes the mask as the site's)."""
    return not exact and (attn_mask is None or attn_mask.dim() < 2 or statically_known_true(attn_mask.shape[-2] == 1)
                          or statically_known_true(attn_mask.stride(-2) == 0))


_SDPA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_sdpa_arguments(query: Any, key: Any, value: Any, attn_mask: Any, is_causal: Any, scale: Any,
                         causal_offset: Any = 0, window_left: Any = -1) -> None:
    """Refuse, naming the argument, what ``int8_sdpa`` cannot take: q, k, v that are not 4-D (B, H, N, D) float16,
    bfloat16 or float32 tensors on one device, a mask that is neither boolean nor floating point, a non-bool
    ``is_causal``, a ``scale`` that is not a number or a one-element tensor, non-integer offsets. Shapes that
    do not fit each other are the op's to refuse (or, with symbolic sizes, to fall back on)."""
    for name, tensor in (("query", query), ("key", key), ("value", value)):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"int8_sdpa: {name} must be a Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 4:
            raise ValueError(f"int8_sdpa: {name} must be 4-D (B, H, N, D), got shape {tuple(tensor.shape)}")
        if tensor.dtype not in _SDPA_DTYPES:
            raise TypeError(f"int8_sdpa: {name} must be float16, bfloat16 or float32, got {tensor.dtype}")
        if tensor.device != query.device:
            raise ValueError(f"int8_sdpa: {name} is on {tensor.device}, query on {query.device}")
    if attn_mask is not None:
        if not isinstance(attn_mask, Tensor):
            raise TypeError(f"int8_sdpa: attn_mask must be a Tensor or None, got {type(attn_mask).__name__}")
        if attn_mask.dtype != torch.bool and not attn_mask.dtype.is_floating_point:
            raise TypeError(f"int8_sdpa: attn_mask must be boolean (True = keep) or additive floating point, got "
                            f"{attn_mask.dtype}")
    if not isinstance(is_causal, bool):
        raise TypeError(f"int8_sdpa: is_causal must be a bool, got {type(is_causal).__name__}")
    numeric = (int, float, torch.SymInt, torch.SymFloat, Tensor)
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numeric)
                              or (isinstance(scale, Tensor) and scale.numel() != 1)):
        raise TypeError(f"int8_sdpa: scale must be None, a number or a one-element tensor, got {scale!r}")
    for name, offset in (("causal_offset", causal_offset), ("window_left", window_left)):
        if isinstance(offset, bool) or not isinstance(offset, (int, torch.SymInt)):
            raise TypeError(f"int8_sdpa: {name} must be an integer, got {type(offset).__name__}")


def int8_sdpa(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | Tensor | None = None,
    pv_format: str = DEFAULT_PV_FORMAT,
    *,
    qk_granularity: str = "per_token",
    v_granularity: str = "per_channel",
    smooth_k: bool = False,
    smooth_q: bool = False,
    qk_rotation: str = "none",
    qk_bits: int = 8,
    attention_op: Any = None,
    causal_offset: int = 0,
    window_left: int = -1,
    kernel_options: KernelOptions | Mapping[str, Any] | None = None,
    static_amax: tuple[Tensor, Tensor, Tensor] | None = None,
) -> Tensor:
    """``F.scaled_dot_product_attention`` semantics computed by INT-FlashAttention.

    Quantizes Q and K (per token by default; see ``intfa_compile.config`` for the other choices) and V per
    channel to INT8 (``pv_format="int8"``) or e4m3 (``"fp8"``) or keeps it in 16-bit (``"fp16"``, the default:
    half-INT8; an fp32 V is rounded to bf16, ``value_16bit``; ``intfa_compile.pv_formats``), then
    calls ``intfa::int8_attention`` (or ``attention_op``, an op of the same signature). ``smooth_q`` centres Q
    exactly (``quantize.center_queries``, where ``centring_fits``), ``smooth_k`` subtracts K's mean, and
    ``qk_rotation="hadamard"`` then rotates Q's and K's head dim as they are quantized (``rotation``, one
    fused operator): all three leave softmax(Q·Kᵀ) as it is. ``causal_offset`` moves the causal diagonal and
    ``window_left`` limits how far back a query sees. ``kernel_options``: the kernel's knobs
    (``attention_call.KernelOptions``, or a mapping of its field names such as ``{"p_scale": "row_block"}``: P's
    scale, the keys per block, the CUDA kernel's launch options; see the op). ``scale`` may also be a
    one-element tensor (or, in a traced graph, a symbolic float): it then joins Q's quantization scales
    (``fold_factor``). ``static_amax``: calibrated ranges (Q per head (Hq,), K per head (Hk,), V per head and
    channel (Hk, D)) instead of dynamic scales: quantization is then elementwise only (values beyond a range
    saturate), no reduction over the inputs runs per call, and the granularities and Q/K transforms do not apply
    (the ranges were calibrated on Q and K as they are). This is what the compiler passes insert in place of
    attention.
    """
    check_sdpa_arguments(query, key, value, attn_mask, is_causal, scale, causal_offset, window_left)
    check_choice("qk_rotation", qk_rotation, QK_ROTATIONS)
    pv = pv_format_named(pv_format)
    sm_scale, factor = scale_and_factor(scale, query)
    exact = _exact_inputs(query, key, value, factor)
    op = attention_op or torch.ops.intfa.int8_attention
    options = KernelOptions.of(kernel_options).op_arguments()
    if static_amax is not None:
        if smooth_k or smooth_q or qk_rotation != "none":
            raise ValueError("int8_sdpa: static_amax was calibrated on Q and K as they are; it cannot be combined "
                             "with smooth_k, smooth_q or qk_rotation")
        q_amax, k_amax, v_amax = static_amax
        q_int8, q_scale = fold_factor(*quantize_static(query, q_amax[:, None, None], qk_bits), factor)
        k_int8, k_scale = quantize_static(key, k_amax[:, None, None], qk_bits)
        v_in, v_scale = quantize_value_static(value, pv, v_amax)
        return op(q_int8, k_int8, v_in, q_scale[..., 0], k_scale[..., 0], v_scale, attn_mask, is_causal, sm_scale,
                  causal_offset, window_left, out_dtype_name(query.dtype), **options, **exact)
    if smooth_k:
        key = smooth(key)
    if smooth_q and centring_fits(attn_mask, exact):
        one_row = attn_mask if attn_mask is None or attn_mask.dim() < 2 else attn_mask[..., :1, :]
        query, attn_mask = center_queries(query, key, one_row, sm_scale, factor)
    elif smooth_q:
        log.info("intfa: smooth_q not applied to attention of query shape %s: its mask %s has a row per query, and "
                 "adding the per-key term would copy it once per head", tuple(query.shape),
                 tuple(attn_mask.shape) if attn_mask is not None else "(decided at run time)")
    quantize_qk_as = rotate_and_quantize_qk if qk_rotation == "hadamard" else quantize_qk
    q_int8, q_scale = fold_factor(*quantize_qk_as(query, qk_granularity, qk_bits, Q_BLOCK_TOKENS), factor)
    k_int8, k_scale = quantize_qk_as(key, qk_granularity, qk_bits, K_BLOCK_TOKENS)
    v_in, v_scale = quantize_value(value, pv, v_granularity)
    return op(q_int8, k_int8, v_in, q_scale, k_scale, v_scale, attn_mask, is_causal, sm_scale, causal_offset,
              window_left, out_dtype_name(query.dtype), **options, **exact)
