"""``intfa::int8_attention_triton``: the INT8 kernel as a ``torch.library.triton_op``, for CUDA.

Inductor traces into a triton_op and emits the kernel launch in its own generated code, where the
opaque ``intfa::int8_attention`` custom op is a Python call. Which is faster is a measurement
(``config.cuda_lowering``); on CPU, Inductor cannot trace Triton kernels, so the custom op stays.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor  # noqa: F401  (the signature's annotations name it; infer_schema reads them here)

from intfa_compile.attention_call import AttentionCall, bind_op_arguments, check_call, empty_output, op_signature

from .int8_flash_attention import int8_flash_attention_triton

OP_SIGNATURE = op_signature()
"""``intfa::int8_attention``'s parameters without its exact-fallback inputs: the triton_op is chosen only where
the shapes are static, so the kernel always takes them."""


def _int8_attention_triton(*args: Any, **kwargs: Any) -> torch.Tensor:
    """Same contract as ``intfa::int8_attention`` (``OP_SIGNATURE``); always runs the Triton kernel."""
    call = AttentionCall.of_op_arguments(bind_op_arguments(OP_SIGNATURE, args, kwargs))
    check_call(call)
    return int8_flash_attention_triton(call, empty_output(call), traceable=True)


_int8_attention_triton.__signature__ = OP_SIGNATURE  # type: ignore[attr-defined]
int8_attention_triton = torch.library.triton_op("intfa::int8_attention_triton", mutates_args=())(
    _int8_attention_triton)
