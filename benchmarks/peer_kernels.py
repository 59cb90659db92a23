"""Peer kernels for the offline per-pipe model, compiled as their own launchers launch them.

SageAttention 1.0.6 (thu-ml; PyPI, pure Triton): its INT8-Q·Kᵀ forward kernels ``attn_qk_int8_per_block.py`` and
``..._causal.py`` (Q per block of 128 tokens, K per block of 64, P·V in fp16 with fp16 accumulation). An optional
benchmark dependency (``pip install --no-deps sageattention==1.0.6``; the ``dev`` extra installs it), never a
runtime one: the kernel files are loaded from the installed package by path, without importing the package.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from types import ModuleType

import torch
import triton

SAGE_VERSION = "1.0.6"
SAGE_VARIANT = f"sage-{SAGE_VERSION}"
"""The variant name ``pipe_model`` and ``inspect_sass`` know SageAttention's kernel by."""
SAGE_BLOCK_M, SAGE_BLOCK_N = 128, 64
"""The tile its launcher uses (``forward`` in both kernel files), whatever the head dim."""


def sage_available() -> bool:
    """Whether SageAttention 1.0.6 is installed (other versions have other kernels)."""
    try:
        return importlib.metadata.version("sageattention") == SAGE_VERSION
    except importlib.metadata.PackageNotFoundError:
        return False


def _sage_kernel_module(causal: bool) -> ModuleType:
    if not sage_available():
        raise ModuleNotFoundError(f"SageAttention {SAGE_VERSION} is an optional benchmark dependency: "
                                  f"pip install --no-deps sageattention=={SAGE_VERSION}")
    spec = importlib.util.find_spec("sageattention")
    folder = Path(next(iter(spec.submodule_search_locations)))
    path = folder / ("attn_qk_int8_per_block_causal.py" if causal else "attn_qk_int8_per_block.py")
    module_spec = importlib.util.spec_from_file_location(f"_sage_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def sage_launch_case(head_dim: int, causal: bool, batch: int, heads: int, seq: int) -> tuple:
    """(jit function, launch args, constexprs, config) as SageAttention 1.0.6's ``forward`` launches its kernel for
    INT8 Q, K of (batch, heads, seq, head_dim) in its "HND" layout, fp16 V and output, no GQA."""
    module = _sage_kernel_module(causal)
    q = torch.empty(batch, heads, seq, head_dim, dtype=torch.int8, device="meta")
    k = torch.empty_like(q)
    v = torch.empty(batch, heads, seq, head_dim, dtype=torch.float16, device="meta")
    out = torch.empty_like(v)
    q_scale = torch.empty(batch, heads, triton.cdiv(seq, SAGE_BLOCK_M), dtype=torch.float32, device="meta")
    k_scale = torch.empty(batch, heads, triton.cdiv(seq, SAGE_BLOCK_N), dtype=torch.float32, device="meta")
    strides = [stride for tensor in (q, k, v, out) for stride in tensor.stride()[:3]]
    args = (q, k, v, q_scale, k_scale, out, *strides, seq, seq, heads, 1)
    constexprs = {"HEAD_DIM": head_dim, "BLOCK_M": SAGE_BLOCK_M, "BLOCK_N": SAGE_BLOCK_N,
                  "STAGE": 3 if causal else 1}
    stages = 4 if causal or head_dim != 64 else 3
    config = triton.Config({}, num_warps=4 if head_dim == 64 else 8, num_stages=stages)
    return module._attn_fwd, args, constexprs, config
