"""The causal-mask algebra (``passes/causal_masks.py``) on small traced mask builders: which masks are a band of
diagonals (and which band), and which are not."""

from __future__ import annotations

import pytest
import torch
from intfa_compile.passes.causal_masks import causal_band_of
from torch.fx.experimental.proxy_tensor import make_fx

N_Q, N_K = 6, 9


def _band(build, drops: bool = False, n_q: int = N_Q, n_k: int = N_K):
    graph = make_fx(build, tracing_mode="fake")().graph
    (output,) = [node for node in graph.nodes if node.op == "output"]
    return causal_band_of(output.args[0][0] if isinstance(output.args[0], (list, tuple)) else output.args[0],
                          n_q, n_k, drops)


def _positions():
    return torch.arange(N_Q)[:, None], torch.arange(N_K)[None, :]


@pytest.mark.parametrize("offset", [0, 3, -2])
def test_tril_of_ones_is_a_causal_band_at_its_diagonal(offset):
    assert _band(lambda: torch.ones(N_Q, N_K, dtype=torch.bool).tril(offset)) == (offset, -1)


def test_triu_as_a_drop_mask_is_the_same_band():
    """``masked_fill(triu(ones, 1), -inf)`` drops the keys after the diagonal: the causal band read as drops."""
    assert _band(lambda: torch.ones(N_Q, N_K, dtype=torch.bool).triu(1), drops=True) == (0, -1)


def test_positions_compared_with_a_window_give_offset_and_window():
    """Hugging Face's sliding-window mask: keys j with i − w < j <= i + d."""
    def build():
        rows, cols = _positions()
        return (cols <= rows + 3) & (cols > rows + 3 - 4)

    assert _band(build) == (3, 3)


def test_additive_forms_with_minus_inf_and_finfo_min():
    def minus_inf():
        keep = torch.ones(N_Q, N_K, dtype=torch.bool).tril(N_K - N_Q)
        return torch.where(keep, 0.0, float("-inf"))

    def lowest():
        keep = torch.ones(N_Q, N_K, dtype=torch.bool).tril(0)
        return torch.where(keep, 0.0, torch.finfo(torch.float32).min)

    assert _band(minus_inf) == (N_K - N_Q, -1)
    assert _band(lowest) == (0, -1)  # every query keeps key 0, so finfo.min computes what the flag computes


def test_masks_that_are_not_a_band_stay_masks():
    def padding():
        keep = torch.ones(N_Q, N_K, dtype=torch.bool)
        keep[:, -2:] = False
        return keep

    def causal_and_padding():
        keep = torch.ones(N_Q, N_K, dtype=torch.bool).tril(0)
        return keep & (torch.arange(N_K) < N_K - 2)[None, :]

    def lowest_with_an_empty_row():
        keep = torch.ones(N_Q, N_K, dtype=torch.bool).tril(-1)  # query 0 keeps no key
        return torch.where(keep, 0.0, torch.finfo(torch.float32).min)

    assert _band(padding) is None
    assert _band(causal_and_padding) is None
    assert _band(lowest_with_an_empty_row) is None

    def minus_inf_with_an_empty_row():
        keep = torch.ones(N_Q, N_K, dtype=torch.bool).tril(-1)
        return torch.where(keep, 0.0, float("-inf"))

    assert _band(minus_inf_with_an_empty_row) == (-1, -1)  # -inf: the empty row is the flag's too
