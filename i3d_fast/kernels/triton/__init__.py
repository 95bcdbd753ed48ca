"""Triton kernels (CUDA tensors; CPU tensors through TRITON_INTERPRET=1 in tests).

Each kernel module lists every kernel/config/dtype it can launch in ``aot_specs()`` so that
:mod:`i3d_fast.kernels.triton.aot` can compile them ahead of time for sm_80 / sm_90 without a GPU.
"""
