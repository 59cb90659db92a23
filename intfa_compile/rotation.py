"""``qk_rotation="hadamard"``: Q and K times one orthogonal matrix before they are quantized.

The matrix is orthogonal, so rotating both Q and K leaves every Q·Kᵀ unchanged, while a channel whose values dwarf
the others' (an outlier channel, which sets every token's INT8 range) is spread over its block. QuaRot (Ashkboos et
al., 2024) and FlashAttention-3 (Shah et al., 2024) rotate so for low-bit Q and K.

The rotation and the quantization are one operator, ``intfa::hadamard_quantize``: on CUDA one Triton kernel
(``intfa_compile.kernels.hadamard_quantize``) reads x once and writes the INT8 values and scales, the traffic of
the quantization alone; elsewhere ``hadamard_quantize_reference`` computes the same thing with aten ops.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .numerics import QK_BITS, QK_GRANULARITIES, check_choice, hadamard_block
from .quantize import _int_max, _token_amax, quantize_qk


def hadamard_signs(head_dim: int, device: torch.device) -> Tensor:
    """±1 per channel, a fixed pseudo-random pattern: the sign flips before the Walsh–Hadamard matrix. Without them
    a vector with the same value in every channel (an offset all of K's channels share) would become one spike of
    √d in the first channel; with them it spreads like any other (QuaRot's randomized Hadamard). The pattern is bit
    22 of a 32-bit multiplicative hash of the channel index, chosen so that an all-ones vector rotates to entries of
    at most 3.7 at d = 32, 64, 128. Computed from ``arange``, so a traced graph holds no constant tensor."""
    channel = torch.arange(head_dim, device=device, dtype=torch.int64)
    return 1.0 - 2.0 * ((((channel * 0x27D4EB2F) & 0xFFFFFFFF) >> 22) & 1).float()


def hadamard_matrix(head_dim: int, device: torch.device) -> Tensor:
    """The rotation's matrix without its 1/√block: block-diagonal Walsh–Hadamard blocks of ±1 (entry i, j is −1 when
    i & j has an odd number of bits), with row i's sign flipped by ``hadamard_signs``; fp32, exact in any dtype."""
    index = torch.arange(head_dim, device=device, dtype=torch.int64)
    block = hadamard_block(head_dim)
    rows, cols = index.unsqueeze(-1), index.unsqueeze(0)
    bits = rows & cols & (block - 1)
    for shift in (8, 4, 2, 1):  # parity of the bits (blocks of at most 2**16 channels)
        bits = bits ^ (bits >> shift)
    entries = (1.0 - 2.0 * (bits & 1).float()) * hadamard_signs(head_dim, device).unsqueeze(-1)
    return torch.where(rows // block == cols // block, entries, 0.0)


def rotate_hadamard(x: Tensor) -> Tensor:
    """``x`` (..., D) times the orthonormal rotation (``hadamard_matrix`` / √block), in fp32 (fp64 stays fp64):
    the products with ±1 are exact, so this is what the kernel's tensor-core GEMM with fp32 accumulation computes,
    up to the order of the sums."""
    return _rotate_unscaled(x) * hadamard_block(x.shape[-1]) ** -0.5


def _rotate_unscaled(x: Tensor) -> Tensor:
    xf = x if x.dtype == torch.float64 else x.float()
    return xf @ hadamard_matrix(x.shape[-1], x.device).to(xf.dtype)


def group_tokens(granularity: str, block: int) -> int:
    """Tokens sharing one scale in ``intfa::hadamard_quantize``: 1 per token, ``block`` per block; "per_head"
    (every token of a head) is not a tile the kernel holds and has no group size (0)."""
    return {"per_token": 1, "per_block": block}.get(granularity, 0)


def hadamard_quantize_reference(x: Tensor, group: int, bits: int) -> tuple[Tensor, Tensor]:
    """The operator's arithmetic in aten ops, which the kernel reproduces: the ±1 GEMM in fp32 (``_rotate_unscaled``),
    the amax of each token (``group`` = 1) or of each run of ``group`` tokens times 1/√block, the scale
    amax / limit (1 for an all-zero group), then each entry times one per-token multiplier (1/√block) / scale,
    rounded to nearest (ties to even) from the exact product; an infinite entry keeps its sign at ±limit, as in
    ``quantize``. The same quantization as ``quantize_qk`` of ``rotate_hadamard(x)`` up to an fp32 ulp before
    rounding; a multiplication per element where that divides. Returns INT8 storage (B, H, N, D) and fp32 scales
    (B, H, N)."""
    rotated = _rotate_unscaled(x).float()
    granularity = "per_token" if group == 1 else "per_block"
    limit = _int_max(bits)
    inv_sqrt_block = hadamard_block(x.shape[-1]) ** -0.5
    amax = _token_amax(rotated, granularity, group) * inv_sqrt_block
    scale = torch.where(amax == 0, torch.ones_like(amax), amax / limit)
    multiplier = inv_sqrt_block / scale
    scaled = torch.round(rotated.double() * multiplier.double()).clamp(-limit, limit)
    values = torch.where(torch.isinf(rotated), torch.sign(rotated) * limit, scaled)
    return values.to(torch.int8), scale.squeeze(-1)


def _check_arguments(x: Tensor, group: int, bits: int) -> None:
    if x.dim() != 4:
        raise ValueError(f"hadamard_quantize expects a 4-D (B, H, N, D) x, got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"hadamard_quantize: x must be float16, bfloat16 or float32, got {x.dtype}")
    if group != 1 and (group < 16 or group & (group - 1)):
        raise ValueError(f"hadamard_quantize: group must be 1 or a power of two >= 16, got {group}")
    check_choice("qk_bits", bits, QK_BITS)


@torch.library.custom_op("intfa::hadamard_quantize", mutates_args=())
def hadamard_quantize(x: Tensor, group: int, bits: int) -> tuple[Tensor, Tensor]:
    """Q or K (B, H, N, D) rotated (``rotate_hadamard``) and quantized to ``bits`` (8, or 4 in INT8 storage) with
    one scale per token (``group`` = 1) or per ``group`` tokens: INT8 values (B, H, N, D), contiguous, and fp32
    scales (B, H, N). CUDA runs the fused Triton kernel; other devices ``hadamard_quantize_reference``."""
    _check_arguments(x, group, bits)
    if x.device.type == "cuda":
        # Imported here: Triton reads TRITON_INTERPRET when the kernel is defined.
        from intfa_compile.kernels.hadamard_quantize import hadamard_quantize_triton

        return hadamard_quantize_triton(x, group, _int_max(bits))
    values, scale = hadamard_quantize_reference(x, group, bits)
    return values.contiguous(), scale.contiguous()


@hadamard_quantize.register_fake
def _hadamard_quantize_fake(x: Tensor, group: int, bits: int) -> tuple[Tensor, Tensor]:
    _check_arguments(x, group, bits)
    return (x.new_empty(x.shape, dtype=torch.int8), x.new_empty(x.shape[:-1], dtype=torch.float32))


def rotate_and_quantize_qk(x: Tensor, granularity: str, bits: int, block: int) -> tuple[Tensor, Tensor]:
    """``quantize.quantize_qk`` of the rotated ``x``: one fused operator for "per_token" and "per_block"; for
    "per_head" (one scale over all of a head's tokens, a reduction the kernel's tile does not hold) the rotation in
    aten ops and then the usual quantization."""
    check_choice("qk_granularity", granularity, QK_GRANULARITIES)
    group = group_tokens(granularity, block)
    if group:
        return torch.ops.intfa.hadamard_quantize(x, group, bits)
    return quantize_qk(rotate_hadamard(x), granularity, bits, block)
