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
    ((1, 3, 3), (1, 2, 2), ((0, 0), (1, 1), (1, 1))),  # symmetric: ATen's own padding= (no padded copy)
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
    for mode, backend in itertools.product(("max", "avg"), ("cpu", "reference", "triton")):
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
    (torch.randn(1, 2, 3, 4, 5, 6), "5-D"),
    (torch.randn(5), "5-D"),
    (torch.randint(0, 5, (1, 1, 4, 4, 4)), "floating-point"),
    (torch.zeros(1, 1, 4, 4, 4, dtype=torch.bool), "floating-point"),
    (torch.zeros(1, 1, 4, 4, 4, dtype=torch.complex64), "floating-point"),
    (torch.zeros(1, 1, 0, 4, 4), "empty along T"),
    ([[1.0]], "Tensor"),
])
@pytest.mark.parametrize("op", [max_pool3d, avg_pool3d])
def test_bad_inputs_raise_clear_errors(op, bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        op(bad, 3, 2, "same")


@pytest.mark.parametrize("kwargs, message", [
    ({"kernel_size": 0}, "kernel_size"),
    ({"kernel_size": (3, 3)}, "kernel_size"),
    ({"kernel_size": 3, "stride": (1, 0, 1)}, "stride"),
    ({"kernel_size": 3, "padding": "full"}, "padding"),
    ({"kernel_size": 3, "padding": (1, -1, 0)}, "padding"),
])
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        max_pool3d(torch.randn(1, 2, 4, 4, 4), **kwargs)


@pytest.mark.parametrize("backend", CPU_BACKENDS + ["reference"])
def test_empty_batch_or_channels(backend):
    for shape in ((0, 3, 4, 5, 6), (2, 0, 4, 5, 6)):
        x = torch.randn(shape, requires_grad=True)
        y = max_pool3d(x, 3, 2, "same", backend=backend)
        assert y.shape == shape[:2] + (2, 3, 3)
        y.sum().backward()
        assert x.grad.shape == shape


def test_kernel_larger_than_padded_input():
    with pytest.raises(ValueError, match="larger than the padded input"):
        max_pool3d(torch.randn(1, 1, 1, 5, 5), (2, 1, 1), 1, "valid")
    with pytest.raises(ValueError, match="smaller than the kernel"):
        max_pool3d(torch.randn(1, 1, 4, 5, 5), 2, 1, 2)


def _strided_views():
    base = torch.randn(2, 6, 7, 8, 9, dtype=torch.float64)
    cl = base.contiguous(memory_format=torch.channels_last_3d)
    return {
        "sliced": base[:, ::2, :, 1:, ::2],
        "channels_last_sliced": cl[:, 1:, ::2, :, 1::2],  # channels-last memory, odd strides
        "expanded": torch.randn(1, 3, 1, 6, 1, dtype=torch.float64).expand(2, 3, 5, 6, 7),  # zero strides
        "permuted": torch.randn(2, 7, 8, 4, 5, dtype=torch.float64).permute(0, 3, 4, 1, 2),
        "negative_values_channels_last_contiguous": cl - 3.0,
    }


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("view", sorted(_strided_views()))
@pytest.mark.parametrize("op", [max_pool3d, avg_pool3d])
def test_non_contiguous_input_gives_the_right_result(op, view, backend):
    x = _strided_views()[view]
    expected = op(x, 3, 2, "same", backend="reference")
    torch.testing.assert_close(op(x, 3, 2, "same", backend=backend), expected, rtol=1e-12, atol=1e-12)
    grad_out = torch.randn_like(expected)[..., ::1].transpose(2, 4).contiguous().transpose(2, 4)  # odd strides
    grads = []
    for b in ("reference", backend):
        leaf = x.detach().clone().requires_grad_(True)
        op(leaf, 3, 2, "same", backend=b).backward(grad_out)
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-12)


# Channel counts hitting every vector path of the C++ kernels: for float32 (16 lanes) 213 = 8 x 16
# (block of 8) + 4 x 16 (block of 4) + 16 (single) + 5 (partial); float64 has 8 lanes.
WIDE_CONFIGS = [
    ((3, 3, 3), (1, 1, 1), "same"),   # overlapping T windows: the plane path
    ((3, 3, 3), (2, 2, 2), "same"),   # plane path, strided
    ((1, 3, 3), (1, 2, 2), "same"),   # direct path
    ((2, 2, 2), (2, 2, 2), "same"),   # direct, kT == sT
    ((3, 2, 3), (2, 1, 3), ((1, 2), (0, 1), (2, 0))),
    ((1, 1, 1), (2, 3, 2), "valid"),  # stride > kernel: some input cells get no gradient
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel, stride, padding", WIDE_CONFIGS)
@pytest.mark.parametrize("op", [max_pool3d, avg_pool3d])
def test_cpu_vector_paths_match_reference(op, kernel, stride, padding, dtype):
    x = _input((2, 213, 5, 6, 7), dtype=dtype)
    expected = op(x.double(), kernel, stride, padding, backend="reference")
    actual = op(x, kernel, stride, padding, backend="cpu")
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    if op is max_pool3d:
        assert torch.equal(actual.double(), expected)
    else:
        torch.testing.assert_close(actual.double(), expected, rtol=tol, atol=tol)
    grad_out = torch.randn(expected.shape, dtype=dtype)
    grads = []
    for b, t in (("reference", x.double()), ("cpu", x)):
        leaf = t.clone().requires_grad_(True)
        op(leaf, kernel, stride, padding, backend=b).backward(grad_out.to(t.dtype))
        grads.append(leaf.grad.double())
    torch.testing.assert_close(grads[1], grads[0], rtol=tol, atol=tol)


def test_cpu_large_window_uses_wide_tap_index():
    x = _input((1, 21, 2, 13, 12))  # kernel of 2 x 12 x 12 = 288 taps: int32 tap indices
    grads = []
    for b in ("reference", "cpu"):
        leaf = x.clone().requires_grad_(True)
        y = max_pool3d(leaf, (2, 12, 12), 1, "valid", backend=b)
        y.backward(torch.arange(y.numel(), dtype=y.dtype).reshape(y.shape))
        grads.append(leaf.grad)
    assert torch.equal(grads[1], grads[0])


def _nasty(shape, dtype=torch.float64):
    """Values with ties, +-inf and NaN, placed so that windows of every path meet them."""
    x = torch.randint(-3, 3, shape).to(dtype)  # many ties
    flat = x.view(-1)
    n = flat.numel()
    flat[torch.randperm(n)[: n // 40]] = float("inf")
    flat[torch.randperm(n)[: n // 40]] = float("-inf")
    flat[torch.randperm(n)[: n // 60]] = float("nan")
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel, stride, padding", WIDE_CONFIGS[:4])
def test_cpu_max_ties_nan_and_inf_match_reference(kernel, stride, padding, dtype):
    x = _nasty((2, 37, 5, 6, 7), dtype)
    expected = max_pool3d(x.double(), kernel, stride, padding, backend="reference")
    actual = max_pool3d(x, kernel, stride, padding, backend="cpu")
    torch.testing.assert_close(actual.double(), expected, rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(expected).any() and torch.isinf(expected).any()
    grad_out = torch.randn(expected.shape, dtype=dtype)
    grads = []
    for b, t in (("reference", x.double()), ("cpu", x)):
        leaf = t.clone().requires_grad_(True)
        max_pool3d(leaf, kernel, stride, padding, backend=b).backward(grad_out.to(t.dtype))
        grads.append(leaf.grad.double())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_all_minus_inf_window_sends_its_gradient_to_its_first_real_cell(backend):
    x = torch.full((1, 20, 1, 3, 3), float("-inf"), dtype=torch.float64, requires_grad=True)
    max_pool3d(x, (1, 3, 3), 2, "same", backend=backend).sum().backward()
    # SAME pads (1, 1) along H and W: the windows cover rows/cols [-1, 2) and [1, 4), so their first
    # real cells are 0 and 1 (never a padded cell, where the gradient would be lost)
    expected = torch.zeros_like(x)
    expected[..., :2, :2] = 1
    assert torch.equal(x.grad, expected)


def test_no_backend_error_names_every_backend_and_reason():
    x = torch.randint(0, 5, (1, 1, 4, 4, 4)).float().to(torch.int32)  # int: every backend refuses
    from i3d_fast.ops.pool3d import pool3d_op

    with pytest.raises(NoBackendError) as info:
        pool3d_op(x, "max", [2, 2, 2], [2, 2, 2], [0] * 6, "auto")
    text = str(info.value)
    for name in ("cpu", "aten", "reference"):
        assert f"  {name}: supports" in text
    assert "  triton: runs CPU tensors (interpreted) only when requested" in text
    with pytest.raises(ValueError, match="unknown backend"):
        max_pool3d(torch.randn(1, 1, 4, 4, 4), 2, backend="cudnn")


@pytest.mark.parametrize("threads", [1, 3, 4])
def test_cpu_work_splits_match_reference(threads):
    """Thread counts that split the work into channel chunks and blocks of output planes."""
    x = _nasty((1, 300, 7, 5, 6), torch.float32)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for kernel, stride, padding in WIDE_CONFIGS:
            for op in (max_pool3d, avg_pool3d):
                expected = op(x.double(), kernel, stride, padding, backend="reference")
                actual = op(x, kernel, stride, padding, backend="cpu")
                torch.testing.assert_close(actual.double(), expected, rtol=1e-6, atol=1e-6, equal_nan=True)
                leaf = x.clone().requires_grad_(True)
                op(leaf, kernel, stride, padding, backend="cpu").backward(torch.ones_like(actual))
                ref = x.double().requires_grad_(True)
                op(ref, kernel, stride, padding, backend="reference").backward(torch.ones_like(expected))
                torch.testing.assert_close(leaf.grad.double(), ref.grad, rtol=1e-6, atol=1e-6, equal_nan=True)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("op", [max_pool3d, avg_pool3d])
def test_cpu_output_larger_than_input(op):
    """Padding of k - 1 on both sides: more outputs than inputs (the max backward's scratch)."""
    x = _input((2, 37, 2, 2, 3))
    expected = op(x, 3, 1, 2, backend="reference")
    torch.testing.assert_close(op(x, 3, 1, 2, backend="cpu"), expected, rtol=1e-12, atol=1e-12)
    grad_out = torch.randn_like(expected)
    grads = []
    for b in ("reference", "cpu"):
        leaf = x.clone().requires_grad_(True)
        op(leaf, 3, 1, 2, backend=b).backward(grad_out)
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kernel, stride, padding", WIDE_CONFIGS + [((2, 12, 12), (1, 1, 1), "valid")])
def test_cpu_training_max_pool_saves_its_taps_not_its_input(kernel, stride, padding, dtype):
    """In training the C++ max pool records each window's first-maximum tap (uint8; int32 past 256 taps)
    and saves that instead of x: the same output as the plain forward (ties, +-inf, NaN) and the same
    gradient as recomputing the taps from x."""
    from i3d_fast.kernels.cpu import pool3d as cpu_pool3d
    from i3d_fast.padding import resolve_padding

    x = _nasty((2, 37, 5, 13, 12), torch.float64).to(dtype).contiguous(memory_format=torch.channels_last_3d)
    plain = max_pool3d(x, kernel, stride, padding, backend="cpu")
    saved = []
    leaf = x.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = max_pool3d(leaf, kernel, stride, padding, backend="cpu")
    bits = torch.int16 if dtype == torch.bfloat16 else torch.int32
    assert torch.equal(y.reshape(-1).view(bits), plain.reshape(-1).view(bits))  # bit for bit, NaNs too
    wide = kernel[0] * kernel[1] * kernel[2] > 256
    assert [(t.dtype, t.shape) for t in saved] == [(torch.int32 if wide else torch.uint8, y.shape)]
    grad_out = torch.randn(y.shape).to(dtype)
    y.backward(grad_out)
    pads = resolve_padding(x.shape[2:], kernel, stride, padding)
    from_x = cpu_pool3d.pool3d_backward(grad_out, x, tuple(x.shape), "max", kernel, stride, pads)
    assert torch.equal(leaf.grad, from_x)
