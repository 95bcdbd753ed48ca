"""The C++ conv3d backend ("cpu") against the float64 reference: Winograd F(2x2x2, 3x3x3) for 3x3x3
convolutions (and its 1x3x3 / 3x1x1 forms, and the F(4, 3) tiles that run where reduced precision is
allowed), a GEMM (optionally of a max-pooled input) for 1x1x1 ones.

Winograd accuracy bound: Winograd rounds differently from a direct convolution. Its max abs error vs
float64 must stay within ERROR_FACTOR times that of ATen's own float32 ``F.conv3d`` on the same
inputs. Measured on all 19 of I3D's 3x3x3 channel pairs (Cin 16..192, Cout 32..384, 8x14x14 and 8x7x7
inputs, ReLU'd and signed) the ratio is 0.6x-2.7x (largest with Cin >= 96), and 0.2x-0.44x of the
error of oneDNN's ``_convolution_pointwise`` (the ``aten`` backend); 4x leaves room for shapes and
seeds the measurement did not cover without hiding a wrong transform (errors of 1e-2 and more).
"""
import math

import pytest
import torch
import torch.nn.functional as F

from i3d_fast.kernels import cpu as cpu_kernels
from i3d_fast.ops import conv3d, dispatch
from i3d_fast.ops.conv3d import BACKENDS, inception_block_op

pytestmark = pytest.mark.skipif(cpu_kernels.reject_unless_available(torch.zeros(1)) is not None,
                                reason="the C++ extension i3d_fast._C is not built")

CL = torch.channels_last_3d
ERROR_FACTOR = 4.0


def _data(n, cin, cout, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, *shape, generator=g, dtype=torch.float64)
    w = torch.randn(cout, cin, 3, 3, 3, generator=g, dtype=torch.float64) / (27 * cin) ** 0.5
    scale = torch.rand(cout, generator=g, dtype=torch.float64) + 0.5
    shift = torch.randn(cout, generator=g, dtype=torch.float64)
    return x, w, scale, shift


def _check(actual, x, w, scale, shift, relu):
    """actual (float32) vs the float64 reference, within ERROR_FACTOR x ATen's float32 error."""
    expected = conv3d(x, w, scale, shift, 1, "same", relu, backend="reference")
    aten = F.conv3d(x.float(), (w * scale.view(-1, 1, 1, 1, 1)).float(), shift.float(), padding=1)
    aten = torch.relu(aten) if relu else aten
    ours = (actual.double() - expected).abs().max().item()
    theirs = (aten.double() - expected).abs().max().item()
    assert ours <= ERROR_FACTOR * theirs + 1e-7, (ours, theirs)


# Cin covers the 16-, 8-, 4- and 1-channel input transforms; Cout covers output panels of 64, 48
# (3 vectors), 32 and 16 channels and a partial last vector; odd sizes make partial tiles.
@pytest.mark.parametrize("n, cin, cout, shape", [
    (2, 5, 7, (3, 5, 4)),
    (1, 16, 64, (4, 4, 4)),
    (1, 24, 40, (1, 1, 1)),
    (2, 37, 96, (5, 3, 6)),
    (1, 13, 130, (2, 7, 3)),
    (1, 8, 210, (3, 2, 5)),
])
@pytest.mark.parametrize("relu", [False, True])
def test_matches_reference(n, cin, cout, shape, relu):
    x, w, scale, shift = _data(n, cin, cout, shape)
    actual = conv3d(x.float(), w.float(), scale.float(), shift.float(), 1, "same", relu, backend="cpu")
    assert actual.dtype == torch.float32 and actual.is_contiguous(memory_format=CL)
    _check(actual, x, w, scale, shift, relu)


@pytest.mark.parametrize("kernel", [(1, 3, 3), (3, 1, 1)], ids=["1x3x3", "3x1x1"])
@pytest.mark.parametrize("n, cin, cout, shape", [(2, 5, 7, (3, 5, 4)), (1, 37, 96, (2, 6, 9)), (1, 8, 130, (1, 1, 1))])
def test_factorised_kernels_match_reference(n, cin, cout, shape, kernel):
    """The lower-dimensional forms F(1x2x2, 1x3x3) and F(2x1x1, 3x1x1), SAME padding: against float64
    within ERROR_FACTOR x ATen's float32 error (input transforms of 16/8/4/1 channels, partial tiles
    and panels)."""
    x, _, scale, shift = _data(n, cin, cout, shape)
    w = torch.randn(cout, cin, *kernel, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    w = w / (math.prod(kernel) * cin) ** 0.5
    pads = tuple((k // 2, k // 2) for k in kernel)
    actual = conv3d(x.float(), w.float(), scale.float(), shift.float(), 1, pads, True, backend="cpu")
    expected = conv3d(x, w, scale, shift, 1, pads, True, backend="reference")
    aten = torch.relu(F.conv3d(x.float(), (w * scale.view(-1, 1, 1, 1, 1)).float(), shift.float(),
                               padding=[k // 2 for k in kernel]))
    ours = (actual.double() - expected).abs().max().item()
    assert ours <= ERROR_FACTOR * (aten.double() - expected).abs().max().item() + 1e-7


def test_many_tiles_over_several_chunks_and_threads():
    x, w, scale, shift = _data(1, 20, 70, (9, 13, 11), seed=1)
    actual = conv3d(x.float(), w.float(), None, shift.float(), 1, "same", True, backend="cpu")
    _check(actual, x, w, torch.ones_like(scale), shift, True)


@pytest.mark.parametrize("shape", [(3, 4, 5), (4, 5, 1), (1, 1, 1)])
def test_channel_slice_input_and_output(shape):
    x, w, scale, shift = _data(2, 11, 19, shape, seed=2)
    wide = torch.randn(2, 17, *shape).contiguous(memory_format=CL)
    wide[:, 4:15] = x.float()
    out = torch.full((2, 30, *shape), 7.0).contiguous(memory_format=CL)
    result = conv3d(wide[:, 4:15], w.float(), scale.float(), shift.float(), 1, "same", True, out=out,
                    channel_offset=6, backend="cpu")
    assert result is out
    _check(out[:, 6:25], x, w, scale, shift, True)
    assert (out[:, :6] == 7).all() and (out[:, 25:] == 7).all()


def test_destinations_split_inside_a_vector():
    from i3d_fast.kernels.cpu import conv3d as cpu_conv3d

    x, w, _, shift = _data(1, 6, 21, (2, 3, 3), seed=3)
    a = torch.zeros(1, 9, 2, 3, 3).contiguous(memory_format=CL)
    b = torch.zeros(1, 20, 2, 3, 3).contiguous(memory_format=CL)
    cpu_conv3d.conv3d(x.float(), w.float(), None, shift.float(), (1, 1, 1), ((1, 1),) * 3, False,
                      [(a, 2, 5), (b, 3, 16)])
    together = torch.cat([a[:, 2:7], b[:, 3:19]], 1)
    _check(together, x, w, torch.ones(21, dtype=torch.float64), shift, False)
    assert (a[:, :2] == 0).all() and (a[:, 7:] == 0).all() and (b[:, :3] == 0).all() and (b[:, 19:] == 0).all()


def test_non_channels_last_input_and_in_place_weight_change():
    x, w, _, _ = _data(1, 4, 5, (3, 3, 3), seed=4)
    w32 = w.float()
    first = conv3d(x.float(), w32, backend="cpu")  # contiguous NCDHW input: copied to channels-last
    _check(first, x, w, torch.ones(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64), False)
    w32.mul_(-2)  # the cached transformed weight must not be reused
    second = conv3d(x.float(), w32, backend="cpu")
    _check(second, x, -2 * w, torch.ones(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64), False)


def test_inference_mode_weight_changed_in_place():
    x, w, _, _ = _data(1, 4, 5, (3, 3, 3), seed=7)
    ones, zeros = torch.ones(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    with torch.inference_mode():
        w32 = w.float()  # an inference tensor: no version counter, so never cached
        _check(conv3d(x.float(), w32, backend="cpu"), x, w, ones, zeros, False)
        w32.mul_(3)
        _check(conv3d(x.float(), w32, backend="cpu"), x, 3 * w, ones, zeros, False)


def test_auto_picks_cpu_only_for_what_it_runs(monkeypatch):
    monkeypatch.setenv("I3D_FAST_AUTOTUNE", "0")  # the fixed rules; the measured choice: test_autotune.py
    x, w3, w1 = torch.zeros(1, 16, 3, 3, 3), torch.zeros(8, 16, 3, 3, 3), torch.zeros(5, 16, 1, 1, 1)
    pad1, pad0, ones = ((1, 1),) * 3, ((0, 0),) * 3, (1, 1, 1)

    def select(backend, *args):
        return dispatch.select("i3d_fast.conv3d", backend, BACKENDS, *args, False, None).name  # no tf32, own output

    if not cpu_kernels.extension().conv3d_avx512:
        assert select("auto", x, w3, ones, pad1, None) == "aten"
        pytest.skip("built without AVX-512: 'auto' leaves every convolution to oneDNN")
    assert select("auto", x, w3, ones, pad1, None) == "cpu"
    assert select("auto", x, w1, ones, pad0, None) == "cpu"
    assert select("auto", x, w1, ones, pad0, (3, 3, 3)) == "cpu"
    cases = [(x.double(), w3.double(), ones, pad1, None, "float32 only"),
             (x, w3, (2, 2, 2), pad1, None, "stride-1"),
             (x, w3, ones, pad0, None, "zero padding"),
             (x, w1, ones, pad1, None, "unpadded 1x1x1"),
             (x, torch.zeros(5, 16, 2, 3, 1), ones, pad0, None, "3x3x3, 1x3x3 and 3x1x1 .Winograd. and 1x1x1"),
             (x, w3, ones, pad1, (3, 3, 3), "max pool into 1x1x1")]
    for xx, ww, stride, pads, pool, reason in cases:
        assert select("auto", xx, ww, stride, pads, pool) != "cpu"
        with pytest.raises(dispatch.NoBackendError, match=reason):
            select("cpu", xx, ww, stride, pads, pool)
    # Runnable, but "auto" prefers oneDNN: few channels, or a plane of 100+ positions.
    wide = torch.zeros(16, 16, 3, 3, 3)
    for xx, ww in [(x[:, :4], torch.zeros(5, 4, 3, 3, 3)), (torch.zeros(1, 16, 1, 10, 10), wide)]:
        assert select("auto", xx, ww, ones, pad1, None) == "aten"
        assert select("cpu", xx, ww, ones, pad1, None) == "cpu"
    assert select("auto", torch.zeros(1, 16, 1, 9, 11), wide, ones, pad1, None) == "cpu"
    spatial, pad_hw = torch.zeros(16, 16, 1, 3, 3), ((0, 0), (1, 1), (1, 1))  # 1x3x3: timed only (autotune)
    assert select("auto", x, spatial, ones, pad_hw, None) == "aten"
    assert select("cpu", x, spatial, ones, pad_hw, None) == "cpu"


# Cin covers the 16-, 8-, 4- and 1-channel pooling paths; pools: I3D's 3x3x3 and others.
@pytest.mark.parametrize("n, cin, cout, shape, pool", [
    (2, 5, 7, (3, 4, 5), None),
    (1, 37, 70, (2, 3, 5), (3, 3, 3)),
    (1, 16, 130, (1, 1, 1), (3, 3, 3)),
    (2, 29, 33, (4, 3, 2), (1, 3, 3)),
    (1, 12, 48, (3, 5, 4), (2, 2, 2)),
])
@pytest.mark.parametrize("relu", [False, True])
def test_pointwise_matches_reference(n, cin, cout, shape, pool, relu):
    from i3d_fast.kernels.cpu import conv3d as cpu_conv3d
    from i3d_fast.kernels.reference import conv3d as reference_conv3d

    g = torch.Generator().manual_seed(6)
    x = torch.randn(n, cin, *shape, generator=g, dtype=torch.float64)
    x[0, 1, 0, 0, 0] = float("nan")  # max pooling propagates NaN, like the reference
    w = torch.randn(cout, cin, 1, 1, 1, generator=g, dtype=torch.float64) / cin ** 0.5
    shift = torch.randn(cout, generator=g, dtype=torch.float64)
    no_pad = ((0, 0),) * 3
    expected = reference_conv3d.conv3d_forward(x, w, None, shift, (1, 1, 1), no_pad, relu, pool)
    actual = cpu_conv3d.conv3d(x.float(), w.float(), None, shift.float(), (1, 1, 1), no_pad, relu, None, pool)
    assert actual.is_contiguous(memory_format=CL)
    torch.testing.assert_close(actual.double(), expected, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_inception_block_uses_cpu_and_matches_reference():
    widths = [3, 20, 18, 5, 7, 4]  # b0, b1a, b1b, b2a, b2b, b3b
    b0, b1a, b1b, b2a, b2b, b3b = widths
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 9, 3, 5, 4, generator=g, dtype=torch.float64)
    shapes = [(b0 + b1a + b2a, 9, 1), (b1b, b1a, 3), (b2b, b2a, 3), (b3b, 9, 1)]
    weights = [torch.randn(o, i, k, k, k, generator=g, dtype=torch.float64) / (i * k ** 3) ** 0.5
               for o, i, k in shapes]
    shifts = [torch.randn(o, generator=g, dtype=torch.float64) for o, _, _ in shapes]
    expected = inception_block_op(x, weights, shifts, widths, False, "reference")
    actual = inception_block_op(x.float(), [w.float() for w in weights], [s.float() for s in shifts], widths,
                                False, "auto")
    torch.testing.assert_close(actual.double(), expected, rtol=1e-5, atol=1e-5)


def test_opcheck():
    x, w, scale, shift = (t.float() for t in _data(1, 3, 4, (3, 4, 5)))
    torch.library.opcheck(torch.ops.i3d_fast.conv3d.default,
                          (x.requires_grad_(), w, scale, shift, [1, 1, 1], [1, 1, 1, 1, 1, 1], True, False, "cpu"))


@pytest.mark.parametrize("wide", [False, True], ids=["F(2,3)", "F(4,3)"])
@pytest.mark.parametrize("kernel", [(3, 3, 3), (1, 3, 3), (3, 1, 1)], ids=lambda k: "x".join(map(str, k)))
def test_winograd_chunk_is_timed_and_changes_no_output(monkeypatch, kernel, wide):
    """The tiles per work chunk are autotuned among the kernel's rule (0), CHUNK_CANDIDATES below the
    per-thread share and one chunk per thread; every chunk size gives the same output bit for bit,
    with either tile size. With I3D_FAST_AUTOTUNE=0 the kernel's rule."""
    from i3d_fast.kernels.cpu import autotune, conv3d as cpu_conv3d

    x = torch.randn(2, 16, 4, 8, 7).contiguous(memory_format=CL)
    packed = cpu_conv3d.prepare_weight(torch.randn(20, 16, *kernel), wide=wide)
    outputs, tried = {}, []

    def run(chunk):
        tried.append(chunk)
        out = torch.empty(2, 20, 4, 8, 7).contiguous(memory_format=CL)
        ext = cpu_kernels.extension()
        ext.winograd3d_forward(x.data_ptr(), 16, (2, 4, 8, 7), 16, packed.data.data_ptr(), 20, 0, False,
                               [(out.data_ptr(), 20, 20)], 2, chunk, kernel[0], kernel[1], 0, 0, wide)
        outputs[chunk] = out

    monkeypatch.setattr(autotune, "_CHOICES", {})
    chosen = cpu_conv3d._winograd_chunk(x, 16, packed, run)
    per_thread = -(-cpu_conv3d._tiles(x, kernel, wide) // torch.get_num_threads())
    expected = {0, -(-per_thread // 6) * 6} | {c for c in cpu_conv3d.CHUNK_CANDIDATES if c < per_thread}
    assert per_thread <= 2 * cpu_conv3d.CHUNK_CANDIDATES[-1]  # few tiles: one chunk per thread is tried
    assert set(tried) == expected and chosen in expected
    first = outputs[0]
    assert all(torch.equal(first, out) for out in outputs.values())
    monkeypatch.setenv("I3D_FAST_AUTOTUNE", "0")
    assert cpu_conv3d._winograd_chunk(x, 16, packed, run) == 0


# F(4, 3) tiles: measured on I3D / R(2+1)D channel pairs (Cin 5..256, signed and ReLU'd inputs), their
# max error is 4.6-53x that of ATen's float32 convolution (growing with Cin; about 1e-5 of the output's
# scale at Cin 256), so they only run where PyTorch is told reduced precision is fine. The factor still
# catches a wrong transform (errors of the output's scale).
WIDE_ERROR_FACTOR = 80.0


@pytest.fixture
def reduced_precision():
    """torch.backends.mkldnn.conv.fp32_precision = "tf32" for the test (PyTorch's switch for reduced-
    precision float32 convolutions), restored after."""
    from i3d_fast.bench.convert import _conv_fp32_precision

    if not hasattr(getattr(torch.backends.mkldnn, "conv", None), "fp32_precision"):
        pytest.skip(f"torch {torch.__version__} has no torch.backends.mkldnn.conv.fp32_precision (2.9+)")
    with _conv_fp32_precision("tf32"):
        yield


@pytest.mark.parametrize("kernel", [(3, 3, 3), (1, 3, 3), (3, 1, 1)], ids=lambda k: "x".join(map(str, k)))
@pytest.mark.parametrize("n, cin, cout, shape", [(2, 5, 7, (3, 5, 4)), (1, 29, 130, (6, 9, 7)), (1, 16, 20, (1, 1, 1))])
def test_wide_tiles_match_reference(n, cin, cout, shape, kernel):
    """F(2x4x4, 3x3x3), F(1x4x4, 1x3x3) and F(4x1x1, 3x1x1) against float64, scale folded and bias + ReLU
    fused: partial tiles (sizes not multiples of 4), 16/8/4/1-channel input transforms (29 = 16 + 8 + 4
    + 1), partial output panels."""
    from i3d_fast.kernels.cpu import conv3d as cpu_conv3d

    x, _, scale, shift = _data(n, cin, cout, shape)
    w = torch.randn(cout, cin, *kernel, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    w = w / (math.prod(kernel) * cin) ** 0.5
    pads = tuple((k // 2, k // 2) for k in kernel)
    packed = cpu_conv3d.prepare_weight(w.float(), scale.float(), wide=True)
    assert packed.wide
    actual = torch.empty(n, cout, *shape).contiguous(memory_format=CL)
    cpu_conv3d.conv3d_packed(x.float(), packed, shift.float(), True, [(actual, 0, cout)])
    expected = conv3d(x, w, scale, shift, 1, pads, True, backend="reference")
    aten = torch.relu(F.conv3d(x.float(), (w * scale.view(-1, 1, 1, 1, 1)).float(), shift.float(),
                               padding=[k // 2 for k in kernel]))
    ours = (actual.double() - expected).abs().max().item()
    assert ours <= WIDE_ERROR_FACTOR * (aten.double() - expected).abs().max().item() + 1e-6


@pytest.mark.parametrize("kernel", [(3, 3, 3), (1, 3, 3), (3, 1, 1)], ids=lambda k: "x".join(map(str, k)))
def test_wide_tiles_only_where_reduced_precision_is_allowed(monkeypatch, reduced_precision, kernel):
    """conv3d runs F(4, 3) tiles only for a constant weight (from its second call), under PyTorch's
    reduced-precision switch, with autotuning on, and when they measured faster; then its output is
    the wide kernel's bit for bit."""
    from i3d_fast.kernels.cpu import autotune, conv3d as cpu_conv3d

    x = torch.randn(2, 16, 5, 9, 6).contiguous(memory_format=CL)
    w = torch.randn(20, 16, *kernel) / 12
    pads = tuple((k // 2, k // 2) for k in kernel)
    monkeypatch.setattr(autotune, "_CHOICES", {})
    monkeypatch.setattr(autotune, "_best_times", lambda runs: [1.0] + [0.5] * (len(runs) - 1))  # wide is faster

    def run():
        return cpu_conv3d.conv3d(x, w, None, None, (1, 1, 1), pads, False)

    def with_tiles(wide):
        out = torch.empty(2, 20, 5, 9, 6).contiguous(memory_format=CL)
        cpu_conv3d.conv3d_packed(x, cpu_conv3d.prepare_weight(w, wide=wide), None, False, [(out, 0, 20)])
        return out

    narrow, wide = with_tiles(False), with_tiles(True)
    assert not torch.equal(narrow, wide)
    assert torch.equal(run(), narrow)  # first sight of the weight: it may be a training weight
    assert torch.equal(run(), wide)
    assert not cpu_conv3d.wide_tiles(x, w.requires_grad_())
    w.requires_grad_(False)
    monkeypatch.setenv("I3D_FAST_AUTOTUNE", "0")
    assert torch.equal(run(), narrow)
    monkeypatch.delenv("I3D_FAST_AUTOTUNE")
    torch.backends.mkldnn.conv.fp32_precision = "ieee"
    assert not cpu_conv3d.reduced_precision_allowed() and torch.equal(run(), narrow)


def test_training_weights_never_run_wide_tiles(monkeypatch, reduced_precision):
    """Through the op with a weight that requires grad (the kernels see a fresh alias per call, and the
    C++-vs-oneDNN timing must not count as a first sighting): F(2, 3) on every call, with F(4, 3)
    measured faster; the same weight frozen runs F(4, 3) from its second call."""
    from i3d_fast import ops
    from i3d_fast.kernels.cpu import autotune, conv3d as cpu_conv3d

    monkeypatch.setattr(autotune, "_CHOICES", {})
    monkeypatch.setattr(autotune, "_VERDICTS", {})
    monkeypatch.setattr(autotune, "_best_times", lambda runs: [1.0] + [0.5] * (len(runs) - 1))
    x = torch.randn(2, 16, 4, 8, 8).contiguous(memory_format=CL)
    w = (torch.randn(24, 16, 1, 3, 3) / 12).requires_grad_()

    def with_tiles(wide):
        out = torch.empty(2, 24, 4, 8, 8).contiguous(memory_format=CL)
        cpu_conv3d.conv3d_packed(x, cpu_conv3d.prepare_weight(w, wide=wide), None, False, [(out, 0, 24)])
        return out

    narrow, wide = with_tiles(False), with_tiles(True)
    for _ in range(3):
        assert torch.equal(ops.conv3d(x, w, padding=(0, 1, 1), backend="auto").detach(), narrow)
    w.requires_grad_(False)
    with torch.no_grad():
        outputs = [ops.conv3d(x, w, padding=(0, 1, 1), backend="auto") for _ in range(3)]
    assert torch.equal(outputs[0], narrow) and all(torch.equal(out, wide) for out in outputs[1:])
