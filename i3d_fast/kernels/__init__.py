"""Kernels, one package per backend: ``reference`` (plain PyTorch, the oracle), ``cpu`` (C++),
``triton`` (GPU, and CPU through TRITON_INTERPRET=1) and ``cuda`` (CUDA C++ compiled just in time).

Ops in :mod:`i3d_fast.ops` validate arguments and dispatch here; kernels assume valid input.
"""
