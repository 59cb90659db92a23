"""passes/custom_passes.py: the passes the backend installs in Inductor and their keys in its FX graph cache (on,
across processes: a graph built under other settings is never served); a pass the user installed still runs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys, torch, torch.nn.functional as F
    from torch._dynamo.utils import counters
    def attend(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 1, 2, 96, 32)
    with torch.no_grad():
        out = torch.compile(attend, backend="intfa", options={"pv_format": sys.argv[1]})(q, k, v)
    print("hits", counters["inductor"]["fxgraph_cache_hit"], "misses", counters["inductor"]["fxgraph_cache_miss"])
    print("checksum", repr(out.double().sum().item()))
""")


def _run(cache_dir: str, pv_format: str) -> tuple[str, str]:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir, "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
           "TORCHINDUCTOR_AUTOGRAD_CACHE": "1"}
    result = subprocess.run([sys.executable, "-c", SCRIPT, pv_format], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    return lines["hits"], lines["checksum"]


def test_other_settings_miss_the_cache_and_same_settings_hit(tmp_path):
    first_hits, fixed = _run(str(tmp_path), "fp16")
    other_hits, row_block = _run(str(tmp_path), "int8")
    again_hits, fixed_again = _run(str(tmp_path), "fp16")
    assert first_hits.startswith("0 ") and other_hits.startswith("0 ")
    assert not again_hits.startswith("0 "), "the same settings should be served from the cache"
    assert row_block != fixed
    assert fixed_again == fixed


def test_each_stage_and_setting_has_its_own_key_and_the_users_pass_runs_first():
    import torch
    from intfa_compile.passes.context import CompileContext
    from intfa_compile.passes.custom_passes import ChainedPass, IntfaPostGradPass, IntfaStructuralPass
    from torch._inductor.custom_graph_pass import CustomGraphPass

    from intfa_compile import config

    default, int8 = (CompileContext(config.resolve(options), {}) for options in ({}, {"pv_format": "int8"}))
    keys = {IntfaStructuralPass(default).uuid(), IntfaPostGradPass(default).uuid(), IntfaPostGradPass(int8).uuid()}
    assert len(keys) == 3 and IntfaPostGradPass(default).uuid() == IntfaPostGradPass(default).uuid()

    ran = []

    class Theirs(CustomGraphPass):
        def __call__(self, graph):
            ran.append("theirs")

        def uuid(self):
            return "theirs-v1"

    class Ours(IntfaPostGradPass):
        def run(self, graph):
            ran.append("ours")

    chained = ChainedPass(Theirs(), Ours(default))
    chained(torch.fx.Graph())
    assert ran == ["theirs", "ours"] and chained.uuid() == ("theirs-v1", Ours(default).uuid())
    assert ChainedPass(lambda graph: None, Ours(default)).uuid() is None  # a pass without a key: no caching

