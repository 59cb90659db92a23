"""intfa-compile in torch's logging: ``TORCH_LOGS="intfa"`` shows each site's decision, ``+intfa`` adds debug
lines, the ``intfa_graph`` artifact prints the graph each rewrite replaces, and ``TORCH_LOGS="intfa_compile"``
(the logger's module name, which torch accepts for any module) works with every supported torch. Each case runs
in a fresh process: torch reads ``TORCH_LOGS`` when it is imported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

SCRIPT = """
import torch
import torch.nn.functional as F
attention = torch.compile(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), backend="intfa")
q = torch.randn(1, 2, 16, 8)
attention(q, q, q)
"""

# torch parses TORCH_LOGS after device-backend autoload (where our names are registered) from 2.13 on.
REGISTERED_BEFORE_PARSE = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 13)


def _run(torch_logs: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TORCH_LOGS": torch_logs})


def _both_names(prefix: str = "") -> list:
    """The logger's module name, which every torch accepts, and the short name, which needs registration first."""
    short = pytest.param(f"{prefix}intfa", marks=pytest.mark.skipif(
        not REGISTERED_BEFORE_PARSE, reason="torch < 2.13 parses TORCH_LOGS before backends can register names"))
    return [f"{prefix}intfa_compile", short]


@pytest.mark.parametrize("name", _both_names())
def test_torch_logs_shows_each_site_decision(name):
    result = _run(name)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "intfa: attention at" in result.stderr and "runs half-INT8" in result.stderr
    assert "the graph it replaces" not in result.stderr  # the artifact is off unless named


@pytest.mark.skipif(not REGISTERED_BEFORE_PARSE, reason="torch < 2.13 parses TORCH_LOGS before registration")
def test_the_graph_artifact_prints_what_each_rewrite_replaces():
    result = _run("intfa_graph")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "to run half-INT8" in result.stderr
    graph = result.stderr[result.stderr.index("the graph it replaces:"):]
    assert "scaled_dot_product" in graph
    assert "runs half-INT8" not in result.stderr  # the decisions are the intfa log's, not named here


def test_names_are_registered_with_torch_logging():
    from torch._logging import _internal

    assert _internal.log_registry.is_log("intfa") and _internal.log_registry.is_artifact("intfa_graph")


def test_set_logs_enables_the_artifact_in_process(capfd):
    import logging

    import torch.nn.functional as F

    if "TORCH_LOGS" in os.environ:
        pytest.skip("set_logs is ignored while TORCH_LOGS is set")
    torch._logging.set_logs(modules={"intfa_graph": True, "intfa": logging.WARNING})
    try:
        attention = torch.compile(lambda q, k, v: F.scaled_dot_product_attention(q, k, v), backend="intfa")
        q = torch.randn(1, 2, 16, 8)
        attention(q, q, q)
    finally:
        torch._logging.set_logs()
    assert "the graph it replaces:" in capfd.readouterr().err


@pytest.mark.parametrize("name", _both_names("+"))
def test_debug_level_adds_what_the_passes_found(name):
    result = _run(name)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "found in form sdpa" in result.stderr and "compiling a graph of" in result.stderr
    assert "runs half-INT8" in result.stderr
