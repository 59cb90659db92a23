"""Symmetric INT8 quantizers written as plain aten ops, so Inductor can fuse them with their neighbours.

Per-token scales of Q and K factor out of Q·Kᵀ (the sum runs over head_dim); per-channel scales of V
factor out of P·V (the sum runs over tokens). A row or channel that is all zero gets scale 1 rather
than 0, so nothing divides by zero and it quantizes to zeros; a NaN or Inf makes its group's scale
non-finite, so the attention output is poisoned where eager attention's would be.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.fx.experimental.proxy_tensor import get_proxy_mode

from .numerics import QK_BITS, QK_GRANULARITIES, V_GRANULARITIES, check_choice
from .pv_formats import FP8, INT8, PVFormat

Q_BLOCK_TOKENS = 128
"""Query tokens that share one scale under "per_block" granularity (SageAttention's choice)."""
K_BLOCK_TOKENS = 64
"""Keys that share one scale under "per_block" granularity."""


def _int_max(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def _quantize_with_amax(xf: Tensor, amax: Tensor, limit: float, dtype: torch.dtype = torch.int8,
                        ) -> tuple[Tensor, Tensor]:
    """``xf`` scaled so that ``amax`` maps onto ±``limit`` and stored as ``dtype`` (integers are rounded to
    nearest; e4m3 rounds in the cast), and the scale."""
    # An all-zero group gets scale 1 (no division by zero); NaN or Inf stays in the scale, so it reaches
    # the output positions that eager attention would poison too.
    scale = torch.where(amax == 0, torch.ones_like(amax), amax / limit)
    if _concrete(amax) and bool(torch.isfinite(amax).all()):
        # Eager, every group finite (the common case, checked on the small amax): no infinite entry to keep,
        # so the same values in three passes instead of eight; traced code keeps the one form Inductor fuses.
        scaled = xf / scale
        if not dtype.is_floating_point:
            scaled.round_()
        return scaled.clamp_(-limit, limit).to(dtype), scale
    scaled = xf / scale
    if not dtype.is_floating_point:
        scaled = torch.round(scaled)
    # An infinite entry makes its group's scale infinite; it keeps its sign at full range (±limit) and
    # the finite entries become 0, so the scores it enters are ±inf exactly where eager's are.
    xq = torch.where(torch.isinf(xf), torch.sign(xf) * limit, scaled.clamp(-limit, limit))
    return xq.to(dtype), scale


def _concrete(x: Tensor) -> bool:
    """Whether ``x`` is a plain tensor computed eagerly, not traced: not under Dynamo, not a fake or functional
    tensor (a subclass), no proxy tracer recording. Only then may a quantizer branch on its values; traced code
    keeps one form, which Inductor fuses."""
    return (type(x) is Tensor and not torch.compiler.is_compiling()
            and get_proxy_mode() is None)


def _abs_max(xf: Tensor, dim: int) -> Tensor:
    """max|x| along ``dim``, kept; NaN propagates. Eager: the larger of max and −min, two reductions without the
    temporary |x| (5× faster on a CPU along a head dim of 64 than ``abs`` then ``amax``; the ∞-norm is slower
    still)."""
    if not _concrete(xf) or xf.numel() == 0:
        return xf.abs().amax(dim=dim, keepdim=True)
    return torch.maximum(xf.amax(dim=dim, keepdim=True), xf.amin(dim=dim, keepdim=True).neg_())


def _channel_amax(xf: Tensor, granularity: str) -> Tensor:
    """max|v| over the tokens, per channel (..., 1, D); "per_tensor" shares one among a head's channels."""
    amax = _abs_max(xf, -2)
    if granularity == "per_tensor":
        amax = amax.amax(dim=-1, keepdim=True).expand_as(amax)
    return amax


def _token_amax(xf: Tensor, granularity: str, block: int) -> Tensor:
    """max|x| shared by the tokens of each scale group, repeated per token: (..., N, 1)."""
    token_amax = _abs_max(xf, -1)
    if granularity == "per_token":
        return token_amax
    if granularity == "per_head":
        return token_amax.amax(dim=-2, keepdim=True).expand_as(token_amax)
    n = token_amax.shape[-2]
    padded = torch.nn.functional.pad(token_amax, (0, 0, 0, (-n) % block))
    blocks = padded.unflatten(-2, (-1, block)).amax(dim=-2, keepdim=True)
    return blocks.expand(*blocks.shape[:-2], block, 1).flatten(-3, -2)[..., :n, :]


def quantize_qk(x: Tensor, granularity: str = "per_token", bits: int = 8, block: int = Q_BLOCK_TOKENS,
                ) -> tuple[Tensor, Tensor]:
    """Integer values of Q or K (..., N, D) in INT8 storage and a per-token fp32 scale (..., N).

    Coarser granularities ("per_block" of ``block`` tokens, "per_head") share one scale among
    tokens but still hand the kernel one scale per token, so the kernel is the same for all of them.
    ``bits`` = 4 limits the integers to [-7, 7].
    """
    check_choice("qk_granularity", granularity, QK_GRANULARITIES)
    check_choice("qk_bits", bits, QK_BITS)
    xf = x.float()
    xq, scale = _quantize_with_amax(xf, _token_amax(xf, granularity, block), _int_max(bits))
    return xq, scale.squeeze(-1)


def quantize_v_as(x: Tensor, fmt: PVFormat, granularity: str = "per_channel", amax: Tensor | None = None
                  ) -> tuple[Tensor, Tensor]:
    """V (..., N, D) in P·V format ``fmt``'s dtype and its per-channel fp32 scales (..., D): each channel's max|v|
    (or the calibrated ``amax``, broadcast to (..., 1, D); values beyond it saturate) maps onto the dtype's largest
    value (``PVFormat.v_max``; integers rounded to nearest, floats rounded by the cast); "per_tensor" shares one
    scale among all channels of a (batch, head). As for Q and K, a zero channel gets scale 1, an infinite entry
    keeps its sign at full range, and NaN stays in the scale, so non-finite inputs reach the outputs eager
    attention poisons."""
    check_choice("v_granularity", granularity, V_GRANULARITIES)
    xf = x.float()
    amax = _channel_amax(xf, granularity) if amax is None else amax
    xq, scale = _quantize_with_amax(xf, amax, fmt.v_max, fmt.v_dtype)
    return xq, scale.expand(*xf.shape[:-2], 1, xf.shape[-1]).squeeze(-2)


def quantize_v(x: Tensor, granularity: str = "per_channel") -> tuple[Tensor, Tensor]:
    """INT8 values of V (..., N, D) and per-channel fp32 scales (..., D) (``quantize_v_as`` for INT8)."""
    return quantize_v_as(x, INT8, granularity)


def value_16bit(x: Tensor) -> Tensor:
    """V for a 16-bit P·V (``pv_format="fp16"``, the paper's half-INT8): as it is when fp16 or bf16; an fp32 V is
    rounded to bf16. The kernel's P·V GEMM takes V's dtype for P too, so an fp32 V would make it an fp32 GEMM off
    the tensor cores (what "16-bit" promises is the speed of a 16-bit GEMM); bf16 keeps fp32's range, so no value
    overflows as one above fp16's 65504 would. On the MiniLM search task a bf16 and an fp16 P·V are equally
    accurate (``benchmarks/task_accuracy.py``)."""
    return x if x.dtype in (torch.float16, torch.bfloat16) else x.to(torch.bfloat16)


FP8_MAX = FP8.v_max
"""The largest finite e4m3 value, 448: V's per-channel FP8 scale maps each channel's max|v| onto it."""


def quantize_v_fp8(x: Tensor, granularity: str = "per_channel", amax: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """e4m3 values of V (..., N, D) and per-channel fp32 scales (..., D) (pv_format="fp8"; ``quantize_v_as``):
    each channel's max|v| maps onto ±448, and NaN stays NaN (e4m3 has one)."""
    return quantize_v_as(x, FP8, granularity, amax)


def sequence_major(x: Tensor) -> Tensor:
    """``x`` (..., N, D) with the same values, stored with N as the fastest axis.

    The layout the INT8 kernel wants for V: Hopper's INT8 ``wgmma`` reads its B operand (V in P·V, reduced
    over N) only K-major, so a D-contiguous V is transposed byte by byte through shared memory in every key
    block (``STS.U8`` and ``PRMT`` in the SASS, see ``benchmarks/inspect_sass.py``). Written by the fused
    quantization kernel, the layout costs nothing extra: Inductor keeps the strides of a custom op's inputs.
    """
    return x.transpose(-1, -2).contiguous().transpose(-1, -2)


def quantize_per_token(x: Tensor) -> tuple[Tensor, Tensor]:
    """INT8 values of ``x`` (..., N, D) with one fp32 scale per token (..., N): max|x| over D / 127."""
    return quantize_qk(x, "per_token")


def quantize_per_channel(x: Tensor) -> tuple[Tensor, Tensor]:
    """INT8 values of ``x`` (..., N, D) with one fp32 scale per channel (..., D): max|x| over N / 127."""
    return quantize_v(x, "per_channel")


def smooth(k: Tensor) -> Tensor:
    """K minus its mean over the sequence, per channel: the same softmax, a tighter INT8 range."""
    return k - k.mean(dim=-2, keepdim=True)


def center_queries(query: Tensor, key: Tensor, attn_mask: Tensor | None, sm_scale: float,
                   factor: Tensor | None) -> tuple[Tensor, Tensor]:
    """Q minus its mean over the sequence μ (per batch, head and channel) and the mask that makes it exact
    (``smooth_q``): each score q_i·k_j = (q_i − μ)·k_j + μ·k_j, so the per-key term μ·k_j, times the softmax
    scale, is added to the mask in fp32 and only the centred Q is quantized (SageAttention2's Q smoothing, Zhang
    et al., 2024). Q with a large offset shared by its tokens keeps more INT8 resolution for what varies.

    ``key`` is K as it will be quantized (after ``smooth_k``); ``factor`` is the run-time part of the scale, if
    any. The returned mask is fp32, (B, Hq, 1, Nk) broadcast with ``attn_mask``: a boolean mask becomes −inf where
    it was False."""
    qf, kf = query.float(), key.float()
    mean = qf.mean(dim=-2, keepdim=True)
    batch, heads_q = qf.shape[:2]
    heads_k = kf.shape[1]
    grouped = mean.reshape(batch, heads_k, heads_q // heads_k, qf.shape[-1])
    bias = (grouped @ kf.transpose(-1, -2)).reshape(batch, heads_q, 1, kf.shape[-2]) * sm_scale
    if factor is not None:
        bias = bias * factor.float()
    if attn_mask is None:
        mask = bias
    elif attn_mask.dtype == torch.bool:
        mask = bias.masked_fill(~attn_mask, float("-inf"))
    else:
        mask = attn_mask.float() + bias
    return qf - mean, mask


def quantize_static(x: Tensor, amax: Tensor, bits: int = 8) -> tuple[Tensor, Tensor]:
    """Integer values of ``x`` (B, H, N, D) against calibrated ranges ``amax`` that broadcast to (H, N, D);
    returns them and the scales broadcast to x's shape (values beyond the range saturate)."""
    check_choice("qk_bits", bits, QK_BITS)
    xf = x.float()
    xq, scale = _quantize_with_amax(xf, amax.expand(xf.shape[1:]).unsqueeze(0), _int_max(bits))
    return xq, scale.expand(xf.shape)


def quantize_value(value: Tensor, pv: PVFormat, granularity: str = "per_channel") -> tuple[Tensor, Tensor | None]:
    """V as the op takes it in P·V format ``pv``: quantized to the format's ``v_dtype`` with per-channel scales
    (``quantize_v_as``), stored sequence-major (``sequence_major``); or, unquantized, 16-bit with no scales
    (``value_16bit``).
    ``granularity`` is checked even where V stays 16-bit."""
    check_choice("v_granularity", granularity, V_GRANULARITIES)
    if not pv.quantized:
        return value_16bit(value), None
    v_q, v_scale = quantize_v_as(value, pv, granularity)
    return sequence_major(v_q), v_scale


def quantize_value_static(value: Tensor, pv: PVFormat, v_amax: Tensor) -> tuple[Tensor, Tensor | None]:
    """``quantize_value`` against calibrated per-head, per-channel ranges ``v_amax`` (Hk, D): elementwise only
    (values beyond the range saturate), so no reduction over V runs per call."""
    if not pv.quantized:
        return value_16bit(value), None
    v_q, v_scale = quantize_v_as(value, pv, amax=v_amax[:, None, :].expand(value.shape[0], -1, 1, -1))
    return sequence_major(v_q), v_scale
