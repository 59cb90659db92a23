"""What users hand the public entry points is checked: environment variables at import, the arguments of
``prepare``, ``collect`` and ``explain``, each refused with an error that names it (the op's and ``int8_sdpa``'s
checks are in ``test_ops.py``, the scales file's in ``test_scales_format.py``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import intfa_compile


def _import_with(**env: str) -> subprocess.CompletedProcess:
    script = "import intfa_compile; print(intfa_compile.config.enabled, intfa_compile.config.min_seq_len)"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


@pytest.mark.parametrize(("name", "value", "accepted"), [
    ("INTFA_ENABLED", "maybe", "expected one of 1, true, yes, on, 0, false, no, off"),
    ("INTFA_ENABLED", "2", "expected one of"),
    ("INTFA_MIN_SEQ_LEN", "-3", "expected a non-negative integer"),
    ("INTFA_MIN_SEQ_LEN", "1e3", "expected a non-negative integer"),
])
def test_unusable_environment_variables_fail_at_import_naming_the_variable(name, value, accepted):
    result = _import_with(**{name: value})
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ValueError: ") and f"{name}={value!r}" in last_line and accepted in last_line


def test_usable_environment_variables_are_read():
    result = _import_with(INTFA_ENABLED=" Off ", INTFA_MIN_SEQ_LEN="128")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False", "128"]
    result = _import_with(INTFA_ENABLED="", INTFA_MIN_SEQ_LEN="")  # empty: the default, as unset
    assert result.stdout.split() == ["True", "0"]


def _attention(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda: intfa_compile.prepare(42), TypeError, "prepare: model must be a torch.nn.Module or a callable"),
    (lambda: intfa_compile.prepare(_attention, observer="median"), ValueError, "prepare: observer must be one of"),
    (lambda: intfa_compile.prepare(_attention, options="fast"), TypeError, "prepare: options must be a dict"),
    (lambda: intfa_compile.prepare(_attention, options={"scales": None}), ValueError,
     r"prepare: options \['scales'\] are set by prepare itself"),
    (lambda: intfa_compile.prepare(_attention, options={"pv_fromat": "int8"}), ValueError,
     r"unknown intfa option\(s\) \['pv_fromat'\]"),
    (lambda: intfa_compile.prepare(_attention, options={"pv_format": "int8", "smooth_k": "yes"}), ValueError,
     "smooth_k"),
    (lambda: intfa_compile.collect(_attention), ValueError, "collect: prepared must be a model returned by"),
    (lambda: intfa_compile.explain("model"), TypeError, "explain: model must be a torch.nn.Module or a callable"),
    (lambda: intfa_compile.explain(_attention, options=[("pv_format", "int8")]), TypeError,
     "explain: options must be a dict"),
])
def test_entry_points_name_the_argument_they_refuse(call, error, message):
    with pytest.raises(error, match=message):
        call()
