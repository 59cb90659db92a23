"""intfa_compile/arguments.py: what the public entry points check of their arguments before compiling anything."""

from __future__ import annotations

import pytest
import torch

from intfa_compile.arguments import check_model, checked_options


def test_a_model_is_anything_torch_compile_takes():
    check_model(torch.nn.Linear(2, 2), "prepare")
    check_model(lambda x: x, "explain")
    with pytest.raises(TypeError, match="explain: model must be a torch.nn.Module or a callable, got str"):
        check_model("model", "explain")


def test_options_are_checked_as_torch_compile_checks_them():
    assert checked_options(None, "prepare") == {}
    assert checked_options({"pv_format": "int8"}, "prepare") == {"pv_format": "int8"}
    with pytest.raises(TypeError, match="options must be a dict"):
        checked_options([("pv_format", "int8")], "prepare")
    with pytest.raises(ValueError, match="valid options are"):
        checked_options({"pv_fromat": "int8"}, "prepare")
    with pytest.raises(ValueError, match="pv_format='fp8' takes P's fixed scale only"):
        checked_options({"pv_format": "fp8", "p_scale": "row_block"}, "prepare")  # combinations too


def test_options_an_entry_point_sets_itself_are_refused():
    with pytest.raises(ValueError, match=r"prepare: options \['scales'\] are set by prepare itself"):
        checked_options({"scales": None, "pv_format": "int8"}, "prepare", reserved=("calibrate", "scales"))
