"""``passes.guards.cuda_tile_reason``: a fixed key block the CUDA kernel has no spill-free tile for is refused when
the site is compiled (a logged fallback, or an error under ``fallback="error"``), never at launch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from intfa_compile.passes.attention_site import AttentionSite
from intfa_compile.passes.guards import cuda_tile_reason

from intfa_compile import config


def _site(head_dim: int, device: str = "cuda") -> AttentionSite:
    """A site whose q, k, v are stand-ins on ``device`` (no GPU needed: the guard reads device and shape only)."""
    graph = torch.fx.Graph()
    q, k, v = (graph.placeholder(name) for name in "qkv")
    fake = SimpleNamespace(device=torch.device(device), shape=(1, 8, 4096, head_dim))
    return AttentionSite(anchor=q, form="test", query=q, key=k, value=v, attn_mask=None, is_causal=False, scale=None,
                         values=(fake, fake, fake, None))


@pytest.mark.parametrize(("head_dim", "options", "refused"), [
    (128, {}, False),  # "auto": the shape rule, always a fitting block
    (128, {"kv_block_size": "tune"}, False),
    (128, {"kv_block_size": 128}, False),
    (64, {"kv_block_size": 128, "pv_format": "fp8"}, False),
    (256, {"kv_block_size": 64}, False),
    (256, {"kv_block_size": 128}, True),  # a 256-wide head spills with 128 keys
    (96, {"kv_block_size": 128, "pv_format": "fp8"}, True),  # padded to 128: FP8 P·V spills with 128 keys
    (128, {"kv_block_size": 32}, True),  # the CUDA tiles have 64 or 128 keys
])
def test_fixed_key_blocks_without_a_cuda_tile_are_refused(head_dim, options, refused):
    reason = cuda_tile_reason(_site(head_dim), config.resolve(options))
    assert (reason is not None) == refused, reason
    if refused:
        assert f"kv_block_size={options['kv_block_size']}" in reason


def test_other_devices_take_every_key_block():
    assert cuda_tile_reason(_site(256, "cpu"), config.resolve({"kv_block_size": 128})) is None
    assert cuda_tile_reason(_site(128, "cpu"), config.resolve({"kv_block_size": 16})) is None
