"""FX graph passes that find attention and rewrite it to INT8 (installed as ``intfa_compile.passes``)."""
