"""Triton training kernels of Conv3d + BatchNorm + ReLU (i3d_fast.kernels.triton.conv3d_bn) against
the float64 reference, through the Triton interpreter (TRITON_INTERPRET=1, conftest.py) on CPU.

* every shipped GEMM variant and config (forward with statistics, data gradient, weight gradient;
  fp16, tf32, exact fp32) on a shape that selects it;
* the public op ``conv3d_bn_relu(training=True, backend="triton")`` on every I3D unit kind scaled
  down (kernel 1/3/7, stride 1/2/(1,2,2), SAME / VALID / explicit, odd channels, channel slices, relu
  on/off): y, the batch statistics, the running statistics and the gradients of x, weight, BN weight
  and BN bias; fp32 and fp16, each within twice the error of the ATen backend in the same dtype;
* split-K and determinism, dispatch, and the AOT spec list.
bfloat16 is not run here (the interpreter computes it wrongly): AOT compilation and the GPU tests
at the end cover it.
"""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from i3d_fast.kernels.triton import aot
from i3d_fast.kernels.triton import conv3d_bn as tk
from i3d_fast.ops import conv3d_bn as op_module
from i3d_fast.ops import conv3d_bn_relu, selfcheck
from i3d_fast.ops.conv3d_bn import conv3d_bn_train_op
from i3d_fast.padding import flat_pads, resolve_padding

CL = torch.channels_last_3d


def _triple(v):
    return (v,) * 3 if isinstance(v, int) else tuple(v)


def _inputs(cin, cout, kernel, size, seed=0, x_slice=(0, 0)):
    """float64 (x [channels_last, maybe a channel slice of a wider tensor], weight, gamma, beta, running mean,
    running var)."""
    g = torch.Generator().manual_seed(seed)
    n, t, h, w = size
    x = torch.randn(n, x_slice[0] + cin + x_slice[1], t, h, w, generator=g, dtype=torch.float64)
    x = x.contiguous(memory_format=CL)[:, x_slice[0]:x_slice[0] + cin] + 0.3
    weight = torch.randn(cout, cin, *kernel, generator=g, dtype=torch.float64) / (cin * kernel[0] * kernel[1]
                                                                                    * kernel[2]) ** 0.5
    gamma = torch.rand(cout, generator=g, dtype=torch.float64) + 0.5
    beta = torch.randn(cout, generator=g, dtype=torch.float64) * 0.5
    return x, weight, gamma, beta, torch.randn(cout, generator=g, dtype=torch.float64) * 0.1, \
        torch.rand(cout, generator=g, dtype=torch.float64) + 0.5


def _err(a, ref) -> float:
    return (a.double() - ref).abs().max().item()


# -- every shipped GEMM variant ---------------------------------------------------------------------
def _conv_reference(x, weight, stride, pads):
    (t0, t1), (h0, h1), (w0, w1) = pads
    return F.conv3d(F.pad(x, (w0, w1, h0, h1, t0, t1)), weight, stride=stride)


# (Cin, Cout) that select each (mode, aligned) per precision; DIRECT needs aligned channels with at
# most 25% padding in a BLOCK_K chunk (64 channels for fp16, 32 for tf32).
_CHANNELS = {("fp16", True): (64, 16), ("fp16", False): (5, 7), ("tf32", True): (32, 16), ("tf32", False): (5, 7),
             ("ieee", False): (5, 7)}
VARIANTS = [(gemm, mode, precision, aligned, config)
            for (gemm, mode, precision, aligned), configs in tk.SHIPPED.items() if precision != "bf16"
            for config in configs]


@pytest.mark.parametrize("gemm, mode, precision, aligned, config", VARIANTS,
                         ids=[f"{g}-{tk.MODE_NAMES[m]}-{p}-{'vec' if a else 'any'}-{c.name}"
                              for g, m, p, a, c in VARIANTS])
def test_every_shipped_gemm_variant(monkeypatch, gemm, mode, precision, aligned, config):
    """Each variant against float64: a 3x3x3 stride-2 SAME conv (asymmetric pads, every phase of the
    data gradient, row and column tails). The interpreter multiplies exactly, so the error is the
    output's rounding (fp16) or float32 accumulation (1e-5 of the scale)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", precision == "tf32")
    dtype = torch.float16 if precision == "fp16" else torch.float32
    cin, cout = _CHANNELS[(precision, aligned)]
    kernel, stride, size = (3, 3, 3), (2, 2, 2), (2, 4, 5, 6)
    x, weight, *_ = _inputs(cin, cout, kernel, size)
    pads = resolve_padding(size[1:], kernel, stride, "same")
    xd, wd = x.to(dtype), weight.to(dtype)
    rel = 2 * torch.finfo(dtype).eps if dtype == torch.float16 else 1e-5
    seen = {}
    if gemm == "forward":
        z, mean, var = tk.conv3d_stats(xd, wd, stride, pads, configs={gemm: config}, variants=seen)
        ref = _conv_reference(xd.double(), wd.double(), stride, pads)
        var_ref, mean_ref = torch.var_mean(z.double(), dim=(0, 2, 3, 4), correction=0)  # of the stored z
        got, want = [z, mean, var], [ref, mean_ref, var_ref]
        bounds = [rel * ref.abs().max().item(), 1e-6, 1e-6]
    else:
        z = _conv_reference(x, weight, stride, pads)
        gz = torch.randn(z.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
        xr, wr = xd.double().requires_grad_(), wd.double().requires_grad_()
        ref_x, ref_w = torch.autograd.grad(_conv_reference(xr, wr, stride, pads), (xr, wr), gz.double())
        if gemm == "dgrad":
            got = [tk.conv3d_input_grad(gz, wd, x.shape, stride, pads, configs={gemm: config}, variants=seen)]
            want = [ref_x]
        else:
            got = [tk.conv3d_weight_grad(gz, xd, weight.shape, stride, pads, configs={gemm: config}, variants=seen)]
            want = [ref_w]
        bounds = [rel * want[0].abs().max().item()]
    assert seen[gemm] == ((gemm, mode, precision, aligned), config)
    for g, w, bound in zip(got, want, bounds):
        assert g.shape == w.shape
        assert _err(g, w) <= bound, (_err(g, w), bound)


def test_every_variant_is_in_the_aot_list():
    specs = {s.name: s for s in tk.aot_specs()}
    for (gemm, mode, precision, aligned), configs in tk.SHIPPED.items():
        for c in configs:
            name = f"conv3d_bn.{gemm}.{tk.MODE_NAMES[mode]}.{precision}.{'vec' if aligned else 'any'}.{c.name}"
            assert name in specs, name
            expected = {} if precision == "ieee" else {80: "mma", 90: "wgmma"}
            assert specs[name].tensor_cores == expected, name
    for kernel in tk.ELEMENTWISE_KERNELS:
        for dtype in ("fp16", "bf16", "fp32"):
            for alignment in ("vec", "any"):
                assert f"conv3d_bn.{kernel}.{dtype}.{alignment}" in specs
    all_names = [s.name for s in aot.all_specs()]
    assert len(set(all_names)) == len(all_names)
    assert set(specs) <= set(all_names), "aot.all_specs() misses conv3d_bn variants"


# -- the public op ----------------------------------------------------------------------------------
# (Cin, Cout, kernel, stride, padding, input [N, T, H, W], relu, x channel slice (before, after))
OP_CASES = {
    # (oneDNN's CPU convolution_backward, the ATen comparison, aborts on T = 5 here: T = 6)
    "stem-7x7x7-s2-rgb": (3, 16, 7, 2, "same", (1, 6, 7, 8), True, (0, 0)),
    "1x1x1": (64, 16, 1, 1, "same", (2, 2, 3, 4), True, (0, 0)),
    "3x3x3-odd-norelu": (13, 11, 3, 1, "same", (1, 3, 4, 5), False, (0, 0)),
    "3x3x3-s2-slice": (16, 24, 3, 2, "same", (2, 5, 6, 5), True, (8, 8)),
    "3x3x3-valid": (6, 10, 3, 1, "valid", (2, 4, 5, 5), True, (0, 0)),
    "1x3x3-s122-explicit": (8, 16, (1, 3, 3), (1, 2, 2), ((0, 0), (1, 2), (0, 1)), (2, 3, 8, 7), True, (0, 0)),
    "3x1x1-slice": (32, 16, (3, 1, 1), 1, "same", (2, 4, 3, 3), True, (32, 0)),
    # inputs of odd phases get no tap: their gradient is written as zeros
    "1x1x1-s2-valid": (8, 16, 1, 2, "valid", (2, 5, 6, 7), True, (0, 0)),
}


def _run_op(case, dtype, backend, seed=0, device="cpu"):
    """(y, mean, var, grad x, grad weight, grad gamma, grad beta, running mean, running var)."""
    cin, cout, k, stride, padding, size, relu, x_slice = case
    x, weight, gamma, beta, rm, rv = (t.to(device) for t in _inputs(cin, cout, _triple(k), size, seed, x_slice))
    x, weight = x.to(dtype).detach().requires_grad_(), weight.to(dtype).requires_grad_()
    stat = torch.float64 if dtype == torch.float64 else torch.float32
    gamma, beta = gamma.to(stat).requires_grad_(), beta.to(stat).requires_grad_()
    rm, rv = rm.to(stat), rv.to(stat)
    y = conv3d_bn_relu(x, weight, gamma, beta, rm, rv, training=True, momentum=0.1, eps=1e-3, stride=stride,
                       padding=padding, relu=relu, backend=backend)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64).to(device, dtype)
    grads = torch.autograd.grad(y, (x, weight, gamma, beta), gy)
    pads = resolve_padding(size[1:], _triple(k), _triple(stride), padding)
    with torch.no_grad():
        _, _, mean, var = conv3d_bn_train_op(x, weight, None, gamma, beta, 1e-3, list(_triple(stride)),
                                             flat_pads(pads), relu, backend)
    return [y.detach(), mean, var, *grads, rm, rv]


NAMES = ["y", "mean", "var", "grad x", "grad weight", "grad gamma", "grad beta", "running mean", "running var"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name", list(OP_CASES))
def test_op_matches_float64_reference(dtype, name):
    """Every output's error against float64 is at most twice that of the ATen backend in the same
    dtype (plus a floor of 1e-6 of the output's scale: fp32 errors are at rounding level)."""
    case = OP_CASES[name]
    ref = _run_op(case, torch.float64, "reference")
    ours = _run_op(case, dtype, "triton")
    aten = _run_op(case, dtype, "aten")
    for label, o, a, r in zip(NAMES, ours, aten, ref):
        assert o.shape == r.shape and o.dtype == a.dtype, label
        bound = 2 * _err(a, r) + 1e-6 * r.abs().max().item()
        assert _err(o, r) <= bound, f"{label}: {_err(o, r):.3e} > {bound:.3e}"
    assert ours[0].is_contiguous(memory_format=CL)


def test_tf32_flag_selects_exact_fp32(monkeypatch):
    x, weight, *_ = _inputs(32, 16, (1, 1, 1), (2, 2, 3, 4))
    x, weight = x.float(), weight.float()
    pads = ((0, 0),) * 3
    for flag, precision in ((True, "tf32"), (False, "ieee")):
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", flag)
        seen = {}
        tk.conv3d_stats(x, weight, (1, 1, 1), pads, variants=seen)
        assert seen["forward"][0][2] == precision


def test_split_k_weight_gradient_is_deterministic_and_matches():
    cin, cout, kernel, stride, size = 16, 16, (3, 3, 3), (1, 2, 2), (2, 5, 6, 7)
    x, weight, *_ = _inputs(cin, cout, kernel, size)
    pads = resolve_padding(size[1:], kernel, stride, "same")
    z = _conv_reference(x, weight, stride, pads)
    gz = torch.randn(z.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    xr = x.clone().requires_grad_()
    wr = weight.clone().requires_grad_()
    ref = torch.autograd.grad(_conv_reference(xr, wr, stride, pads), wr, gz)[0]
    x32, gz32 = x.float(), gz.float()
    results = [tk.conv3d_weight_grad(gz32, x32, weight.shape, stride, pads, splits=s) for s in (1, 3, 3, 7)]
    for r in results:
        assert _err(r, ref) <= 2e-6 * ref.abs().max().item()
    assert torch.equal(results[1], results[2]), "split-K result changed between identical runs"
    with pytest.raises(ValueError, match="splits must be"):
        tk.conv3d_weight_grad(gz32, x32, weight.shape, stride, pads, splits=0)


def test_split_heuristic():
    assert tk.choose_splits(tiles=300, sites=10**6, block_k=64, weight_elements=1000) == 1  # enough tiles already
    assert tk.choose_splits(tiles=1, sites=10**6, block_k=64, weight_elements=1000) == tk.MAX_SPLITS
    assert tk.choose_splits(tiles=4, sites=64 * 8 * 5, block_k=64, weight_elements=1000) == 5  # >= 8 K steps each
    big = 384 * 27 * 192  # Mixed_5c's 3x3x3: partial sums capped at MAX_PARTIALS
    assert tk.choose_splits(tiles=4, sites=10**6, block_k=64, weight_elements=big) == tk.MAX_PARTIALS // big


def test_forward_and_backward_are_deterministic():
    case = OP_CASES["3x3x3-s2-slice"]
    first, second = _run_op(case, torch.float32, "triton"), _run_op(case, torch.float32, "triton")
    for label, a, b in zip(NAMES, first, second):
        assert torch.equal(a, b), label


def test_statistics_are_centred_per_tile():
    """A channel whose mean is 1000x its spread: sum / sum-of-squares in float32 would lose the
    variance; the per-tile centred sums combined in float64 keep it."""
    x = (torch.randn(2, 16, 3, 8, 8, dtype=torch.float64) * 1e-3 + 1.0).contiguous(memory_format=CL)
    weight = torch.zeros(16, 16, 1, 1, 1, dtype=torch.float64)
    weight[:, :, 0, 0, 0] = torch.eye(16, dtype=torch.float64)
    var_ref, mean_ref = torch.var_mean(x.float().double(), dim=(0, 2, 3, 4), correction=0)
    _, mean, var = tk.conv3d_stats(x.float(), weight.float(), (1, 1, 1), ((0, 0),) * 3)
    assert _err(mean, mean_ref) <= 2 * torch.finfo(torch.float32).eps  # the per-tile float32 sums
    assert (var.double() / var_ref - 1).abs().max() < 1e-4


def test_backward_through_consecutive_units():
    """Two units (1x1x1, then 3x3x3 stride 2, each conv + BN + ReLU) and a loss on the second: the
    gradients that flow through the first unit's backward match float64."""
    def net(dtype, backend):
        g = torch.Generator().manual_seed(5)
        x = torch.randn(2, 24, 4, 6, 6, generator=g, dtype=torch.float64).to(dtype).contiguous(memory_format=CL)
        w1 = (torch.randn(16, 24, 1, 1, 1, generator=g, dtype=torch.float64) / 24 ** 0.5).to(dtype)
        w2 = (torch.randn(16, 16, 3, 3, 3, generator=g, dtype=torch.float64) / 432 ** 0.5).to(dtype)
        leaves = [t.requires_grad_() for t in (x, w1, w2)]
        h = conv3d_bn_relu(x, w1, training=True, backend=backend)
        y = conv3d_bn_relu(h, w2, training=True, stride=2, backend=backend)
        gy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(dtype)
        return torch.autograd.grad(y, leaves, gy)

    ref, ours, aten = net(torch.float64, "reference"), net(torch.float32, "triton"), net(torch.float32, "aten")
    for label, o, a, r in zip(["x", "w1", "w2"], ours, aten, ref):
        assert _err(o, r) <= 2 * _err(a, r) + 1e-6 * r.abs().max().item(), label


def test_torch_compile_traces_the_training_op_and_its_backward():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 8, 3, 4, 5, generator=g).contiguous(memory_format=CL)
    w = torch.randn(16, 8, 3, 3, 3, generator=g) / 216 ** 0.5
    gy = torch.randn(2, 16, 3, 4, 5, generator=g)

    def forward(x, w):
        return conv3d_bn_relu(x, w, training=True, backend="triton")

    def step(fn):
        leaves = [x.clone().requires_grad_(), w.clone().requires_grad_()]
        y = fn(*leaves)
        return (y.detach(), *torch.autograd.grad(y, leaves, gy))

    eager, compiled = step(forward), step(torch.compile(forward, backend="aot_eager", fullgraph=True))
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)


# -- dispatch -------------------------------------------------------------------------------------
def test_auto_on_a_cpu_tensor_does_not_pick_triton():
    x = torch.randn(1, 4, 2, 3, 3).contiguous(memory_format=CL)
    pads = ((0, 0),) * 3
    chosen = op_module.dispatch.select("conv3d_bn_relu", "auto", op_module.BACKENDS, x, (8, 4, 1, 1, 1),
                                       (1, 1, 1), pads)
    assert chosen.name != "triton"
    named = op_module.dispatch.select("conv3d_bn_relu", "triton", op_module.BACKENDS, x, (8, 4, 1, 1, 1),
                                      (1, 1, 1), pads)
    assert named.name == "triton"


def test_unsupported_inputs_are_refused_with_a_reason():
    x = torch.randn(1, 4, 2, 3, 3, dtype=torch.float64)
    assert "float64" in tk.why_unsupported(x, (8, 4, 1, 1, 1), (1, 1, 1), ((0, 0),) * 3)
    x = torch.randn(1, 4, 2, 3, 3)
    assert "no output" in tk.why_unsupported(x, (8, 4, 3, 5, 5), (1, 1, 1), ((0, 0),) * 3)
    huge = torch.empty(1, 1, 1, 1, 1).expand(1, 1, 2048, 2048, 1024)
    assert "2**31" in tk.why_unsupported(huge, (1, 1, 1, 1, 1), (1, 1, 1), ((0, 0),) * 3)
    with pytest.raises(op_module.dispatch.NoBackendError, match="triton: supports float16"):
        conv3d_bn_relu(torch.randn(1, 4, 2, 3, 3, dtype=torch.float64), torch.randn(8, 4, 1, 1, 1,
                       dtype=torch.float64), training=True, backend="triton")


# -- first-use self-check ---------------------------------------------------------------------------
@pytest.fixture
def _checking(monkeypatch):
    monkeypatch.setenv(selfcheck.ENV, "1")
    selfcheck.reset()
    yield
    selfcheck.reset()


def _train_step(backend, stride=2):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 8, 5, 6, 7, generator=g).contiguous(memory_format=CL).requires_grad_()
    w = (torch.randn(16, 8, 3, 3, 3, generator=g) / 216 ** 0.5).requires_grad_()
    y = conv3d_bn_relu(x, w, training=True, stride=stride, backend=backend)
    return [y.detach(), *torch.autograd.grad(y, (x, w), torch.randn(y.shape, generator=g))]


def _self_check_warnings(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    return result, [w for w in caught if issubclass(w.category, selfcheck.SelfCheckWarning)]


def test_self_check_passes_a_correct_variant_once(_checking, monkeypatch):
    _, caught = _self_check_warnings(lambda: _train_step("triton"))
    assert caught == []
    [(what, device, why)] = selfcheck.verdicts()
    assert what.startswith("conv3d_bn_train forward ") and "dgrad direct" in what and why is None
    calls = []
    monkeypatch.setattr(op_module, "_train_check", lambda *a: calls.append(a))
    _train_step("triton")
    assert calls == [], "a verified variant was checked again"


def test_self_check_routes_a_disagreeing_variant_to_aten(_checking, monkeypatch):
    original = tk.conv3d_input_grad
    monkeypatch.setattr(tk, "conv3d_input_grad", lambda *a, **k: original(*a, **k) + 1)
    ours, caught = _self_check_warnings(lambda: _train_step("triton"))
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "conv3d_bn_train variant forward" in message and "grad x" in message and "runs on ATen" in message
    aten = _train_step("aten")
    for a, b in zip(ours, aten):
        assert torch.equal(a, b)
    _, again = _self_check_warnings(lambda: _train_step("triton"))
    assert again == []


# -- GPU (skipped without one) ----------------------------------------------------------------------
@pytest.mark.gpu
def test_gpu_auto_picks_triton():
    x = torch.randn(2, 16, 4, 8, 8, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=CL)
    chosen = op_module.dispatch.select("conv3d_bn_relu", "auto", op_module.BACKENDS, x, (32, 16, 3, 3, 3),
                                       (1, 1, 1), ((1, 1),) * 3)
    assert chosen.name == "triton"


GPU_CASES = {
    "Conv3d_1a_7x7": (3, 64, 7, 2, "same", (2, 16, 64, 64), True, (0, 0)),
    "Conv3d_2b_1x1": (64, 64, 1, 1, "same", (2, 8, 28, 28), True, (0, 0)),
    "Conv3d_2c_3x3": (64, 192, 3, 1, "same", (2, 8, 28, 28), True, (0, 0)),
    "Mixed_b2b-slice": (16, 32, 3, 1, "same", (2, 8, 14, 14), True, (96, 16)),
    "MaxPool-stride2-3x3": (192, 96, 3, 2, "same", (2, 8, 14, 14), True, (0, 0)),
}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("name", list(GPU_CASES))
def test_gpu_matches_float64_like_cudnn(name, dtype):
    """Compiled kernels on a real device: errors against float64 within twice cuDNN's (ATen backend)."""
    def on_gpu(backend, dt):
        outs = _run_op(GPU_CASES[name], dt, backend, device="cuda")
        return [o.double().cpu() for o in outs]

    ref = on_gpu("reference", torch.float64)
    ours, aten = on_gpu("triton", dtype), on_gpu("aten", dtype)
    for label, o, a, r in zip(NAMES, ours, aten, ref):
        bound = 2 * _err(a, r) + 1e-6 * r.abs().max().item()
        assert _err(o, r) <= bound, f"{label}: {_err(o, r):.3e} > {bound:.3e}"

