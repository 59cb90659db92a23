"""Run by ``test_export.py`` in a fresh process: load an AOTInductor package, run it on saved inputs, and print
(as one JSON line) how many times the INT8 attention op ran and the cosine of the output to saved eager output."""

from __future__ import annotations

import json
import sys
from unittest import mock

import torch
import torch.nn.functional as F

import intfa_compile  # noqa: F401  (registers the intfa:: operators the package calls)
from intfa_compile import ops
from intfa_compile.cpu_fast_attention import fast_int8_attention_cpu

package, saved = sys.argv[1], torch.load(sys.argv[2])
calls = []


def counted(call, *args, **kwargs):
    calls.append(tuple(call.q.shape))
    return fast_int8_attention_cpu(call, *args, **kwargs)


runner = torch._inductor.aoti_load_package(package)
with torch.no_grad(), mock.patch.object(ops, "fast_int8_attention_cpu", counted):
    out = runner(*saved["args"], **saved["kwargs"])
print(json.dumps({"int8_calls": len(calls), "cosine": F.cosine_similarity(out.flatten().double(),
                                                                         saved["eager"].flatten().double(),
                                                                         dim=0).item()}))
