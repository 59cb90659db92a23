"""Shared by the matcher's tests (``tests/test_score_walk.py``, ``test_recognition.py``, ``test_replacement.py``,
``test_matcher.py``): compile a small attention function with the structural matcher alone and read its sites."""

from __future__ import annotations

import torch
from torch._dynamo.utils import counters
from torch._inductor import config as inductor_config

from intfa_compile.sites import collect_sites


class Fn(torch.nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def compile_fn(fn, *args, training: bool = False):
    """(eager output, compiled output, site records), Inductor's own attention fusion off."""
    torch._dynamo.reset()
    counters.clear()
    module = Fn(fn).train(training)
    with inductor_config.patch(pattern_matcher=False, fx_graph_cache=False), collect_sites() as sites:
        if training:
            compiled = torch.compile(module, backend="intfa")(*args)
            eager = module(*args)
        else:
            with torch.no_grad():
                eager = module(*args)
                compiled = torch.compile(module, backend="intfa")(*args)
    return eager, compiled, list(sites)


def qkv(batch=2, heads=4, n=32, dim=16, kv_heads=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    kv_heads = kv_heads or heads
    return (torch.randn(batch, heads, n, dim, generator=gen), torch.randn(batch, kv_heads, n, dim, generator=gen),
            torch.randn(batch, kv_heads, n, dim, generator=gen))


def only_site(sites):
    (site,) = sites
    return site
