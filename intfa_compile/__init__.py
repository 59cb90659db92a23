"""intfa-compile: a ``torch.compile`` backend that runs attention as INT-FlashAttention (INT8)."""

from . import config
from .ops import int8_attention, int8_sdpa

__all__ = ["config", "int8_attention", "int8_sdpa"]
