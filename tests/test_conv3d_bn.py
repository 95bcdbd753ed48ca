"""ops.conv3d_bn_relu (trainable fused Conv3d + BatchNorm + ReLU): every backend against the float64
reference (forward, gradients of x / weight / BN weight / BN bias, running statistics), in training
and eval mode, on I3D's layer configurations and general shapes."""
import pytest
import torch
import torch.nn.functional as F

from i3d_fast import layers
from i3d_fast.kernels.aten import conv3d as aten_conv3d
from i3d_fast.kernels.cpu import conv3d as cpu_conv3d
from i3d_fast.kernels.cpu import space_to_depth
from i3d_fast.ops import NoBackendError, conv3d_bn_relu
from i3d_fast.ops.conv3d_bn import conv3d_bn_train_op
from i3d_fast.padding import resolve_padding

CL = torch.channels_last_3d
BACKENDS = ["cpu", "aten", "reference"]

# (Cin, Cout, kernel, stride, padding, input [N, T, H, W], relu): I3D's unit kinds scaled down, and
# general ones. The 3x3x3 cases have Cin * Cout >= 128 so the C++ Winograd kernels run.
CASES = [
    (3, 16, 7, 2, "same", (2, 9, 17, 16), True),      # Conv3d_1a stem: TF pads (2, 3) / (3, 3)
    (16, 24, 1, 1, "same", (2, 4, 6, 5), True),       # 1x1x1 (GEMM)
    (16, 24, 3, 1, "same", (2, 5, 7, 6), True),       # 3x3x3 SAME (Winograd forward and data gradient)
    (13, 11, 3, 1, "same", (1, 4, 5, 6), False),      # odd channels, no ReLU
    (12, 20, 3, 2, "same", (2, 7, 9, 8), True),       # stride 2 SAME (asymmetric pads)
    (6, 10, 3, 1, "valid", (2, 5, 6, 7), True),
    (6, 10, (1, 3, 3), (1, 2, 2), ((0, 0), (1, 2), (0, 1)), (2, 3, 8, 7), True),  # explicit pads
    (8, 12, (5, 1, 1), (2, 1, 1), ((2, 1), (0, 0), (0, 0)), (2, 9, 4, 3), True),  # temporal, strided
    # the stem on 5 frames, fewer than its kernel: oneDNN's weight gradient with the padding inside
    # crashes the process there (torch 2.13), so that input is padded explicitly
    (3, 8, 7, 2, "same", (2, 5, 8, 8), True),
]


def _inputs(case, dtype, seed=0):
    cin, cout, k, _, _, (n, t, h, w), _ = case
    k = (k,) * 3 if isinstance(k, int) else k
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, t, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(cout, cin, *k, generator=g, dtype=torch.float64) / (cin * k[0] * k[1] * k[2]) ** 0.5
    gamma = torch.rand(cout, generator=g, dtype=torch.float64) + 0.5
    beta = torch.randn(cout, generator=g, dtype=torch.float64) * 0.5
    rm = torch.randn(cout, generator=g, dtype=torch.float64) * 0.1
    rv = torch.rand(cout, generator=g, dtype=torch.float64) + 0.5
    x = x.to(dtype).contiguous(memory_format=CL)
    return [t.to(dtype) for t in (weight, gamma, beta)], x, (rm.to(dtype), rv.to(dtype))


def _run(fn, case, dtype, training, seed=0):
    """(y, grads of x / weight / gamma / beta, updated running mean and var) for fn(x, w, g, b, rm, rv)."""
    (weight, gamma, beta), x, (rm, rv) = _inputs(case, dtype, seed)
    leaves = [t.requires_grad_() for t in (x, weight, gamma, beta)]
    y = fn(*leaves, rm, rv)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64).to(y.dtype)
    grads = torch.autograd.grad(y, leaves, gy)
    return [y.detach(), *grads, rm, rv]


def _ours(backend, case, training):
    _, _, _, stride, padding, _, relu = case
    return lambda x, w, g, b, rm, rv: conv3d_bn_relu(x, w, g, b, rm, rv, training=training, momentum=0.1, eps=1e-3,
                                                     stride=stride, padding=padding, relu=relu, backend=backend)


def _torch(case, training):
    """Plain PyTorch: F.pad + F.conv3d + F.batch_norm + F.relu."""
    _, _, k, stride, padding, _, relu = case
    k = (k,) * 3 if isinstance(k, int) else k
    stride = (stride,) * 3 if isinstance(stride, int) else stride

    def fn(x, w, g, b, rm, rv):
        (t0, t1), (h0, h1), (w0, w1) = resolve_padding(x.shape[2:], k, stride, padding)
        z = F.conv3d(F.pad(x, (w0, w1, h0, h1, t0, t1)), w, stride=stride)
        y = F.batch_norm(z, rm, rv, g, b, training=training, momentum=0.1, eps=1e-3)
        return F.relu(y) if relu else y

    return fn


def _max_err(a, ref):
    return (a.double() - ref).abs().max().item()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", CASES, ids=[f"k{c[2]}s{c[3]}-{c[0]}to{c[1]}" for c in CASES])
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_float64_reference(backend, case, training):
    """Each output's error against float64 is at most ~2x that of PyTorch's own fp32 ops (plus a
    floor of 1e-6 relative to the output's scale)."""
    ref = _run(_torch(case, training), case, torch.float64, training)
    ours = _run(_ours(backend, case, training), case, torch.float32, training)
    plain = _run(_torch(case, training), case, torch.float32, training)
    names = ["y", "grad x", "grad weight", "grad gamma", "grad beta", "running mean", "running var"]
    for name, o, p, r in zip(names, ours, plain, ref):
        bound = 2 * _max_err(p, r) + 1e-6 * r.abs().max().item()
        assert _max_err(o, r) <= bound, f"{backend} {name}: {_max_err(o, r):.3e} > {bound:.3e}"


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("backend", ["reference", "aten"])
def test_gradcheck_float64(backend, stride):
    case = (3, 4, 3, stride, "same", (2, 3, 4, 5), True)
    (weight, gamma, beta), x, _ = _inputs(case, torch.float64)
    leaves = [t.requires_grad_() for t in (x, weight, gamma, beta)]
    fn = _ours(backend, case, True)
    assert torch.autograd.gradcheck(lambda *a: fn(*a, None, None), leaves)


WINOGRAD_KERNELS = [(3, 3, 3), (1, 3, 3), (3, 1, 1)]
KERNEL_IDS = ["x".join(map(str, k)) for k in WINOGRAD_KERNELS]


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("kernel", WINOGRAD_KERNELS, ids=KERNEL_IDS)
@pytest.mark.parametrize("whole", [False, True], ids=["chunks", "whole-layer"])
def test_winograd_weight_gradient_matches_float64(monkeypatch, whole, kernel, layout):
    """The C++ Winograd weight gradient (both schedules, several channel panels, partial tiles; every
    kernel kind) against ATen in float64: error within ~2x of oneDNN's fp32 error, written in the
    weight's memory layout (autograd then accumulates it without a copy); an inf input is reported."""
    monkeypatch.setattr(cpu_conv3d, "_whole_layer", lambda x, kernel=None: whole)
    pads = [k // 2 for k in kernel]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 20, 5, 7, 9, generator=g, dtype=torch.float64)
    dy = torch.randn(2, 70, 5, 7, 9, generator=g, dtype=torch.float64)
    w = torch.zeros(70, 20, *kernel, dtype=torch.float64)

    def aten(x, dy):
        return torch.ops.aten.convolution_backward(dy, x, w.to(x.dtype), None, [1] * 3, pads, [1] * 3,
                                                   False, [0] * 3, 1, [False, True, False])[1]

    ref = aten(x, dy)
    wide = torch.randn(2, 90, 5, 7, 9, generator=g).contiguous(memory_format=CL)
    wide[:, 10:80] = dy.float()  # the output gradient as a channel slice of a wider tensor
    like = w.float().contiguous(memory_format=layout)
    ours, nonfinite = cpu_conv3d.winograd_weight_grad(x.float().contiguous(memory_format=CL), wide[:, 10:80], like)
    assert ours.shape == w.shape and ours.stride() == like.stride() and not nonfinite
    assert _max_err(ours, ref) <= 2 * _max_err(aten(x.float(), dy.float()), ref) + 1e-6
    x_inf = x.float().contiguous(memory_format=CL)
    x_inf[1, 3, 2, 3, 4] = float("inf")
    assert cpu_conv3d.winograd_weight_grad(x_inf, wide[:, 10:80], like)[1]


WEIGHT_GRAD_METHODS = ["onednn", "winograd", "gemm", "space_to_depth", "temporal"]


@pytest.mark.parametrize("case", CASES, ids=[f"k{c[2]}s{c[3]}-{c[0]}to{c[1]}" for c in CASES])
@pytest.mark.parametrize("method", WEIGHT_GRAD_METHODS)
def test_every_weight_gradient_method_matches_float64(monkeypatch, method, case):
    """The cpu backend's training step with each weight-gradient method forced (autotune picks one per
    layer and machine): every output within ~2x of PyTorch's own fp32 error. space_to_depth also runs
    the forward that way."""
    cin, cout, k, stride, padding, (n, t, h, w), _ = case
    x, weight = torch.empty(n, cin, t, h, w), torch.empty(cout, cin, *((k,) * 3 if isinstance(k, int) else k))
    stride3 = (stride,) * 3 if isinstance(stride, int) else stride
    pads = resolve_padding((t, h, w), weight.shape[2:], stride3, padding)
    if method == "winograd" and cpu_conv3d._winograd_weight_grad_rejected(x, x, weight, stride3, pads):
        pytest.skip("not a Winograd layer")
    if method == "temporal" and not cpu_conv3d._temporal(x, weight, stride3, pads):
        pytest.skip("not a kT x 1 x 1 layer")
    if method == "space_to_depth":
        monkeypatch.setattr(space_to_depth.autotune, "slower", lambda key, candidates: None)  # "measured faster"
        if space_to_depth.rejected(x, weight, stride3, pads):
            pytest.skip(space_to_depth.rejected(x, weight, stride3, pads))
    monkeypatch.setattr(cpu_conv3d, "weight_grad_method", lambda *args: method)
    ref = _run(_torch(case, True), case, torch.float64, True)
    ours = _run(_ours("cpu", case, True), case, torch.float32, True)
    plain = _run(_torch(case, True), case, torch.float32, True)
    for name, o, p, r in zip(["y", "grad x", "grad weight", "grad gamma", "grad beta"], ours, plain, ref):
        bound = 2 * _max_err(p, r) + 1e-6 * r.abs().max().item()
        assert _max_err(o, r) <= bound, f"{method} {name}: {_max_err(o, r):.3e} > {bound:.3e}"


GRAD_LAYERS = [  # (Cin, Cout, kernel, stride, pads, input [N, T, H, W], weight layout)
    (20, 70, (1, 1, 1), (1, 1, 1), ((0, 0),) * 3, (2, 2, 4, 4), CL),
    (20, 70, (3, 3, 3), (1, 1, 1), ((1, 1),) * 3, (2, 2, 7, 7), CL),
    (20, 70, (3, 3, 3), (1, 1, 1), ((1, 1),) * 3, (2, 2, 7, 7), torch.contiguous_format),
    (12, 16, (3, 1, 1), (2, 1, 1), ((1, 1), (0, 0), (0, 0)), (2, 5, 4, 4), CL),
    (3, 16, (7, 7, 7), (2, 2, 2), ((2, 3),) * 3, (1, 9, 12, 11), CL),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("layer", GRAD_LAYERS, ids=lambda c: f"k{''.join(map(str, c[2]))}s{c[3][0]}{c[3][1]}")
def test_gemm_and_space_to_depth_weight_gradients_match_float64(layer, dtype):
    """gemm_weight_grad (one GEMM over im2col columns) and the space-to-depth weight gradient against
    float64: error within ~2x of ATen's in the same dtype, in the weight's memory layout."""
    cin, cout, kernel, stride, pads, (n, t, h, w), layout = layer
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, cin, t, h, w, generator=g, dtype=torch.float64)
    weight = torch.zeros(cout, cin, *kernel, dtype=torch.float64).contiguous(memory_format=layout)
    (t0, t1), (h0, h1), (w0, w1) = pads
    padded = F.pad(x, (w0, w1, h0, h1, t0, t1))
    out_shape = F.conv3d(padded, weight, stride=stride).shape
    dy = torch.randn(out_shape, generator=g, dtype=torch.float64)

    def aten(x, dy):
        return torch.ops.aten.convolution_backward(dy, F.pad(x, (w0, w1, h0, h1, t0, t1)), weight.to(x.dtype), None,
                                                   list(stride), [0] * 3, [1] * 3, False, [0] * 3, 1,
                                                   [False, True, False])[1]

    ref = aten(x, dy)
    xs, dys = x.to(dtype).contiguous(memory_format=CL), dy.to(dtype).contiguous(memory_format=CL)
    bound = 2 * _max_err(aten(x.to(dtype), dy.to(dtype)), ref) + 1e-6 * ref.abs().max().item()
    like = weight.to(dtype)
    ours = {"gemm": cpu_conv3d.gemm_weight_grad(xs, dys, like, stride, pads)}
    if any(s > 1 for s in stride):
        ours["space_to_depth"] = space_to_depth.weight_grad(xs, dys, like, stride, pads)
        y = space_to_depth.conv3d(xs, like + 1, stride, pads)
        expected = F.conv3d(padded, weight + 1, stride=stride)
        plain = F.conv3d(F.pad(xs, (w0, w1, h0, h1, t0, t1)), like + 1, stride=stride)
        assert _max_err(y, expected) <= 2 * _max_err(plain, expected) + 1e-6 * expected.abs().max().item()
    for name, grad in ours.items():
        assert grad.dtype == dtype and grad.stride() == like.stride(), name
        assert _max_err(grad, ref) <= bound, f"{name}: {_max_err(grad, ref):.3e} > {bound:.3e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_gemm_data_gradient_matches_float64(monkeypatch, dtype):
    """A 1x1x1 layer's data gradient as one GEMM (forced; autotune picks per layer): within ~2x of
    ATen's error in the same dtype, also for an output gradient that is a channel slice, and through
    the training op."""
    g = torch.Generator().manual_seed(6)
    weight = torch.randn(70, 20, 1, 1, 1, generator=g, dtype=torch.float64)
    wide = torch.randn(2, 90, 3, 4, 5, generator=g, dtype=torch.float64)
    dy = wide[:, 10:80]
    ref = torch.einsum("nothw,oi->nithw", dy, weight.flatten(1))
    aten = torch.ops.aten.convolution_backward(dy.to(dtype), torch.empty(2, 20, 3, 4, 5, dtype=dtype),
                                               weight.to(dtype), None, [1] * 3, [0] * 3, [1] * 3, False, [0] * 3,
                                               1, [True, False, False])[0]
    ours = cpu_conv3d.gemm_data_grad(wide.to(dtype).contiguous(memory_format=CL)[:, 10:80], weight.to(dtype),
                                     (2, 20, 3, 4, 5))
    assert ours.dtype == dtype and ours.is_contiguous(memory_format=CL)
    assert _max_err(ours, ref) <= 2 * _max_err(aten, ref) + 1e-6 * ref.abs().max().item()
    monkeypatch.setattr(cpu_conv3d, "data_grad_method", lambda *args: "gemm")
    case = CASES[1]  # 1x1x1
    ref, plain = _run(_torch(case, True), case, torch.float64, True), _run(_torch(case, True), case, torch.float32, True)
    ours = _run(_ours("cpu", case, True), case, torch.float32, True)
    assert _max_err(ours[1], ref[1]) <= 2 * _max_err(plain[1], ref[1]) + 1e-6 * ref[1].abs().max().item()


def test_weight_gradient_fixed_rules(monkeypatch):
    """With autotuning off: one GEMM for layers with few output positions (weight gradient; data gradient
    of 1x1x1 layers), Winograd for the others it applies to, oneDNN otherwise (space-to-depth only where
    timed)."""
    monkeypatch.setenv("I3D_FAST_AUTOTUNE", "0")
    small, big = torch.empty(2, 16, 2, 7, 7), torch.empty(2, 16, 8, 16, 16)
    w333, w777 = torch.empty(24, 16, 3, 3, 3), torch.empty(24, 3, 7, 7, 7)
    same = ((1, 1),) * 3
    assert cpu_conv3d.weight_grad_method(small, torch.empty(2, 24, 2, 7, 7), w333, (1, 1, 1), same) == "gemm"
    assert cpu_conv3d.weight_grad_method(big, torch.empty(2, 24, 8, 16, 16), w333, (1, 1, 1), same) in \
        ("winograd", "onednn")  # onednn: a build without AVX-512
    stem_x, stem_grad = torch.empty(2, 3, 16, 64, 64), torch.empty(2, 24, 8, 32, 32)
    assert cpu_conv3d.weight_grad_method(stem_x, stem_grad, w777, (2, 2, 2), ((2, 3),) * 3) == "onednn"
    w111, none = torch.empty(24, 16, 1, 1, 1), ((0, 0),) * 3
    assert cpu_conv3d.data_grad_method(torch.empty(2, 24, 2, 7, 7), small, w111, (1, 1, 1), none) == "gemm"
    assert cpu_conv3d.data_grad_method(torch.empty(2, 24, 8, 16, 16), big, w111, (1, 1, 1), none) == "onednn"
    assert cpu_conv3d.data_grad_method(small, small, w333, (1, 1, 1), same) == "onednn"  # not 1x1x1
    assert "I3D_FAST_AUTOTUNE=0" in space_to_depth.rejected(stem_x, w777, (2, 2, 2), ((2, 3),) * 3)


def test_space_to_depth_rejections():
    x = torch.empty(1, 3, 8, 16, 16)
    assert "not a strided" in space_to_depth.rejected(x, torch.empty(4, 3, 3, 3, 3), (1, 1, 1), ((1, 1),) * 3)
    wide = torch.empty(1, 16, 8, 16, 16)
    assert "channels" in space_to_depth.rejected(wide, torch.empty(4, 16, 3, 3, 3), (2, 2, 2), ((1, 1),) * 3)
    assert "float32 / bfloat16" in space_to_depth.rejected(x.double(), torch.empty(4, 3, 3, 3, 3).double(),
                                                           (2, 2, 2), ((1, 1),) * 3)


@pytest.mark.parametrize("kernel", WINOGRAD_KERNELS, ids=KERNEL_IDS)
def test_winograd_data_gradient_matches_float64(kernel):
    """The data gradient as a Winograd convolution of the output gradient with the flipped,
    transposed kernel (transformed straight from the weight) against ATen in float64."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 20, 5, 7, 9, generator=g, dtype=torch.float64)
    dy = torch.randn(2, 36, 5, 7, 9, generator=g, dtype=torch.float64)
    w = torch.randn(36, 20, *kernel, generator=g, dtype=torch.float64)

    def aten(dy, w):
        return torch.ops.aten.convolution_backward(dy, x.to(w.dtype), w, None, [1] * 3, [k // 2 for k in kernel], [1] * 3,
                                                   False, [0] * 3, 1, [True, False, False])[0]

    ref = aten(dy, w)
    ours = torch.empty(x.shape, memory_format=CL)
    cpu_conv3d.conv3d_packed(dy.float(), cpu_conv3d.prepare_weight(w.float(), flipped=True), None, False,
                             [(ours, 0, x.shape[1])])
    assert _max_err(ours, ref) <= 2 * _max_err(aten(dy.float(), w.float()), ref) + 1e-6


def test_cpu_backward_uses_the_winograd_kernels_where_they_apply(monkeypatch):
    monkeypatch.setenv("I3D_FAST_AUTOTUNE", "0")  # the fixed rules (autotune picks per machine)
    x = torch.randn(2, 16, 8, 16, 16).contiguous(memory_format=CL)
    weight = torch.randn(24, 16, 3, 3, 3)
    grad = torch.randn(2, 24, 8, 16, 16).contiguous(memory_format=CL)
    pads = ((1, 1),) * 3
    assert cpu_conv3d.weight_grad_method(x, grad, weight, (1, 1, 1), pads) == "winograd" \
        or torch.get_num_threads() > 2
    gx, gw = cpu_conv3d.conv3d_backward(grad, x, weight, (1, 1, 1), pads, True, True)
    rx, rw = torch.ops.aten.convolution_backward(grad.double(), x.double(), weight.double(), None, [1] * 3, [1] * 3,
                                                 [1] * 3, False, [0] * 3, 1, [True, True, False])[:2]
    torch.testing.assert_close(gx.double(), rx, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gw.double(), rw, rtol=1e-4, atol=1e-3)


def test_gradient_through_a_channel_slice():
    """The gradient of a branch that was concatenated (an Inception block) arrives as a channel slice."""
    case = CASES[2]
    (weight, gamma, beta), x, _ = _inputs(case, torch.float32)
    outs = {}
    for backend in ("cpu", "reference"):
        leaves = [t.detach().clone().requires_grad_() for t in (x, weight, gamma, beta)]
        y = conv3d_bn_relu(*leaves, stride=1, padding="same", backend=backend)
        other = torch.ones_like(y[:, :5])
        torch.cat([other, y, other], dim=1).pow(2).sum().backward()
        outs[backend] = [t.grad for t in leaves]
    for a, b in zip(outs["cpu"], outs["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_conv_bias_before_batchnorm_gets_zero_gradient_and_moves_the_running_mean():
    conv = torch.nn.Conv3d(4, 6, 3, padding=1, bias=True)
    bn = torch.nn.BatchNorm3d(6, momentum=0.5)
    ref_conv, ref_bn = torch.nn.Conv3d(4, 6, 3, padding=1, bias=True), torch.nn.BatchNorm3d(6, momentum=0.5)
    ref_conv.load_state_dict(conv.state_dict())
    x = torch.randn(2, 4, 3, 5, 5)
    y = layers.conv_bn_relu(x, conv, bn, 1, relu=True)
    y.sum().backward()
    ref = F.relu(ref_bn(ref_conv(x)))
    ref.sum().backward()
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_mean, ref_bn.running_mean)
    torch.testing.assert_close(bn.running_var, ref_bn.running_var)
    assert torch.count_nonzero(conv.bias.grad) == 0
    torch.testing.assert_close(conv.bias.grad, ref_conv.bias.grad, atol=1e-4, rtol=0)  # torch: rounding noise


@pytest.mark.parametrize("options", [dict(momentum=None), dict(track_running_stats=False), dict(affine=False)])
def test_batchnorm_module_semantics(options):
    """conv_bn_relu follows nn.BatchNorm3d: cumulative average (momentum None), no running
    statistics, no affine parameters; num_batches_tracked counted."""
    conv = torch.nn.Conv3d(3, 5, 1, bias=False)
    bn, ref_bn = torch.nn.BatchNorm3d(5, **options), torch.nn.BatchNorm3d(5, **options)
    for step in range(3):
        x = torch.randn(2, 3, 2, 3, 3) + step
        y = layers.conv_bn_relu(x, conv, bn, 0, relu=False)
        torch.testing.assert_close(y, ref_bn(conv(x)), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dict(bn.state_dict()), dict(ref_bn.state_dict()))
    bn.eval(), ref_bn.eval()
    x = torch.randn(2, 3, 2, 3, 3)
    torch.testing.assert_close(layers.conv_bn_relu(x, conv, bn, 0, relu=False), ref_bn(conv(x)), rtol=1e-5,
                               atol=1e-5)


def test_eval_fold_cache_sees_changed_statistics():
    case = CASES[2]
    (weight, gamma, beta), x, (rm, rv) = _inputs(case, torch.float32)
    with torch.no_grad():
        first = conv3d_bn_relu(x, weight, gamma, beta, rm, rv, training=False, eps=1e-3)
        rm.add_(1.0)
        second = conv3d_bn_relu(x, weight, gamma, beta, rm, rv, training=False, eps=1e-3)
    expected = F.relu(F.batch_norm(F.conv3d(x, weight, padding=1), rm, rv, gamma, beta, eps=1e-3))
    torch.testing.assert_close(second, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(first, second)


def test_eval_works_on_a_unit_made_under_inference_mode():
    """Tensors created under torch.inference_mode() (a model cast or moved there) have no version
    counter: the folded weights cannot be cached and are computed on each call instead."""
    torch.manual_seed(0)
    unit = layers.Unit3D(3, 4, (3, 3, 3)).eval()
    x = torch.randn(1, 3, 4, 8, 8)
    with torch.no_grad():
        expected = unit.double()(x.double())
    with torch.inference_mode():
        inference_unit = unit.float().double()  # parameters are inference tensors now
        assert inference_unit.conv3d.weight.is_inference()
        torch.testing.assert_close(inference_unit(x.double()), expected)
        torch.testing.assert_close(inference_unit(x.double()), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_propagates(backend):
    case = CASES[2]
    (weight, gamma, beta), x, _ = _inputs(case, torch.float32)
    x[0, 0, 1, 2, 3] = float("nan")
    y = conv3d_bn_relu(x, weight, gamma, beta, backend=backend)
    assert y.isnan().any()


def test_autocast_bf16_runs_in_bf16_with_float32_statistics():
    case = CASES[2]
    (weight, gamma, beta), x, (rm, rv) = _inputs(case, torch.float32)
    leaves = [t.requires_grad_() for t in (weight, gamma, beta)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv3d_bn_relu(x, *leaves, rm, rv, momentum=0.1, eps=1e-3)
    assert y.dtype == torch.bfloat16 and rm.dtype == torch.float32
    y.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.float32 for t in leaves)
    ref = _ours("reference", case, True)(x, *(t.detach() for t in leaves), None, None)
    assert (y.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_opcheck():
    case = CASES[2]
    (weight, gamma, beta), x, _ = _inputs(case, torch.float32)
    args = (x, weight.requires_grad_(), None, gamma.requires_grad_(), beta.requires_grad_(), 1e-3, [1, 1, 1],
            [1, 1, 1, 1, 1, 1], True, "cpu")
    torch.library.opcheck(conv3d_bn_train_op, args)


def test_errors_name_the_problem():
    case = CASES[2]
    (weight, gamma, beta), x, (rm, rv) = _inputs(case, torch.float32)
    with pytest.raises(ValueError, match="bn_weight must have shape"):
        conv3d_bn_relu(x, weight, gamma[:3], beta)
    with pytest.raises(ValueError, match="eval mode .* needs running_mean"):
        conv3d_bn_relu(x, weight, gamma, beta, training=False)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        conv3d_bn_relu(x[:1, :, :1, :1, :1], weight, gamma, beta, padding="same")
    with pytest.raises(NoBackendError, match="cpu: supports float32, bfloat16"):
        conv3d_bn_relu(x.double(), weight.double(), gamma, beta, backend="cpu")
    with pytest.raises(TypeError, match="weight dtype"):
        conv3d_bn_relu(x, weight.double(), gamma, beta)


@pytest.mark.parametrize("kernel, size", [(3, (8, 16, 16)), (3, (2, 7, 7)), (1, (4, 6, 6))])
def test_conv3d_op_backward_on_the_cpu_kernels(kernel, size):
    """ops.conv3d (layers.Conv3d in training) differentiates through the same C++ gradient kernels:
    x, weight and shift gradients within 2x of PyTorch's fp32 error against float64."""
    from i3d_fast.ops import conv3d

    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 16, *size, generator=g, dtype=torch.float64)
    w = torch.randn(24, 16, kernel, kernel, kernel, generator=g, dtype=torch.float64) / (16 * kernel ** 3) ** 0.5
    b = torch.randn(24, generator=g, dtype=torch.float64)
    gy = torch.randn(2, 24, *size, generator=g, dtype=torch.float64)

    def grads(fn, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (x, w, b)]
        return torch.autograd.grad(fn(*leaves), leaves, gy.to(dtype))

    ref = grads(lambda x, w, b: F.relu(F.conv3d(x, w, b, padding=kernel // 2)), torch.float64)
    plain = grads(lambda x, w, b: F.relu(F.conv3d(x, w, b, padding=kernel // 2)), torch.float32)
    ours = grads(lambda x, w, b: conv3d(x.contiguous(memory_format=CL), w, shift=b, relu=True), torch.float32)
    for name, o, p, r in zip(("x", "weight", "shift"), ours, plain, ref):
        assert _max_err(o, r) <= 2 * _max_err(p, r) + 1e-6 * r.abs().max().item(), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=["fp32", "bf16", "fp64"])
@pytest.mark.parametrize("stride, pads", [((2, 2, 2), ((2, 3),) * 3), ((1, 2, 3), ((0, 1), (1, 0), (2, 2)))])
def test_space_to_depth_input_is_the_padded_blocks(dtype, stride, pads):
    """The C++ rearrangement against its definition: channel ((rt * sH + rh) * sW + rw) * C + c of cell i
    holds padded cell s * i + r of channel c (zero padding before; cells past the last block cut)."""
    x = torch.randn(2, 3, 7, 9, 11).to(dtype).contiguous(memory_format=CL)
    weight = torch.empty(4, 3, 5, 4, 7)
    out = space_to_depth._input(x, weight, stride, pads)
    cells = out.shape[2:]
    padded = torch.zeros(2, 3, *(c * s for c, s in zip(cells, stride)), dtype=dtype)
    region = [slice(before, before + size) for (before, _), size in zip(pads, x.shape[2:])]
    keep = [min(r.stop, c * s) - r.start for r, c, s in zip(region, cells, stride)]
    padded[:, :, region[0].start:region[0].start + keep[0], region[1].start:region[1].start + keep[1],
           region[2].start:region[2].start + keep[2]] = x[:, :, :keep[0], :keep[1], :keep[2]]
    (st, sh, sw), (ct, ch, cw) = stride, cells
    expected = padded.reshape(2, 3, ct, st, ch, sh, cw, sw).permute(0, 3, 5, 7, 1, 2, 4, 6).reshape(2, -1, ct, ch, cw)
    assert out.is_contiguous(memory_format=CL)
    assert torch.equal(out, expected)


TEMPORAL_LAYERS = [  # (Cin, Cout, kT, stride T, pads T, input [N, T, H, W]): kT x 1 x 1 convolutions
    (12, 20, 3, 1, (1, 1), (2, 5, 4, 3)),
    (12, 20, 7, 2, (3, 3), (2, 9, 3, 4)),  # S3D's temporal stem
    (8, 16, 5, 8, (2, 2), (2, 17, 3, 3)),  # SlowFast's lateral: 5x1x1 stride 8
    (8, 16, 4, 3, (0, 5), (1, 6, 2, 5)),   # taps reading only padding for some outputs
]


@pytest.mark.parametrize("layer", TEMPORAL_LAYERS, ids=lambda c: f"k{c[2]}s{c[3]}")
def test_temporal_gradients_match_float64(layer):
    """The per-tap GEMM gradients of kT x 1 x 1 layers against float64, within ~2x of ATen's fp32 error;
    x and the output gradient as channel slices of wider tensors (read in place)."""
    cin, cout, kt, st, (p0, p1), (n, t, h, w) = layer
    g = torch.Generator().manual_seed(9)
    weight = torch.randn(cout, cin, kt, 1, 1, generator=g, dtype=torch.float64).contiguous(memory_format=CL)
    x64 = torch.randn(n, cin, t, h, w, generator=g, dtype=torch.float64)
    out_t = (t + p0 + p1 - kt) // st + 1
    dy64 = torch.randn(n, cout, out_t, h, w, generator=g, dtype=torch.float64)
    stride, pads = (st, 1, 1), ((p0, p1), (0, 0), (0, 0))
    assert cpu_conv3d._temporal(x64.float(), weight, stride, pads)
    xp = torch.nn.functional.pad(x64, (0, 0, 0, 0, p0, p1))
    ref_x, ref_w, _ = torch.ops.aten.convolution_backward(dy64, xp, weight, None, list(stride), [0] * 3, [1] * 3,
                                                          False, [0] * 3, 1, [True, True, False])
    ref_x = ref_x[:, :, p0:p0 + t]
    aten_x, aten_w = aten_conv3d.conv3d_backward(dy64.float(), x64.float(), weight.float(), stride, pads, True, True)
    wide_x = torch.zeros(n, cin + 5, t, h, w).contiguous(memory_format=CL)
    wide_x[:, 2:2 + cin] = x64.float()
    wide_dy = torch.zeros(n, cout + 3, out_t, h, w).contiguous(memory_format=CL)
    wide_dy[:, 1:1 + cout] = dy64.float()
    x, dy = wide_x[:, 2:2 + cin], wide_dy[:, 1:1 + cout]
    ours_w = cpu_conv3d.temporal_weight_grad(x, dy, weight.float(), stride, pads)
    ours_x = cpu_conv3d.temporal_data_grad(dy, weight.float(), x.shape, stride, pads)
    assert ours_w.is_contiguous(memory_format=CL) and ours_x.is_contiguous(memory_format=CL)
    for ours, aten, ref in ((ours_w, aten_w, ref_w), (ours_x, aten_x, ref_x)):
        assert _max_err(ours, ref) <= 2 * _max_err(aten, ref) + 1e-6 * ref.abs().max().item()


def test_temporal_data_gradient_through_the_training_op(monkeypatch):
    """The training step of a strided kT x 1 x 1 layer with the per-tap data gradient forced."""
    monkeypatch.setattr(cpu_conv3d, "data_grad_method", lambda *args: "temporal")
    case = next(c for c in CASES if c[2] == (5, 1, 1))
    ref, plain = _run(_torch(case, True), case, torch.float64, True), _run(_torch(case, True), case, torch.float32, True)
    ours = _run(_ours("cpu", case, True), case, torch.float32, True)
    for o, p, r in zip(ours, plain, ref):
        assert _max_err(o, r) <= 2 * _max_err(p, r) + 1e-6 * r.abs().max().item()


@pytest.mark.parametrize("kernel", [(3, 3, 3), (1, 3, 3), (3, 1, 1), (1, 1, 1)], ids=lambda k: "x".join(map(str, k)))
@pytest.mark.parametrize("threads", [1, 2])
def test_store_loop_batch_statistics_match_float64(kernel, threads):
    """The C++ kernels' batch statistics, gathered while storing z (chunk pilots, Chan merge): within ~2x
    of torch.var_mean's fp32 error against float64, also when |mean| >> std, with partial tiles, 20
    output channels (a partial vector) and x a channel slice."""
    if cpu_conv3d.unsupported(torch.empty(1, 1, 1, 1, 1), torch.empty(1, 1, *kernel), (1, 1, 1),
                              cpu_conv3d.WINOGRAD.get(kernel, cpu_conv3d.PAD_0), None):
        pytest.skip("not a C++ kernel")
    g = torch.Generator().manual_seed(11)
    wide = (torch.randn(2, 24, 7, 11, 9, generator=g, dtype=torch.float64) + 3).contiguous(memory_format=CL)
    x64 = wide[:, 2:18]
    weight = torch.randn(20, 16, *kernel, generator=g, dtype=torch.float64) * 0.05 + 0.05
    pads = cpu_conv3d.WINOGRAD.get(kernel, cpu_conv3d.PAD_0)
    (t0, t1), (h0, h1), (w0, w1) = pads
    z64 = F.conv3d(F.pad(x64, (w0, w1, h0, h1, t0, t1)), weight)
    var64, mean64 = torch.var_mean(z64, dim=(0, 2, 3, 4), correction=0)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        z = torch.empty(z64.shape, memory_format=CL)
        mean, var = torch.empty(20), torch.empty(20)
        packed = cpu_conv3d.prepare_weight(weight.float())
        assert not cpu_conv3d.conv3d_packed(wide.float()[:, 2:18], packed, None, False, [(z, 0, 20)], stats=(mean, var))
    finally:
        torch.set_num_threads(previous)
    assert (mean64.abs() > var64.sqrt()).all()  # |mean| > std: where E[z^2] - E[z]^2 would cancel
    plain_var, plain_mean = torch.var_mean(z, dim=(0, 2, 3, 4), correction=0)
    for ours, plain, ref in ((mean, plain_mean, mean64), (var, plain_var, var64)):
        assert _max_err(ours, ref) <= 2 * _max_err(plain, ref) + 1e-6 * ref.abs().max().item()


@pytest.mark.parametrize("chunk", [0, *cpu_conv3d.GRAD_CHUNK_CANDIDATES])
def test_winograd_weight_gradient_chunks_match_float64(monkeypatch, chunk):
    """The Winograd weight gradient over chunks of tiles (a layer with many tiles) with each chunk size
    autotuning may pick: within ~2x of ATen's fp32 error against float64."""
    g = torch.Generator().manual_seed(12)
    x64 = torch.randn(1, 8, 8, 32, 32, generator=g, dtype=torch.float64)
    dy64 = torch.randn(1, 16, 8, 32, 32, generator=g, dtype=torch.float64)
    weight = torch.empty(16, 8, 3, 3, 3)
    assert not cpu_conv3d._whole_layer(x64, (3, 3, 3))
    monkeypatch.setattr(cpu_conv3d.autotune, "fastest", lambda key, candidates: str(chunk))
    ours, nonfinite = cpu_conv3d.winograd_weight_grad(x64.float().contiguous(memory_format=CL),
                                                      dy64.float().contiguous(memory_format=CL), weight)
    ref = torch.ops.aten.convolution_backward(dy64, x64, weight.double(), None, [1] * 3, [1] * 3, [1] * 3, False,
                                              [0] * 3, 1, [False, True, False])[1]
    aten = torch.ops.aten.convolution_backward(dy64.float(), x64.float(), weight, None, [1] * 3, [1] * 3, [1] * 3,
                                               False, [0] * 3, 1, [False, True, False])[1]
    assert not nonfinite
    assert _max_err(ours, ref) <= 2 * _max_err(aten, ref) + 1e-6 * ref.abs().max().item()
