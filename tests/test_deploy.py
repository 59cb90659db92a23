"""intfa_compile/deploy.py: the Inductor config patches an AOTInductor compile runs attention as INT8 under (the
end-to-end export and package runs are in ``test_export.py``)."""

from __future__ import annotations

import pytest
import torch
from intfa_compile.passes.custom_passes import IntfaPostGradPass, IntfaStructuralPass

from intfa_compile import inductor_configs


def test_the_patches_install_both_passes_under_the_options():
    patches = inductor_configs(pv_format="int8")
    structural, post_grad = patches["joint_custom_pre_pass"], patches["post_grad_custom_post_pass"]
    assert isinstance(structural, IntfaStructuralPass) and isinstance(post_grad, IntfaPostGradPass)
    assert structural.context.settings.pv_format == "int8" and post_grad.context is structural.context
    assert post_grad.uuid() != inductor_configs()["post_grad_custom_post_pass"].uuid()  # the options are in the key


def test_sites_are_named_by_the_exported_programs_module_paths():
    class Block(torch.nn.Module):
        def forward(self, q: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.scaled_dot_product_attention(q, q, q)

    model = torch.nn.Sequential(Block())
    exported = torch.export.export(model, (torch.randn(1, 2, 8, 16),))
    paths = inductor_configs(exported=exported)["joint_custom_pre_pass"].context.module_paths
    assert "0" in set(paths.values())


def test_calibration_and_unknown_options_are_refused():
    with pytest.raises(ValueError, match="calibration runs under torch.compile"):
        inductor_configs(calibrate="session0")
    with pytest.raises(ValueError, match="valid options are"):
        inductor_configs(pv_fromat="int8")
