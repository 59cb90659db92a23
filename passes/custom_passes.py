"""The graph passes our backend installs in Inductor, each keyed for Inductor's FX graph cache."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

import intfa_compile

from .handwritten import handwritten_patterns
from .leftovers import report_unrewritten_attention
from .rewrite import last_approved, rewrite_failed, rewriting_under
from .sdpa_to_int8 import sdpa_patterns

log = logging.getLogger("intfa_compile")

# Every file whose code decides what the rewritten graph holds.
_PASS_DIR = Path(__file__).resolve().parent
_PACKAGE_DIR = Path(intfa_compile.__file__).resolve().parent
_SOURCE_FILES = tuple(
    str(path)
    for path in sorted(_PASS_DIR.glob("*.py"))
    + [_PACKAGE_DIR / name for name in ("ops.py", "quantize.py", "numerics.py", "config.py", "sites.py",
                                      "calibration.py")]
)


class _SettingsPass(CustomGraphPass):
    """A pass bound to one set of settings; ``uuid()`` covers its source and every setting, so the FX
    graph cache never serves a graph built under other settings or by other code."""

    stage = ""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = dict(settings)

    def __call__(self, graph: torch.fx.Graph) -> None:
        if not self.settings["enabled"]:
            return
        with rewriting_under(self.settings):
            self.run(graph)
        graph.eliminate_dead_code()

    def run(self, graph: torch.fx.Graph) -> None:
        raise NotImplementedError

    def uuid(self) -> str:
        digest = hashlib.sha256(get_hash_for_files(_SOURCE_FILES))
        settings = {name: value.fingerprint() if hasattr(value, "fingerprint") else value
                    for name, value in self.settings.items()}
        digest.update(json.dumps({"stage": self.stage, **settings}, sort_keys=True).encode())
        return digest.hexdigest()


class IntfaJointPass(_SettingsPass):
    """Joint-graph stage: hand-written attention → INT8.

    It runs after Inductor's own joint passes: no-op copies (eval-mode dropout) are gone by then, and
    attention Inductor already turned into SDPA reaches the post-grad stage as SDPA; what Inductor
    does not know (or does not run, with its pattern matcher off) is matched here."""

    stage = "joint"

    def run(self, graph: torch.fx.Graph) -> None:
        # register_replacement traces a replacement before it changes the graph; a failure leaves the
        # site as it was. Apply again after one so the other sites still get their chance.
        for _ in range(len(graph.nodes) + 1):
            try:
                handwritten_patterns().apply(graph)
                return
            except Exception as error:
                site = last_approved()
                if site is not None:
                    rewrite_failed(site, error)
                    continue
                if self.settings["fallback"] == "error":
                    raise
                log.warning("intfa: the hand-written attention pass failed (%s: %s); the sites it had not "
                            "reached are left as they were", type(error).__name__, error)
                return


class IntfaPostGradPass(_SettingsPass):
    """Post-grad stage: every aten form of SDPA → INT8; then report attention still written by hand."""

    stage = "post_grad"

    def run(self, graph: torch.fx.Graph) -> None:
        sdpa_patterns().apply(graph)
        report_unrewritten_attention(graph)


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
