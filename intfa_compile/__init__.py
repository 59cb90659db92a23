"""intfa-compile: a ``torch.compile`` backend that runs attention as INT-FlashAttention (INT8)."""

from . import config
from .calibration import AttentionScales, ScalesMismatchError, collect, prepare
from .explain import ExplainReport, explain
from .ops import int8_attention, int8_sdpa

__all__ = ["AttentionScales", "ExplainReport", "ScalesMismatchError", "collect", "config", "explain", "int8_attention",
           "int8_sdpa", "prepare"]
