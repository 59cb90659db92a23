"""When the INT8 kernel may not take an attention site: the one list of reasons every rewrite consults."""

from __future__ import annotations

import torch

from intfa_compile.attention_call import kernel_shape_problem, mask_never_broadcasts
from intfa_compile.config import Settings
from intfa_compile.numerics import default_kv_block, padded_head_dim

from .attention_site import AttentionSite

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def unsupported_reason(site: AttentionSite) -> str | None:
    """Why the INT8 kernel cannot compute ``site``, or None if it can."""
    if site.used_for_backward:
        return "its logsumexp or RNG state is used (a training graph); INT8 attention is inference-only"
    if site.dropout_p != 0.0:
        return f"dropout_p={site.dropout_p}; the INT8 kernel has no dropout"
    q, k, v = site.tensors
    if q is None or k is None or v is None:
        return "no shape information on q, k or v"
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return f"q, k, v are {q.dim()}-D; the INT8 kernel takes (B, H, N, D)"
    if q.dtype not in FLOAT_DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"dtypes {q.dtype}, {k.dtype}, {v.dtype}; the INT8 kernel takes one of fp16, bf16, fp32"
    # Symbolic sizes (dynamic shapes) are refused only for what fails whatever values they take; what they
    # leave open the op decides when it runs, computing exactly where the kernel cannot (exact_fallback).
    reason, _ = kernel_shape_problem(q.shape, k.shape, v.shape)
    if reason is not None:
        return reason
    heads_q = q.shape[1]
    if site.attn_mask is not None:
        mask = site.mask_tensor
        if mask is None:
            return "the mask has no shape information"
        if mask.dtype != torch.bool and mask.dtype not in FLOAT_DTYPES:
            return f"mask dtype {mask.dtype} is neither bool nor floating"
        if mask_never_broadcasts(mask.shape, (q.shape[0], heads_q, q.shape[2], k.shape[2])):
            return f"mask shape {tuple(mask.shape)} does not broadcast to the scores"
    return None


CUDA_KV_BLOCKS = (64, 128)
"""Keys per block the CUDA kernel's tiles offer (the interpreter's also offer 16 and 32)."""


def cuda_tile_reason(site: AttentionSite, settings: Settings) -> str | None:
    """Why the CUDA kernel has no tile for ``site`` under ``settings``' fixed key block, or None: blocks other
    than ``CUDA_KV_BLOCKS``, and 128 keys where ``numerics.default_kv_block`` would choose 64 (a 256-wide head;
    FP8 P·V above 64): no such tile compiles without spilling registers (``inspect_sass.py --spill-sweep``)."""
    query = site.tensors[0]
    kv_block = settings.kv_block
    if query is None or query.device.type != "cuda" or kv_block <= 0:
        return None
    if kv_block not in CUDA_KV_BLOCKS:
        return f"kv_block_size={kv_block}: the CUDA kernel's tiles have {' or '.join(map(str, CUDA_KV_BLOCKS))} keys"
    head_dim = query.shape[-1]
    widest = default_kv_block(padded_head_dim(head_dim), settings.pv) if isinstance(head_dim, int) \
        else min(CUDA_KV_BLOCKS)
    if kv_block > widest:
        return (f"kv_block_size={kv_block} at head dim {head_dim} (pv_format={settings.pv_format!r}): no CUDA tile of "
                f"{kv_block} keys fits the registers there; {widest} does")
    return None


def config_skip_reason(site: AttentionSite, settings: Settings) -> str | None:
    """Why ``settings`` choose to leave ``site`` alone although the kernel could take it, or None."""
    query, key = site.tensors[0], site.tensors[1]
    n_k = key.shape[2]
    oldest = settings.pv.min_cuda_capability
    if oldest is not None and query.device.type == "cuda":
        capability = torch.cuda.get_device_capability(query.device)
        if capability < oldest:
            return (f"pv_format={settings.pv.name!r} needs sm_{''.join(map(str, oldest))} or newer "
                    f"(its tensor cores); this GPU is sm_{''.join(map(str, capability))}")
    min_len = settings.min_seq_len
    if min_len:
        if not isinstance(n_k, int):
            return f"key length {n_k} is symbolic and min_seq_len={min_len} is set"
        if n_k < min_len:
            return f"key length {n_k} is below min_seq_len={min_len}"
    return None
