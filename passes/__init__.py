"""FX graph passes that find attention and rewrite it to INT8 (installed as ``intfa_compile.passes``)."""

if __name__ != "intfa_compile.passes":  # found by the bare name "passes": see intfa_compile/bare_names.py
    import os as _os
    import runpy as _runpy

    _root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    _runpy.run_path(_os.path.join(_root, "intfa_compile", "bare_names.py"))["step_aside"](__name__, __file__)
