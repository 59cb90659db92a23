"""Triton kernels and their host wrappers (installed as ``intfa_compile.kernels``).

Import a kernel module only where it runs: Triton reads ``TRITON_INTERPRET`` when a kernel is defined.
"""

if __name__ != "intfa_compile.kernels":  # found by the bare name "kernels": see intfa_compile/bare_names.py
    import os as _os
    import runpy as _runpy

    _root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    _runpy.run_path(_os.path.join(_root, "intfa_compile", "bare_names.py"))["step_aside"](__name__, __file__)
