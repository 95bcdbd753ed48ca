"""3D pooling: every backend against the plain-PyTorch reference (float64 oracle)."""
import itertools

import pytest
import torch

from i3d_fast.ops import NoBackendError, avg_pool3d, max_pool3d

CPU_BACKENDS = ["cpu", "aten"]
# (kernel, stride, padding): I3D's pools plus general ones (asymmetric explicit padding, odd strides).
CONFIGS = [
    ((1, 3, 3), (1, 2, 2), "same"),
    ((3, 3, 3), (2, 2, 2), "same"),
    ((2, 2, 2), (2, 2, 2), "same"),
    ((3, 3, 3), (1, 1, 1), "same"),
    ((2, 7, 7), (1, 1, 1), "valid"),
    ((2, 3, 1), (1, 3, 2), "same"),
    ((3, 2, 3), (2, 1, 3), ((1, 2), (0, 1), (2, 0))),
    ((3, 3, 3), None, 1),
]


def _input(shape=(2, 5, 6, 9, 8), dtype=torch.float64, channels_last=False):
    x = torch.randn(shape, dtype=dtype) - 2.0  # mostly negative: zero padding would show up
    return x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kernel, stride, padding", CONFIGS)
@pytest.mark.parametrize("op", [max_pool3d, avg_pool3d])
def test_forward_matches_reference(op, kernel, stride, padding, backend):
    x = _input((2, 5, 6, 9, 8)) if kernel != (2, 7, 7) else _input((1, 7, 3, 7, 8))
    expected = op(x, kernel, stride, padding, backend="reference")
    actual = op(x, kernel, stride, padding, backend=backend)
    assert actual.shape == expected.shape
    assert actual.is_contiguous(memory_format=torch.channels_last_3d)
    if op is max_pool3d:
        assert torch.equal(actual, expected)  # max is exact
    else:
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_same_max_pool_ignores_padding_on_negative_input():
    x = -torch.rand(1, 3, 1, 4, 4, dtype=torch.float64) - 1.0  # every value <= -1
    y = max_pool3d(x, (1, 3, 3), (1, 2, 2), "same", backend="cpu")
    assert y.shape == (1, 3, 1, 2, 2)
    assert (y < -1 + 1e-12).all(), "a padded zero won the max"
    # the last window along H and W covers rows/cols 2..3 plus one padded cell at the end
    torch.testing.assert_close(y[..., 1, 1], x[..., 2:, 2:].amax(dim=(-1, -2)))


def test_same_avg_pool_counts_only_real_cells():
    x = torch.ones(1, 1, 1, 3, 3, dtype=torch.float64)
    y = avg_pool3d(x, (1, 3, 3), 1, "same", backend="cpu")
    assert torch.equal(y, torch.ones_like(y))  # zero padding counted would give 4/9 in the corners


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("op", [max_pool3d, avg_pool3d])
def test_low_precision_cpu_matches_reference(op, dtype):
    x = _input((2, 19, 5, 7, 6), dtype=torch.float32).to(dtype)
    expected = op(x.double(), 3, 2, "same", backend="reference")
    actual = op(x, 3, 2, "same", backend="cpu")
    assert actual.dtype == dtype
    if op is max_pool3d:
        assert torch.equal(actual.double(), expected)
    else:  # error against fp64 at most 2x that of plain PyTorch in the same dtype (flash-attention's rule)
        ours = (actual.double() - expected).abs().max().item()
        torch_err = (op(x, 3, 2, "same", backend="reference").double() - expected).abs().max().item()
        assert ours <= 2 * torch_err + torch.finfo(dtype).tiny, (ours, torch_err)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kernel, stride, padding", CONFIGS[:4] + CONFIGS[6:])
@pytest.mark.parametrize("op", [max_pool3d, avg_pool3d])
def test_backward_matches_reference(op, kernel, stride, padding, backend):
    x = _input((2, 5, 6, 9, 8))
    expected_y = op(x, kernel, stride, padding, backend="reference")
    grad_out = torch.randn_like(expected_y)
    grads = []
    for b in ("reference", backend):
        leaf = x.clone().requires_grad_(True)
        op(leaf, kernel, stride, padding, backend=b).backward(grad_out)
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-12)


def test_max_backward_ties_go_to_the_first_element():
    x = torch.zeros(1, 2, 2, 2, 2, dtype=torch.float64, requires_grad=True)  # one window, all tied
    max_pool3d(x, 2, 2, "valid", backend="cpu").sum().backward()
    expected = torch.zeros_like(x)
    expected[:, :, 0, 0, 0] = 1.0
    assert torch.equal(x.grad, expected)


def test_reference_gradcheck_float64():
    x = torch.randn(1, 2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    for op in (max_pool3d, avg_pool3d):
        assert torch.autograd.gradcheck(lambda t: op(t, 3, 2, "same", backend="reference"), (x,))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cpu_gradcheck_float64(backend):
    x = torch.randn(1, 3, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    for op in (max_pool3d, avg_pool3d):
        assert torch.autograd.gradcheck(lambda t: op(t, (2, 3, 2), (1, 2, 1), "same", backend=backend), (x,))


def test_opcheck():
    x = torch.randn(2, 3, 4, 5, 6, requires_grad=True)
    for mode, backend in itertools.product(("max", "avg"), ("cpu", "reference")):
        torch.library.opcheck(torch.ops.i3d_fast.pool3d.default,
                              (x, mode, [3, 3, 3], [2, 1, 2], [1, 1, 0, 2, 1, 1], backend))


def test_nan_propagates_through_max():
    x = torch.randn(1, 1, 2, 4, 4)
    x[0, 0, 1, 2, 2] = float("nan")
    y = max_pool3d(x, 2, 2, "valid", backend="cpu")
    assert torch.isnan(y[0, 0, 0, 1, 1]) and torch.isfinite(y).sum() == 3


def test_torch_compile_traces_the_custom_op():
    x = torch.randn(1, 4, 5, 6, 7)
    compiled = torch.compile(lambda t: max_pool3d(t, 3, 2, "same"), backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(x), max_pool3d(x, 3, 2, "same"))


@pytest.mark.parametrize("bad, message", [
    (torch.randn(2, 3, 4, 5), "5-D"),
    (torch.randint(0, 5, (1, 1, 4, 4, 4)), "floating-point"),
])
def test_bad_inputs_raise_clear_errors(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        max_pool3d(bad, 3, 2)


def test_kernel_larger_than_padded_input():
    with pytest.raises(ValueError, match="larger than the padded input"):
        max_pool3d(torch.randn(1, 1, 1, 5, 5), (2, 1, 1), 1, "valid")
    with pytest.raises(ValueError, match="smaller than the kernel"):
        max_pool3d(torch.randn(1, 1, 4, 5, 5), 2, 1, 2)


def test_non_contiguous_input_gives_the_right_result():
    x = torch.randn(2, 6, 7, 8, 9, dtype=torch.float64)[:, ::2, :, 1:, ::2]
    assert not x.is_contiguous()
    torch.testing.assert_close(max_pool3d(x, 3, 2, backend="cpu"), max_pool3d(x, 3, 2, backend="reference"))


def test_no_backend_error_names_every_backend_and_reason():
    x = torch.randint(0, 5, (1, 1, 4, 4, 4)).float().to(torch.int32)  # int: every backend refuses
    from i3d_fast.ops.pool3d import pool3d_op

    with pytest.raises(NoBackendError) as info:
        pool3d_op(x, "max", [2, 2, 2], [2, 2, 2], [0] * 6, "auto")
    text = str(info.value)
    for name in ("cpu", "aten", "reference"):
        assert f"  {name}: supports" in text
    with pytest.raises(ValueError, match="unknown backend"):
        max_pool3d(torch.randn(1, 1, 4, 4, 4), 2, backend="cudnn")
