"""``explain``: compile a model with the ``intfa`` backend and report every attention site it found."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .arguments import check_model, checked_options
from .sites import SiteRecord, collect_sites

_COLUMNS = ("module", "form", "shapes", "mask", "causal", "gqa", "outcome", "reason")


def _model_order(site: SiteRecord) -> list:
    # "layers.10" after "layers.9": numbers in module paths compare as numbers.
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in site.module.split(".")]


@dataclass
class ExplainReport:
    """Every attention site of one compiled call, in graph order."""

    sites: list[SiteRecord]

    def count(self, outcome: str) -> int:
        """How many sites had ``outcome`` (``"INT8"``, ``"half-INT8"`` or ``"left alone"``)."""
        return sum(site.outcome == outcome for site in self.sites)

    def table(self, columns: Sequence[str] = _COLUMNS) -> str:
        """The sites as a markdown table."""
        rows = [[str(asdict(site)[column]) for column in columns] for site in self.sites]
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


@contextlib.contextmanager
def bypassing_compile_caches() -> Iterator[None]:
    """Compile afresh inside: Inductor's FX graph cache and the autograd cache are off, so every pass runs and
    reports its sites (a cache hit would serve the compiled graph without running them)."""
    from torch._functorch import config as functorch_config
    from torch._inductor import config as inductor_config

    with inductor_config.patch(fx_graph_cache=False), functorch_config.patch(enable_autograd_cache=False):
        yield


def explain(model: torch.nn.Module, *args: Any, options: dict[str, Any] | None = None,
            **kwargs: Any) -> ExplainReport:
    """Compile ``model`` with ``backend="intfa"`` for inference, run it once on ``args``/``kwargs`` and
    return (and print) what happened to each attention site: where it is, its shapes, mask, causality
    and GQA, and whether it runs INT8, half-INT8 or was left alone, and why.

    It compiles afresh (Inductor's caches are bypassed so every pass runs) and does not disturb the
    user's other compiled models.
    """
    check_model(model, "explain")
    options = checked_options(options, "explain")

    from .backend import intfa_backend

    def backend(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Any:
        return intfa_backend(gm, example_inputs, options=options)

    with collect_sites() as sites, bypassing_compile_caches(), torch.no_grad():
        torch.compile(model, backend=backend)(*args, **kwargs)
    report = ExplainReport(sorted(sites, key=_model_order))
    print(report)
    return report
