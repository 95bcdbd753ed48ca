"""Plain-PyTorch reference kernels: slow, any device, float64-capable. The oracle for tests."""
