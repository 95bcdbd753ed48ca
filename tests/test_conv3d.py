"""Fused conv3d op: every CPU backend against the float64 reference."""
import pytest
import torch
import torch.nn.functional as F

from i3d_fast.ops import conv3d
from i3d_fast.ops.conv3d import inception_block_op

CL = torch.channels_last_3d
# (Cin, Cout, kernel, stride, padding, input T, H, W): every I3D conv configuration plus general ones.
CONFIGS = [
    (3, 8, (7, 7, 7), 2, "same", (9, 12, 11)),       # Conv3d_1a RGB: SAME pads (3,3)/(2,3)/(2,3)
    (2, 8, (7, 7, 7), 2, "same", (8, 10, 10)),       # Conv3d_1a flow: pads (2,3)
    (6, 5, (1, 1, 1), 1, "same", (4, 5, 6)),          # 1x1x1 (GEMM path)
    (5, 7, (3, 3, 3), 1, "same", (4, 5, 6)),          # 3x3x3 stride 1
    (6, 4, (1, 1, 1), 1, "valid", (1, 1, 1)),         # the Logits conv
    (4, 3, (2, 3, 1), (1, 2, 3), ((1, 0), (0, 2), (1, 1)), (5, 7, 8)),  # general, asymmetric explicit
    (3, 5, (1, 1, 1), 2, "same", (5, 6, 7)),          # strided 1x1x1 (not the GEMM path)
]


def _case(cin, cout, kernel, shape, dtype=torch.float64):
    x = torch.randn(2, cin, *shape, dtype=dtype)
    w = torch.randn(cout, cin, *kernel, dtype=dtype)
    scale = torch.rand(cout, dtype=dtype) + 0.5
    shift = torch.randn(cout, dtype=dtype)
    return x, w, scale, shift


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("cin, cout, kernel, stride, padding, shape", CONFIGS)
def test_aten_matches_reference(cin, cout, kernel, stride, padding, shape, relu):
    x, w, scale, shift = _case(cin, cout, kernel, shape)
    expected = conv3d(x, w, scale, shift, stride, padding, relu, backend="reference")
    actual = conv3d(x, w, scale, shift, stride, padding, relu, backend="aten")
    assert actual.is_contiguous(memory_format=CL)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


def test_reference_matches_padded_conv_by_hand():
    x, w, _, shift = _case(3, 4, (7, 7, 7), (9, 12, 11))
    expected = F.conv3d(F.pad(x, (3, 3, 2, 3, 3, 3)), w, shift, stride=2)  # TF SAME pads for T=9, H=12, W=11
    torch.testing.assert_close(conv3d(x, w, None, shift, 2, "same", backend="reference"), expected)


@pytest.mark.parametrize("cin, cout, kernel, stride, padding, shape", [CONFIGS[2], CONFIGS[3]])
def test_out_slice_leaves_other_channels_alone(cin, cout, kernel, stride, padding, shape):
    x, w, scale, shift = _case(cin, cout, kernel, shape)
    expected = conv3d(x, w, scale, shift, stride, padding, True, backend="reference")
    out = torch.full((2, cout + 5, *expected.shape[2:]), 7.0, dtype=x.dtype).contiguous(memory_format=CL)
    result = conv3d(x, w, scale, shift, stride, padding, True, out=out, channel_offset=2, backend="aten")
    assert result is out
    torch.testing.assert_close(out[:, 2:2 + cout], expected)
    assert (out[:, :2] == 7).all() and (out[:, 2 + cout:] == 7).all()


@pytest.mark.parametrize("backend", ["aten", "reference"])
def test_gradcheck(backend):
    x, w, scale, shift = _case(2, 2, (2, 2, 3), (2, 3, 4))
    args = [t[:1].requires_grad_() if t is x else t.requires_grad_() for t in (x, w, scale, shift)]
    assert torch.autograd.gradcheck(lambda *a: conv3d(*a, (1, 2, 1), "same", True, backend=backend), args)


def test_opcheck():
    x, w, scale, shift = _case(3, 4, (3, 3, 3), (3, 4, 5), dtype=torch.float32)
    torch.library.opcheck(torch.ops.i3d_fast.conv3d.default,
                          (x.requires_grad_(), w, scale, shift, [1, 1, 1], [1, 1, 1, 1, 0, 2], True, False, "aten"))
    out = torch.zeros(2, 6, 3, 4, 5).contiguous(memory_format=CL)
    torch.library.opcheck(torch.ops.i3d_fast.conv3d_into.default,
                          (x, w, scale, shift, out, 1, [1, 1, 1], [1, 1, 1, 1, 1, 1], True, False, "aten"))


def _block_params(cin, widths, dtype=torch.float64):
    b0, b1a, b1b, b2a, b2b, b3b = widths
    shapes = [(b0 + b1a + b2a, cin, 1), (b1b, b1a, 3), (b2b, b2a, 3), (b3b, cin, 1)]
    weights = [torch.randn(o, i, k, k, k, dtype=dtype) for o, i, k in shapes]
    shifts = [torch.randn(o, dtype=dtype) for o, _, _ in shapes]
    return weights, shifts


@pytest.mark.parametrize("backend", ["aten"])
def test_inception_block_matches_unfused_branches(backend):
    widths = [3, 4, 5, 2, 3, 4]
    x = torch.randn(2, 6, 3, 5, 4, dtype=torch.float64) - 0.5
    weights, shifts = _block_params(6, widths)
    out = inception_block_op(x, weights, shifts, widths, False, backend)
    b0, b1a = widths[0], widths[1]
    ref = lambda t, w, s, pool=None: torch.relu(F.conv3d(t, w, s, padding=w.shape[-1] // 2))  # noqa: E731
    mid = ref(x, weights[0], shifts[0])
    pooled = torch.nn.functional.max_pool3d(F.pad(x, (1, 1, 1, 1, 1, 1), value=float("-inf")), 3, 1)
    expected = torch.cat([mid[:, :b0], ref(mid[:, b0:b0 + b1a], weights[1], shifts[1]),
                          ref(mid[:, b0 + b1a:], weights[2], shifts[2]), ref(pooled, weights[3], shifts[3])], 1)
    torch.testing.assert_close(out, expected)


def test_torch_compile_traces_conv3d():
    x, w, scale, shift = _case(3, 4, (3, 3, 3), (3, 4, 5), dtype=torch.float32)
    f = torch.compile(lambda a: conv3d(a, w, scale, shift, 1, "same", True), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(f(x), conv3d(x, w, scale, shift, 1, "same", True))


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(x=torch.randn(1, 3, 4, 4)), ValueError, "5-D"),
    (dict(weight=torch.randn(4, 2, 3, 3, 3)), ValueError, "Cin=3"),
    (dict(weight=torch.randn(4, 3, 3, 3, 3, dtype=torch.float64)), TypeError, "dtype"),
    (dict(shift=torch.randn(5)), ValueError, r"shift must have shape \(4,\)"),
    (dict(padding="valid", x=torch.randn(1, 3, 2, 4, 4)), ValueError, "larger than the padded input"),
    (dict(out=torch.zeros(1, 4, 4, 4, 4)), ValueError, "channels_last_3d"),
    (dict(out=torch.zeros(1, 6, 4, 4, 4).contiguous(memory_format=CL), channel_offset=3), ValueError, "do not fit"),
    (dict(channel_offset=1), ValueError, "needs an out tensor"),
])
def test_bad_arguments(kwargs, error, message):
    args = dict(x=torch.randn(1, 3, 4, 4, 4), weight=torch.randn(4, 3, 3, 3, 3))
    args.update(kwargs)
    with pytest.raises(error, match=message):
        conv3d(**args)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, in the Triton interpreter
@pytest.mark.parametrize("backend", ["aten", "cpu", "reference", "triton"])
@pytest.mark.parametrize("kernel, stride, padding", [(1, 1, 0), (3, 1, 1), (7, 2, "same"), (3, 1, ((1, 1), (0, 0), (1, 1)))])
def test_nan_propagates_like_torch(backend, kernel, stride, padding):
    """relu?(conv(x) + shift) with a NaN in x or in shift, or an inf in x: NaN and +-inf exactly where
    F.conv3d + torch.relu put them (a fused ReLU must not turn NaN into 0; Winograd's transforms must
    not turn inf into NaN), on every backend that runs the case (Triton through its interpreter)."""
    from i3d_fast.ops.dispatch import NoBackendError
    from i3d_fast.padding import resolve_padding

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 5, 9, 9, generator=g)
    w = torch.randn(16, 8, kernel, kernel, kernel, generator=g)
    shift = torch.zeros(16)
    (t0, t1), (h0, h1), (w0, w1) = resolve_padding(x.shape[2:], (kernel,) * 3, (stride,) * 3, padding)
    for case in ("x", "shift", "inf"):
        xx, ss = x.clone(), shift.clone()
        if case == "x":
            xx[0, 3, 2, 4, 4] = float("nan")
        elif case == "inf":  # +-inf must stay +-inf (Winograd's transforms alone would make NaN of it)
            xx[0, 3, 2, 4, 4] = float("inf")
        else:
            ss[5] = float("nan")
        expected = torch.relu(F.conv3d(F.pad(xx, (w0, w1, h0, h1, t0, t1)), w, ss, stride))
        try:
            y = conv3d(xx.contiguous(memory_format=torch.channels_last_3d), w, None, ss, stride, padding, True,
                       backend=backend)
        except NoBackendError:
            pytest.skip(f"{backend} does not run this case")
        assert (expected.isinf() if case == "inf" else expected.isnan()).any()
        assert torch.equal(y.isnan(), expected.isnan()), case
        assert torch.equal(y.isposinf(), expected.isposinf()) and torch.equal(y.isneginf(), expected.isneginf()), case


def test_out_sharing_memory_with_an_input_is_refused():
    """conv3d(x, ..., out=buf) with x a slice of buf would read cells it already overwrote."""
    buf = torch.zeros(1, 16, 4, 6, 6).contiguous(memory_format=torch.channels_last_3d)
    w = torch.randn(8, 8, 3, 3, 3)
    with pytest.raises(ValueError, match="x shares memory with out"):
        conv3d(buf[:, :8], w, out=buf, channel_offset=8, padding=1)
    other = torch.randn(1, 8, 4, 6, 6)
    conv3d(other, w, out=buf, channel_offset=8, padding=1)  # separate memory: fine
    torch.testing.assert_close(buf[:, 8:], conv3d(other, w, padding=1))


@pytest.mark.parametrize("kernel", [(3, 3, 3), (1, 3, 3), (3, 1, 1)])
def test_inf_through_the_winograd_kernels_and_their_gradients(kernel):
    """An infinite input through each Winograd kind (forward, data and weight gradient) gives the
    +-inf / NaN pattern of ATen's direct convolution, not the transforms' NaN."""
    from i3d_fast.kernels.cpu import conv3d as cpu_conv3d

    g = torch.Generator().manual_seed(1)
    pads = tuple((k // 2, k // 2) for k in kernel)
    x = torch.randn(1, 16, 4, 6, 6, generator=g)
    x[0, 2, 1, 3, 3] = float("inf")
    w = torch.randn(16, 16, *kernel, generator=g)
    y = conv3d(x, w, None, None, 1, pads, False, backend="cpu")
    ref = F.conv3d(x, w, padding=[k // 2 for k in kernel])
    assert ref.isinf().any()
    assert torch.equal(y.isinf(), ref.isinf()) and torch.equal(y.isnan(), ref.isnan())
    grad = torch.randn(ref.shape, generator=g).contiguous(memory_format=torch.channels_last_3d)
    grad[0, 1, 1, 2, 2] = float("-inf")
    gx, gw = cpu_conv3d.conv3d_backward(grad, x.contiguous(memory_format=torch.channels_last_3d), w, (1, 1, 1),
                                        pads, True, True)
    rx, rw = torch.ops.aten.convolution_backward(grad, x, w, None, [1] * 3, [k // 2 for k in kernel], [1] * 3,
                                                 False, [0] * 3, 1, [True, True, False])[:2]
    assert torch.equal(gx.isnan(), rx.isnan()) and torch.equal(gx.isinf(), rx.isinf())
    assert torch.equal(gw.isnan(), rw.isnan()) and torch.equal(gw.isinf(), rw.isinf())
