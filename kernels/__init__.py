"""Triton kernels and their host wrappers (installed as ``intfa_compile.kernels``).

Import a kernel module only where it runs: Triton reads ``TRITON_INTERPRET`` when a kernel is defined.
"""
