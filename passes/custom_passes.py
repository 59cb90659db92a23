"""The graph passes our backend installs in Inductor, each keyed for Inductor's FX graph cache."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

from intfa_compile import numerics

from .context import CompileContext
from .leftovers import report_unrewritten_attention
from .matcher import rewrite_attention
from .sdpa_to_int8 import sdpa_patterns

log = logging.getLogger("intfa_compile")

# Every source file of the package (its passes and kernels too, wherever they are installed): a change to any
# of them may change what the rewritten graph holds, and a hand-kept list would miss one.
_PASS_DIR = Path(__file__).resolve().parent
_PACKAGE_DIR = Path(numerics.__file__).resolve().parent
_SOURCE_FILES = tuple(sorted({str(path) for folder in (_PACKAGE_DIR, _PASS_DIR, _PASS_DIR.parent / "kernels")
                              if folder.is_dir() for path in folder.rglob("*.py")}))


class _CompilePass(CustomGraphPass):
    """A pass of one compilation, bound to its context; ``uuid()`` covers its source and every setting, so the FX
    graph cache never serves a graph built under other settings or by other code."""

    stage = ""

    def __init__(self, context: CompileContext) -> None:
        self.context = context

    def __call__(self, graph: torch.fx.Graph) -> None:
        if not self.context.settings.enabled:
            return
        self.context.begin_stage()
        self.run(graph)
        graph.eliminate_dead_code()

    def run(self, graph: torch.fx.Graph) -> None:
        raise NotImplementedError

    def uuid(self) -> str:
        digest = hashlib.sha256(get_hash_for_files(_SOURCE_FILES))
        digest.update(json.dumps({"stage": self.stage, **self.context.settings.fingerprint()}, sort_keys=True).encode())
        return digest.hexdigest()


class IntfaStructuralPass(_CompilePass):
    """Joint-graph stage, before Inductor's own pattern passes: attention recognised by its structure
    (``structural``), in whatever style it was written, → INT8. Running first, it sees the graph as the model
    wrote it, and its coverage does not depend on which attention forms Inductor fuses into SDPA."""

    stage = "joint_pre"

    def run(self, graph: torch.fx.Graph) -> None:
        for softmax, reason in rewrite_attention(graph, self.context):
            self.context.note_declined(softmax, reason)


class IntfaPostGradPass(_CompilePass):
    """Post-grad stage: every aten form of SDPA → INT8; then report attention still written by hand."""

    stage = "post_grad"

    def run(self, graph: torch.fx.Graph) -> None:
        sdpa_patterns(self.context).apply(graph)
        report_unrewritten_attention(graph, self.context)


class ChainedPass(CustomGraphPass):
    """Runs a pass the user had installed, then ours: installing our pass loses nothing the user had."""

    def __init__(self, first: Any, second: CustomGraphPass) -> None:
        self.first, self.second = first, second

    def __call__(self, graph: torch.fx.Graph) -> None:
        self.first(graph)
        self.second(graph)

    def uuid(self) -> Any:
        first_uuid = self.first.uuid() if isinstance(self.first, CustomGraphPass) else None
        # Without a uuid for the user's pass Inductor must bypass its cache, as it would for that pass alone.
        return None if first_uuid is None else (first_uuid, self.second.uuid())
