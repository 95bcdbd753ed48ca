"""Composite kernels from stock ATen ops (pad + pool): any device, autograd by ATen. The baseline
that the benchmarks compare against, and the fallback where no hand-written kernel fits."""
