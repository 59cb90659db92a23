"""Ahead-of-time deployment: ``torch.export`` and AOTInductor with INT8 attention.

``inductor_configs(**options)`` returns the Inductor config patches the ``intfa`` backend compiles under (the same
passes, the same settings, hence the same cache key), for ``torch._inductor.aoti_compile_and_package``::

    exported = torch.export.export(model, args)
    path = torch._inductor.aoti_compile_and_package(
        exported, inductor_configs=intfa_compile.inductor_configs(exported=exported))
    # in the serving process:
    import intfa_compile  # registers the intfa:: operators the package calls
    runner = torch._inductor.aoti_load_package(path)

The package's generated code calls ``intfa::int8_attention`` (and ``intfa::hadamard_quantize``) through
AOTInductor's proxy executor, which dispatches to the operators registered in Python: the loading process must
import ``intfa_compile`` first (without it, loading fails with "Could not find schema for intfa::int8_attention"
rather than running anything else). There is no C++ implementation of the operators, so a process without Python
cannot run the package. Static ``scales`` travel in the package: their values are arguments of the
``intfa::static_amax`` calls in the compiled code.
"""

from __future__ import annotations

from typing import Any

import torch

from . import config
from .arguments import checked_options
from .sites import module_paths_of


def inductor_configs(exported: torch.export.ExportedProgram | None = None, **options: Any) -> dict[str, Any]:
    """Inductor config patches that run attention as INT8 in an AOTInductor compile, under ``options`` (the keys of
    ``intfa_compile.config``, as ``torch.compile(..., options=...)`` takes them). ``exported``: the program about to
    be compiled, whose module paths name the sites in logs and key static ``scales`` as under ``torch.compile``;
    without it, sites are named by where the traced nodes say they come from."""
    if "calibrate" in options:
        raise ValueError("inductor_configs: calibration runs under torch.compile (intfa_compile.prepare), not in an "
                         "exported package")
    options = checked_options(options, "inductor_configs")
    settings = config.resolve(options)
    from intfa_compile.passes.context import CompileContext

    from .backend import inductor_patches

    paths = module_paths_of(exported.graph_module) if exported is not None else {}
    return inductor_patches(CompileContext(settings, paths), None)
