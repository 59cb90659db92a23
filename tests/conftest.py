"""Test setup: Triton's interpreter on machines without a GPU, and a clean compiler state per test."""

import os

# Read by Triton when a kernel module is imported, so it must be set before any test imports one.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests that count rewritten sites need the pass to run, not a cached graph; the cache has its own test.
os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "0")
os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from torch._dynamo.utils import counters  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_compiler_state():
    """Each test compiles from scratch and counts only its own rewrites."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)
