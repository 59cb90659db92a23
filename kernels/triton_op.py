"""``intfa::int8_attention_triton``: the INT8 kernel as a ``torch.library.triton_op``, for CUDA.

Inductor traces into a triton_op and emits the kernel launch in its own generated code, where the
opaque ``intfa::int8_attention`` custom op is a Python call. Which is faster is a measurement
(``config.cuda_lowering``); on CPU, Inductor cannot trace Triton kernels, so the custom op stays.
"""

from __future__ import annotations

import torch
from torch import Tensor

from intfa_compile.attention_call import AttentionCall, LaunchOptions, check_call, empty_output

from .int8_flash_attention import int8_flash_attention_triton


@torch.library.triton_op("intfa::int8_attention_triton", mutates_args=())
def int8_attention_triton(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_scale: Tensor,
    k_scale: Tensor,
    v_scale: Tensor | None,
    attn_mask: Tensor | None,
    is_causal: bool,
    sm_scale: float,
    p_scale: str,
    out_dtype: str,
    causal_offset: int = 0,
    window_left: int = -1,
    kv_block: int = 0,
    launch: str = "",
) -> Tensor:
    """Same contract as ``intfa::int8_attention``; always runs the Triton kernel."""
    call = AttentionCall(q, k, v, q_scale, k_scale, v_scale, attn_mask, is_causal, sm_scale, p_scale, causal_offset,
                         window_left, kv_block, LaunchOptions.of_words(launch))
    check_call(call, out_dtype)
    return int8_flash_attention_triton(call, empty_output(q, out_dtype), traceable=True)
