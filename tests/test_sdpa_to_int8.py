"""passes/sdpa_to_int8.py: SDPA in its aten forms, with each of its arguments, rewritten to the INT8 op after grad
(the causal masks it folds: ``test_causal_masks.py``; the whole backend: ``test_backend.py``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters
from torch._inductor.utils import run_and_get_code

from tests.helpers import DEFAULT_COUNTER, END_TO_END_COSINE, cosine

OP_NAME = "torch.ops.intfa.int8_attention.default"


@pytest.mark.parametrize("variant", ["scale", "enable_gqa", "additive_broadcast_mask", "bool_key_padding"])
def test_sdpa_argument_variants_run_int8(variant):
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(2, 8, 64, 32, generator=gen)
    kv_heads = 2 if variant == "enable_gqa" else 8
    k, v = (torch.randn(2, kv_heads, 64, 32, generator=gen) for _ in range(2))
    kwargs: dict = {}
    if variant == "scale":
        kwargs["scale"] = 0.3
    elif variant == "enable_gqa":
        kwargs["enable_gqa"] = True
    elif variant == "additive_broadcast_mask":
        kwargs["attn_mask"] = torch.randn(1, 8, 1, 64, generator=gen)
    else:
        keep = torch.ones(2, 1, 1, 64, dtype=torch.bool)
        keep[0, ..., 40:] = False
        kwargs["attn_mask"] = keep

    def attend(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, **kwargs)

    with torch.no_grad():
        out, code = run_and_get_code(torch.compile(attend, backend="intfa"), q, k, v)
        eager = attend(q, k, v)
    assert OP_NAME in "\n".join(code)
    assert counters["intfa"][DEFAULT_COUNTER] == 1
    assert cosine(out, eager) >= END_TO_END_COSINE
