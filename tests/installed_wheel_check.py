"""Run by ``test_wheel_install.py`` with a Python whose intfa-compile is the built wheel, from outside the
checkout: the backend by name, INT8 attention on a small random-weight LLaMA (GQA, causal), and the TORCH_LOGS
entry point. Prints one JSON line; asserts on its own so a failure names what broke."""

from __future__ import annotations

import json
import sys
from importlib.metadata import entry_points
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from torch._dynamo.utils import counters

import intfa_compile
from intfa_compile.sites import rewritten_sites

checkout = Path(sys.argv[1]).resolve()
installed_at = Path(intfa_compile.__file__).resolve()
assert checkout not in installed_at.parents, f"intfa_compile imported from the checkout: {installed_at}"
assert "site-packages" in installed_at.parts, installed_at
backends = {point.name: point.value for point in entry_points(group="torch_dynamo_backends")}
assert backends.get("intfa") == "intfa_compile.backend:intfa_backend", backends

# The backend by name, on SDPA.
q, k, v = (torch.randn(2, 4, 40, 32) for _ in range(3))
out = torch.compile(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), backend="intfa")(q, k, v)
sdpa_sites = rewritten_sites(counters["intfa"])
sdpa_cosine = F.cosine_similarity(out.flatten(), F.scaled_dot_product_attention(q, k, v).flatten(), dim=0).item()

# One model: a small LLaMA with random weights (GQA, causal).
torch._dynamo.reset()
counters.clear()
config = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  intermediate_size=128, vocab_size=100)
config._attn_implementation = "sdpa"
torch.manual_seed(0)
model = transformers.LlamaModel(config).eval()
ids = torch.randint(0, 100, (2, 24), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    eager = model(input_ids=ids).last_hidden_state
    compiled = torch.compile(model, backend="intfa")(input_ids=ids).last_hidden_state
model_sites = rewritten_sites(counters["intfa"])
model_cosine = F.cosine_similarity(compiled.flatten(), eager.flatten(), dim=0).item()

from torch._logging import _internal  # noqa: E402

print(json.dumps({"installed_at": str(installed_at), "sdpa_sites": sdpa_sites, "sdpa_cosine": sdpa_cosine,
                  "model_sites": model_sites, "model_cosine": model_cosine,
                  "torch_logs_registered": _internal.log_registry.is_log("intfa")}))
