"""Every style of the catalog (``tests/attention_styles.py``) runs INT8 under the backend, found by the
structural matcher alone: with Inductor's own pattern passes (its attention fusion among them) on and off."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters
from torch._inductor import config as inductor_config

from tests.attention_styles import STYLES, hidden_states
from tests.helpers import DEFAULT_COUNTER, END_TO_END_COSINE, cosine


def _run(name: str, inductor_patterns: bool) -> tuple[torch.Tensor, torch.Tensor, dict]:
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = STYLES[name][0]().eval()
    x = hidden_states(name)
    with torch.no_grad(), inductor_config.patch(pattern_matcher=inductor_patterns, fx_graph_cache=False):
        eager = model(x)
        compiled = torch.compile(model, backend="intfa")(x)
    return eager, compiled, dict(counters["intfa"])


@pytest.mark.parametrize("inductor_patterns", [True, False], ids=["inductor-fusion-on", "inductor-fusion-off"])
@pytest.mark.parametrize("name", sorted(STYLES))
def test_every_style_runs_int8(name, inductor_patterns):
    """One INT8 site per style, none left alone, and the output within INT8 attention's accuracy of eager fp32
    (cosine ≥ 0.999: the bar every INT8 site in this suite meets; per-token INT8 Q/K and per-channel V keep
    each score within ~1% of its value, which moves a unit-norm output by far less than 1 − 0.999)."""
    eager, compiled, intfa = _run(name, inductor_patterns)
    assert intfa.get(DEFAULT_COUNTER, 0) == 1 and not intfa.get("left_alone"), intfa
    assert cosine(compiled, eager) >= END_TO_END_COSINE


def test_styles_table_lists_every_style():
    """The table of styles (``docs/supported-attention.md``) is generated from this catalog (``python -m
    tests.attention_styles``); a style added without regenerating it is caught here."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "docs" / "supported-attention.md").read_text()
    assert all(f"| `{name}` |" in readme for name in STYLES)
