"""Keep the checkout's ``kernels/`` and ``passes/`` folders from hiding other packages of the same bare name.

The layout puts ``kernels/`` and ``passes/`` at the repository's root and installs them as
``intfa_compile.kernels`` and ``intfa_compile.passes``. Any process with the root on ``sys.path`` (pytest's
rootdir insertion, ``python -m ...`` from the checkout, a script run there) would also find them as ``kernels``
and ``passes``, shadowing Hugging Face's ``kernels`` package that transformers imports. Their ``__init__`` files
call :func:`step_aside` when imported by a bare name: the import then resolves as if the folder were not there.

Standard library only: it runs before (and without) torch, and is loaded by file path, not as
``intfa_compile.bare_names``, so that a bare import never imports this package.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys


def step_aside(name: str, init_file: str) -> None:
    """Replace the module being imported as ``name`` (our folder, whose ``__init__`` is ``init_file``) with what
    the rest of ``sys.path`` holds under that name; where nothing does, with an empty namespace: no file, no
    submodules, which is what a PEP 420 folder shadowing the name would give and what availability checks
    (transformers' ``_is_package_available``) read as "not installed"."""
    root = os.path.realpath(os.path.dirname(os.path.dirname(init_file)))
    elsewhere = [entry for entry in sys.path if os.path.realpath(entry or os.curdir) != root]
    spec = importlib.machinery.PathFinder.find_spec(name, elsewhere)
    if spec is None or spec.loader is None:
        spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
        spec.submodule_search_locations = []
        sys.modules[name] = importlib.util.module_from_spec(spec)
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # the import statement returns what sys.modules holds once __init__ ends
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
