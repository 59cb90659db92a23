"""intfa-compile: a ``torch.compile`` backend that runs attention as INT-FlashAttention (INT8)."""

from . import config, torch_logs  # noqa: F401  (torch_logs: registers the TORCH_LOGS names)
from .calibration import AttentionScales, ScalesMismatchError, collect, prepare
from .deploy import inductor_configs
from .explain import ExplainReport, explain
from .ops import int8_attention, int8_sdpa

__all__ = ["AttentionScales", "ExplainReport", "ScalesMismatchError", "collect", "config", "explain",
           "inductor_configs", "int8_attention", "int8_sdpa", "prepare"]
