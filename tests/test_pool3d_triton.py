"""Triton 3D pooling against the float64 reference: through the interpreter on CPU tensors
(TRITON_INTERPRET=1, set in conftest.py; fp32 / fp16, since bf16 arithmetic is wrong there) and on
a CUDA GPU when there is one (every dtype)."""
import pytest
import torch

from i3d_fast.kernels.triton import pool3d as triton_pool3d
from i3d_fast.ops import NoBackendError, avg_pool3d, max_pool3d

# (kernel, stride, padding): every I3D pool plus general ones (asymmetric explicit padding, odd
# strides, stride > kernel so that some input cells get no gradient).
CONFIGS = [
    ((1, 3, 3), (1, 2, 2), "same"),
    ((3, 3, 3), (1, 1, 1), "same"),
    ((3, 3, 3), (2, 2, 2), "same"),
    ((2, 2, 2), (2, 2, 2), "same"),
    ((2, 7, 7), (1, 1, 1), "valid"),
    ((3, 2, 3), (2, 1, 3), ((1, 2), (0, 1), (2, 0))),
    ((1, 2, 1), (2, 3, 2), "valid"),
]
# Shapes per config: N = 2, channel counts that leave tails in every block width (16, 32, 64 and
# two 64-blocks), small enough for the interpreter (~1 ms per program).
SHAPES = {(2, 7, 7): (2, 5, 3, 7, 8)}
DEFAULT_SHAPE = (2, 19, 5, 6, 7)


def _check(op, x, kernel, stride, padding, device="cpu", exact_max=True):
    """Forward and backward of backend='triton' against the float64 reference."""
    x = x.to(device)
    ref_x = x.double().requires_grad_(True)
    expected = op(ref_x, kernel, stride, padding, backend="reference")
    grad_out = torch.randn(expected.shape, dtype=torch.float64, device=device)
    expected.backward(grad_out)
    leaf = x.clone().requires_grad_(True)
    actual = op(leaf, kernel, stride, padding, backend="triton")
    actual.backward(grad_out.to(x.dtype))
    assert actual.dtype == x.dtype and actual.shape == expected.shape
    assert actual.is_contiguous(memory_format=torch.channels_last_3d)
    if op is max_pool3d and exact_max:
        torch.testing.assert_close(actual.double(), expected, rtol=0, atol=0, equal_nan=True)
    tol = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 2e-2}[x.dtype]
    torch.testing.assert_close(actual.double(), expected, rtol=tol, atol=tol, equal_nan=True)
    # gradients: sums of grad_out rounded to x.dtype; the tap choice must match exactly
    torch.testing.assert_close(leaf.grad.double(), ref_x.grad, rtol=2 * tol, atol=2 * tol * 4)


@pytest.mark.parametrize("kernel, stride, padding", CONFIGS)
@pytest.mark.parametrize("op", [max_pool3d, avg_pool3d])
def test_interpreter_fp32_matches_reference(op, kernel, stride, padding):
    x = torch.randn(SHAPES.get(kernel, DEFAULT_SHAPE)) - 1.0
    _check(op, x, kernel, stride, padding)


@pytest.mark.parametrize("channels", [5, 70])  # one 16-wide block with a tail; two 64-blocks
@pytest.mark.parametrize("op", [max_pool3d, avg_pool3d])
def test_interpreter_fp16_and_block_widths(op, channels):
    x = (torch.randn(2, channels, 4, 5, 5) - 1.0).half()
    _check(op, x, (3, 3, 3), (2, 1, 2), "same")


def test_interpreter_avg_fp16_error_within_twice_torch():
    x = torch.randn(1, 19, 5, 7, 6).half()
    expected = avg_pool3d(x.double(), 3, 2, "same", backend="reference")
    ours = (avg_pool3d(x, 3, 2, "same", backend="triton").double() - expected).abs().max().item()
    torch_err = (avg_pool3d(x, 3, 2, "same", backend="reference").double() - expected).abs().max().item()
    assert ours <= 2 * torch_err + 1e-7, (ours, torch_err)


def test_interpreter_ties_nan_inf_and_minus_inf_windows():
    x = torch.randint(-2, 2, (2, 21, 4, 5, 6)).float()  # ties everywhere: the first maximum wins
    x[0, 3, 1, 2, 2] = float("nan")
    x[1, 4, 2, 0, 0] = float("inf")
    x[1, 4, 2, 0, 1] = float("-inf")
    x[:, 7] = float("-inf")  # windows of -inf: the gradient goes to the first real cell
    for kernel, stride in (((3, 3, 3), (1, 1, 1)), ((2, 3, 3), (2, 2, 2))):
        _check(max_pool3d, x, kernel, stride, "same")


def test_interpreter_strided_inputs():
    base = torch.randn(2, 9, 6, 7, 8).contiguous(memory_format=torch.channels_last_3d)
    for x in (base[:, 1::2, :, ::2], base.transpose(3, 4), torch.randn(1, 3, 1, 5, 1).expand(2, 3, 4, 5, 6)):
        _check(max_pool3d, x, 3, 2, "same")
        _check(avg_pool3d, x, 3, 2, "same")


def test_interpreter_backward_is_deterministic():
    x = torch.randn(1, 19, 5, 6, 7, requires_grad=True)
    grads = []
    for _ in range(2):
        x.grad = None
        y = max_pool3d(x, 3, 1, "same", backend="triton")
        y.backward(torch.ones_like(y))
        grads.append(x.grad.clone())
    assert torch.equal(grads[0], grads[1])


def test_triton_needs_explicit_request_or_cuda(monkeypatch):
    x = torch.randn(1, 2, 4, 4, 4)
    y = max_pool3d(x, 2)  # auto picks the C++ kernels for CPU tensors, not the interpreter
    assert torch.equal(y, max_pool3d(x, 2, backend="reference"))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(NoBackendError, match="triton: needs a CUDA tensor"):
        max_pool3d(x, 2, backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(NoBackendError, match="triton: supports float32, float16, bfloat16, got float64"):
        max_pool3d(x.double(), 2, backend="triton")


def test_index_dtype_and_block_config():
    assert triton_pool3d.index_dtype((3, 3, 3)) == torch.uint8
    assert triton_pool3d.index_dtype((4, 8, 8)) == torch.uint8  # 256 taps: 0..255
    assert triton_pool3d.index_dtype((5, 8, 8)) == torch.int32
    assert triton_pool3d.block_config(5) == (32, 16)
    assert triton_pool3d.block_config(19) == (16, 32)
    assert triton_pool3d.block_config(1024) == (8, 64)


def test_interpreter_large_window_int32_taps():
    x = torch.randn(1, 3, 2, 12, 12)  # 2 x 12 x 12 = 288 taps
    _check(max_pool3d, x, (2, 12, 12), 1, "valid")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kernel, stride, padding", CONFIGS)
@pytest.mark.parametrize("op", [max_pool3d, avg_pool3d])
def test_gpu_matches_reference(op, kernel, stride, padding, dtype):
    x = (torch.randn(2, 83, 8, 9, 10) - 1.0).to(dtype)
    _check(op, x, kernel, stride, padding, device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_i3d_shape_auto_backend_and_determinism(dtype):
    x = torch.randn(1, 192, 8, 28, 28, device="cuda", dtype=dtype, requires_grad=True)
    y = max_pool3d(x, 3, 1, "same")  # auto: triton on CUDA
    torch.testing.assert_close(y, max_pool3d(x.detach(), 3, 1, "same", backend="reference"), rtol=0, atol=0)
    grads = []
    for _ in range(2):
        x.grad = None
        max_pool3d(x, 3, 1, "same").backward(torch.ones_like(y))
        grads.append(x.grad.clone())
    assert torch.equal(grads[0], grads[1])


def test_interpreter_with_the_gpu_tile(monkeypatch):
    """The GPU block config (8 positions x 64 channels) on a tiny input: many programs, tails in both."""
    monkeypatch.setattr(triton_pool3d, "INTERPRETER_TILE", triton_pool3d.TILE)
    x = torch.randn(1, 67, 2, 3, 4)
    _check(max_pool3d, x, 3, 1, "same")
    _check(avg_pool3d, x, 3, 2, "same")
