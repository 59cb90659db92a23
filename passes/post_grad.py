"""The post-grad pass our backend installs in Inductor, keyed for Inductor's FX graph cache."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

import intfa_compile

from .sdpa_to_int8 import SdpaToInt8

# Every file whose code decides what the rewritten graph holds.
_PASS_DIR = Path(__file__).resolve().parent
_PACKAGE_DIR = Path(intfa_compile.__file__).resolve().parent
_SOURCE_FILES = tuple(
    str(path)
    for path in sorted(_PASS_DIR.glob("*.py"))
    + [_PACKAGE_DIR / name for name in ("ops.py", "quantize.py", "numerics.py", "config.py")]
)


class IntfaPostGradPass(CustomGraphPass):
    """Runs the INT8 attention rewrite under one fixed set of settings.

    ``uuid()`` covers the pass's source and every setting, so the FX graph cache never serves a
    graph that was built under other settings or by other code.
    """

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = dict(settings)
        self._sdpa = SdpaToInt8(self.settings) if self.settings["enabled"] else None

    def __call__(self, graph: torch.fx.Graph) -> None:
        if self._sdpa is not None:
            self._sdpa(graph)
            graph.eliminate_dead_code()

    def uuid(self) -> str:
        digest = hashlib.sha256(get_hash_for_files(_SOURCE_FILES))
        digest.update(json.dumps(self.settings, sort_keys=True).encode())
        return digest.hexdigest()


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
