"""Triton Conv3d kernel (i3d_fast.kernels.triton.conv3d) against a float64 reference.

The launcher runs on CPU tensors through the Triton interpreter (TRITON_INTERPRET=1, set in
conftest.py) on small shapes that still cover every I3D conv configuration, every shipped kernel
variant and config, row/column/channel tails, padding masks, channel-slice outputs and inputs.
bfloat16 is not checked here (the interpreter computes it wrongly): AOT compilation
(test_triton_aot.py) and the GPU tests at the end cover it.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, replace
from typing import Optional, Tuple

import pytest
import torch
import torch.nn.functional as F

from i3d_fast.kernels.triton import common
from i3d_fast.kernels.triton import conv3d as tc
from i3d_fast.models.i3d import ARCHITECTURE
from i3d_fast.padding import output_size, resolve_padding

SENTINEL = 7.0  # every output channel the kernel must leave alone holds this


def _cl(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last_3d)


def reference(x, weight, scale, shift, stride, pads, relu, pool, dtype=torch.float64):
    """The fused op in plain PyTorch, computed in ``dtype``: 3x3x3 SAME max pool (padding -inf,
    taken in float64: max is exact), zero padding, conv, per-channel affine, ReLU."""
    if pool:
        x = F.max_pool3d(F.pad(x.double(), (1, 1) * 3, value=float("-inf")), 3, 1)
    x, weight = x.to(dtype), weight.to(dtype)
    (t0, t1), (h0, h1), (w0, w1) = pads
    y = F.conv3d(F.pad(x, (w0, w1, h0, h1, t0, t1)), weight, stride=stride)
    y = y * scale.to(dtype).view(1, -1, 1, 1, 1) + shift.to(dtype).view(1, -1, 1, 1, 1)
    return y.relu() if relu else y


@dataclass(frozen=True)
class Case:
    n: int
    cin: int
    cout: int
    size: Tuple[int, int, int]
    kernel: Tuple[int, int, int] = (1, 1, 1)
    stride: Tuple[int, int, int] = (1, 1, 1)
    padding: object = "same"
    relu: bool = True
    pool: bool = False
    bias: bool = False  # scale = 1, shift = bias (the Logits conv)
    #: extra (before, after) channels around each destination's slice; two entries = two destinations
    outputs: Tuple[Tuple[int, int], ...] = ((0, 0),)
    split: Optional[int] = None  # output channels going to the first of two destinations
    x_slice: Tuple[int, int] = (0, 0)  # x is channels [before, before + cin) of a wider tensor
    x_layout: str = "channels_last"  # or "contiguous" (NCDHW: the launcher converts)
    out_view: int = 0  # destination 0 is a view starting this many channels into a wider tensor


def run_case(case: Case, dtype: torch.dtype, allow_tf32: bool = False, config=None, device: str = "cpu",
             packed: bool = False):
    """Runs the kernel; checks the untouched channels; returns (plan, result, float64 reference, inputs)."""
    g = torch.Generator().manual_seed(zlib.crc32(repr(case).encode()))
    x_full = torch.randn(case.n, case.x_slice[0] + case.cin + case.x_slice[1], *case.size, generator=g)
    if case.pool:
        x_full = x_full - 2.0  # mostly negative: a zero-padded pool would show
    x_full = x_full.to(dtype)
    x_full = _cl(x_full) if case.x_layout == "channels_last" else x_full.contiguous()
    x = x_full[:, case.x_slice[0]:case.x_slice[0] + case.cin].to(device)
    fan_in = case.cin * math.prod(case.kernel)
    weight = (torch.randn(case.cout, case.cin, *case.kernel, generator=g) / math.sqrt(fan_in)).to(dtype)
    if case.bias:
        scale, shift = torch.ones(case.cout), torch.randn(case.cout, generator=g)
    else:
        scale, shift = torch.rand(case.cout, generator=g) + 0.5, 0.2 * torch.randn(case.cout, generator=g)
    weight, scale, shift = weight.to(device), scale.to(device), shift.to(device)
    pads = resolve_padding(case.size, case.kernel, case.stride, case.padding)
    out_sizes = [output_size(s, k, st, p) for s, k, st, p in zip(case.size, case.kernel, case.stride, pads)]
    counts = [case.cout] if case.split is None else [case.split, case.cout - case.split]
    assert len(counts) == len(case.outputs)
    dests, bases = [], []
    for i, ((before, after), count) in enumerate(zip(case.outputs, counts)):
        lead = case.out_view if i == 0 else 0
        base = _cl(torch.full((case.n, lead + before + count + after, *out_sizes), SENTINEL, dtype=dtype, device=device))
        bases.append(base)
        dests.append((base[:, lead:], before, count))
    w_arg = tc.pack_weight(weight) if packed else weight
    pool = (3, 3, 3) if case.pool else None
    plan = tc.plan_config(x, w_arg, case.stride, pads, dests, pool, allow_tf32)
    tc.conv3d(x, w_arg, scale, shift, case.stride, pads, case.relu, dests, pool=pool, allow_tf32=allow_tf32,
              config=config)
    got, untouched = [], []
    for (out, before, count), base in zip(dests, bases):
        got.append(out[:, before:before + count])
        keep = torch.ones(base.shape[1], dtype=torch.bool)
        keep[base.shape[1] - out.shape[1] + before:][:count] = False
        untouched.append(base[:, keep])
    assert all(bool((u == SENTINEL).all()) for u in untouched), "a channel outside the destination slices changed"
    result = torch.cat(got, dim=1)
    assert result.shape == (case.n, case.cout, *out_sizes)
    expected = reference(x.cpu(), weight.cpu(), scale.cpu(), shift.cpu(), case.stride, pads, case.relu, case.pool)
    return plan, result.cpu(), expected, (x.cpu(), weight.cpu(), scale.cpu(), shift.cpu(), pads)


def check_accuracy(case: Case, result, expected, inputs, dtype, exact_fp32: bool = True):
    """fp32 (interpreter: exact products): close to float64. fp16/bf16: error against float64 at
    most twice that of the same computation done by PyTorch in that dtype."""
    if dtype == torch.float32 and exact_fp32:
        torch.testing.assert_close(result.double(), expected, rtol=2e-5, atol=2e-5)
        return
    x, weight, scale, shift, pads = inputs
    ours = (result.double() - expected).abs().max().item()
    torch_err = (reference(x, weight, scale, shift, case.stride, pads, case.relu, case.pool, dtype=dtype).double()
                 - expected).abs().max().item()
    assert ours <= 2 * torch_err + torch.finfo(dtype).tiny, (ours, torch_err)


# -- every distinct I3D conv configuration (small spatial sizes) ---------------------------------
I3D_CASES = {
    # 7x7x7 stride 2 on RGB, TF SAME: T 8 -> pads (2, 3), H 9 -> (3, 3), W 10 -> (2, 3)
    "Conv3d_1a_7x7-rgb": Case(1, 3, 64, (8, 9, 10), (7, 7, 7), (2, 2, 2)),
    # ... on flow (2 channels), batch 2: T 9 -> (3, 3), H 8 -> (2, 3), W 7 -> (3, 3)
    "Conv3d_1a_7x7-flow": Case(2, 2, 64, (9, 8, 7), (7, 7, 7), (2, 2, 2)),
    "Conv3d_2b_1x1": Case(1, 64, 64, (3, 5, 6)),
    "Conv3d_2c_3x3": Case(1, 64, 192, (2, 4, 5), (3, 3, 3)),
    # b0 | b1a | b2a as one GEMM: b0 into the block output [.., 80 ch], b1a | b2a into scratch
    "Mixed.b0|b1a|b2a": Case(2, 48, 16 + 24 + 8, (2, 3, 5), outputs=((0, 64), (0, 0)), split=16),
    # b1b reads channels [16, 64) of a scratch tensor, writes block channels [16, 48)
    "Mixed.b1b": Case(1, 48, 32, (2, 4, 5), (3, 3, 3), x_slice=(16, 0), outputs=((16, 32),)),
    # b2b: 16 input channels (a scratch slice), 3x3x3
    "Mixed.b2b": Case(1, 16, 32, (3, 3, 4), (3, 3, 3), x_slice=(48, 0), outputs=((48, 0),)),
    # b3b: 3x3x3 SAME max pool fused into the 1x1x1 conv's load, into block channels [64, 80)
    "Mixed.b3b": Case(2, 48, 16, (2, 3, 4), pool=True, outputs=((64, 0),)),
    # Logits: 1x1x1 with bias, no BatchNorm, no ReLU, on the 1x1 map left by the head's average pool
    "Logits": Case(2, 64, 40, (3, 1, 1), relu=False, bias=True),
}
# What fp16 (16-byte aligned channel runs) selects; fp32 without tf32 always takes FOLD/POOL unaligned.
I3D_FP16_MODE = {
    "Conv3d_1a_7x7-rgb": tc.STEM, "Conv3d_1a_7x7-flow": tc.STEM, "Conv3d_2b_1x1": tc.DIRECT,
    "Conv3d_2c_3x3": tc.DIRECT, "Mixed.b0|b1a|b2a": tc.DIRECT, "Mixed.b1b": tc.DIRECT, "Mixed.b2b": tc.FOLD,
    "Mixed.b3b": tc.POOL, "Logits": tc.DIRECT,
}


@pytest.mark.parametrize("name", list(I3D_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_i3d_layers(name, dtype):
    case = I3D_CASES[name]
    plan, result, expected, inputs = run_case(case, dtype, packed=name == "Conv3d_2c_3x3")
    if dtype == torch.float16:
        assert (plan.mode, plan.aligned) == (I3D_FP16_MODE[name], True)
    else:
        assert (plan.mode, plan.aligned) == (tc.POOL if case.pool else tc.FOLD, False)
    check_accuracy(case, result, expected, inputs, dtype)


@pytest.mark.parametrize("name", ["Conv3d_1a_7x7-rgb", "Conv3d_2c_3x3", "Mixed.b0|b1a|b2a", "Mixed.b3b"])
def test_i3d_layers_tf32_path(name):
    # The interpreter multiplies in full fp32, so this checks the tf32 variants' indexing exactly.
    case = I3D_CASES[name]
    plan, result, expected, inputs = run_case(case, torch.float32, allow_tf32=True)
    assert (plan.mode, plan.precision, plan.aligned) == (I3D_FP16_MODE[name], "tf32", True)
    check_accuracy(case, result, expected, inputs, torch.float32)


# -- general shapes --------------------------------------------------------------------------------
GENERAL_CASES = {
    "odd-channels-asymmetric-explicit": Case(2, 5, 7, (4, 5, 7), (2, 3, 1), (1, 3, 2), ((0, 1), (2, 1), (0, 0))),
    "strided-explicit-slice-out": Case(1, 8, 12, (5, 4, 9), (3, 2, 3), (2, 1, 3), ((1, 2), (0, 1), (2, 0)),
                                       relu=False, outputs=((8, 4),)),
    "padding-wider-than-kernel": Case(1, 8, 8, (2, 3, 3), padding=((1, 1), (0, 2), (1, 0))),
    "strided-1x1-valid": Case(2, 16, 24, (5, 6, 7), stride=(2, 2, 2), padding="valid"),
    "ncdhw-input": Case(1, 16, 16, (3, 4, 5), (3, 3, 3), x_layout="contiguous"),
    "misaligned-output-view": Case(1, 16, 16, (2, 3, 4), (1, 3, 3), outputs=((2, 1),), out_view=3),
    "misaligned-input-slice": Case(1, 12, 16, (2, 3, 4), (3, 1, 3), x_slice=(4, 3)),
    "odd-channels-pool": Case(1, 5, 7, (3, 4, 5), pool=True, relu=False, outputs=((1, 2),)),
}


@pytest.mark.parametrize("name", list(GENERAL_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_general_shapes(name, dtype):
    case = GENERAL_CASES[name]
    _, result, expected, inputs = run_case(case, dtype)
    check_accuracy(case, result, expected, inputs, dtype)


def test_widest_kernel_runs_and_wider_is_refused():
    # kT + kH + kW = 30 tap bits, SAME padding: the highest bits mask rows at both ends.
    case = Case(1, 64, 16, (1, 2, 33), (1, 1, 28))
    for dtype in (torch.float16, torch.float32):
        plan, result, expected, inputs = run_case(case, dtype)
        assert plan.mode == (tc.DIRECT if dtype == torch.float16 else tc.FOLD)
        check_accuracy(case, result, expected, inputs, dtype)
    with pytest.raises(ValueError, match="kT \\+ kH \\+ kW"):
        run_case(replace(case, kernel=(1, 1, 29)), torch.float16)


def test_nan_propagates_through_relu():
    x = _cl(torch.randn(1, 8, 1, 2, 2))
    x[0, 0, 0, 1, 1] = float("nan")
    out = _cl(torch.zeros(1, 8, 1, 2, 2))
    w = torch.randn(8, 8, 1, 1, 1)
    tc.conv3d(x, w, torch.ones(8), torch.zeros(8), (1, 1, 1), ((0, 0),) * 3, True, [(out, 0, 8)])
    assert out[0, :, 0, 1, 1].isnan().all() and not out[0, :, 0, 0].isnan().any()


# -- every shipped variant and config, forced ------------------------------------------------------
# A case per variant that lands on it; the shapes leave row, column and channel tails in every tile.
VARIANT_CASES = {
    (tc.DIRECT, True): Case(2, 112, 72, (2, 5, 7), (2, 3, 1), outputs=((8, 8), (0, 16)), split=32),
    (tc.FOLD, True): Case(1, 3, 72, (5, 6, 7), (3, 3, 3), (1, 2, 1), outputs=((8, 0),)),
    (tc.FOLD, False): Case(2, 5, 7, (3, 4, 5), (3, 1, 2), outputs=((1, 2),)),
    # 3 channels, 5 W taps (a 32-deep K step holds one (kt, kh) row with 12 padding rows), W padded
    # on both sides, strided, a sliced NCDHW input (the launcher copies it into the padded buffer)
    (tc.STEM, True): Case(2, 3, 72, (3, 5, 9), (2, 3, 5), (1, 2, 2), x_slice=(1, 0), x_layout="contiguous",
                          outputs=((8, 0),)),
    (tc.POOL, True): Case(2, 40, 72, (3, 4, 5), pool=True, outputs=((8, 0), (8, 0)), split=40),
    (tc.POOL, False): Case(1, 5, 7, (3, 4, 5), pool=True, outputs=((1, 1),)),
}
SHIPPED_TESTABLE = [(key, c) for key, configs in tc.SHIPPED.items() if key[1] != "bf16" for c in configs]


@pytest.mark.parametrize("key, config", SHIPPED_TESTABLE,
                         ids=[f"{tc.MODE_NAMES[k[0]]}-{k[1]}-{'vec' if k[2] else 'any'}-{c.name}"
                              for k, c in SHIPPED_TESTABLE])
def test_every_shipped_config(key, config):
    mode, precision, aligned = key
    dtype = torch.float16 if precision == "fp16" else torch.float32
    case = VARIANT_CASES[(mode, aligned)]
    plan, result, expected, inputs = run_case(case, dtype, allow_tf32=precision == "tf32", config=config)
    assert (plan.mode, plan.precision, plan.aligned) == key
    check_accuracy(case, result, expected, inputs, dtype)


def test_unshipped_config_is_refused():
    case = VARIANT_CASES[(tc.FOLD, False)]
    with pytest.raises(ValueError, match="not shipped"):
        run_case(case, torch.float16, config=common.Config(32, 32, 32, 4, 1))


# -- the launch heuristic on every full-size I3D layer ------------------------------------------------
def _i3d_layers(frames=64, size=224, in_channels=3):
    """(name, Cin, Cout, kernel, stride, pool, M) of every conv in I3D for one clip."""
    t, h, w, c = frames, size, size, in_channels
    layers = []
    for name, spec in ARCHITECTURE:
        if spec[0] == "unit":
            _, cout, kernel, stride = spec
            t, h, w = (-(-s // st) for s, st in zip((t, h, w), stride))
            layers.append((name, c, cout, kernel, stride, False, t * h * w))
            c = cout
        elif spec[0] == "max":
            t, h, w = (-(-s // st) for s, st in zip((t, h, w), spec[2]))
        else:
            b0, b1a, b1b, b2a, b2b, b3b = spec[1]
            m = t * h * w
            layers += [(f"{name}.b0|b1a|b2a", c, b0 + b1a + b2a, (1, 1, 1), (1, 1, 1), False, m),
                       (f"{name}.b1b", b1a, b1b, (3, 3, 3), (1, 1, 1), False, m),
                       (f"{name}.b2b", b2a, b2b, (3, 3, 3), (1, 1, 1), False, m),
                       (f"{name}.b3b", c, b3b, (1, 1, 1), (1, 1, 1), True, m)]
            c = b0 + b1b + b2b + b3b
    layers.append(("Logits", c, 400, (1, 1, 1), (1, 1, 1), False, max(t - 1, 1)))
    return layers


@pytest.mark.parametrize("precision", common.PRECISIONS)
@pytest.mark.parametrize("batch", [1, 16])
def test_heuristic_picks_shipped_variants_for_i3d(precision, batch):
    vec = common.vector_elements(precision)
    for stream in (3, 2):
        for name, cin, cout, kernel, stride, pool, m in _i3d_layers(in_channels=stream):
            mode, aligned = tc.choose_mode(precision, kernel, cin, pool, cin % vec == 0, cout % vec == 0)
            config = tc.choose_config(mode, precision, aligned, m * batch, cout, cin=cin)
            assert config in tc.SHIPPED[(mode, precision, aligned)], name
            if precision == "ieee":
                assert (mode, aligned) == (tc.POOL if pool else tc.FOLD, False), name
                continue
            assert aligned, name  # every I3D layer's outputs (and inputs after the stem) are 16-byte aligned
            if pool:
                assert mode == tc.POOL, name
            elif name.startswith("Conv3d_1a"):
                assert mode == tc.STEM, name  # the stem: (kt, kh) rows of a channel-padded copy
            elif kernel == (1, 1, 1):
                assert mode == tc.DIRECT, name
            else:  # 3x3x3: thin inputs (b2b with 16 channels) fold, the others load channel runs
                assert mode == (tc.DIRECT if cin >= 24 else tc.FOLD), name
            if mode == tc.DIRECT:  # the channel chunk that pads least
                assert tc.channel_waste(cin, config.block_k) == min(
                    tc.channel_waste(cin, c.block_k) for c in tc.SHIPPED[(mode, precision, aligned)]), name


def test_heuristic_prefers_big_tiles_when_the_grid_is_full():
    big = tc.choose_config(tc.DIRECT, "fp16", True, 100_000, 256)
    assert (big.block_m, big.block_n) == (128, 128)
    assert tc.choose_config(tc.DIRECT, "fp16", True, 100_000, 64).block_n == 64  # no half-empty column tiles
    assert tc.choose_config(tc.DIRECT, "fp16", True, 100_000, 192).block_n == 64  # 3 full tiles, not 2 x 128
    small = tc.choose_config(tc.DIRECT, "fp16", True, 392, 384)  # Mixed_5c at batch 1: 7x7x8 sites
    assert (small.block_m, small.block_n) == (64, 64)


@pytest.mark.parametrize("cin, block_k", [(64, 64), (96, 32), (144, 32), (480, 32), (528, 32), (832, 64), (None, 64)])
def test_direct_block_k_follows_channel_padding(cin, block_k):
    assert tc.choose_config(tc.DIRECT, "fp16", True, 100_000, 256, cin=cin).block_k == block_k
    if cin is not None:  # the other modes keep their own depth
        assert tc.choose_config(tc.FOLD, "fp16", True, 100_000, 256, cin=cin).block_k == 64


def test_launch_plan_is_reused_per_geometry(monkeypatch):
    planned = []
    make = tc._make_launch
    monkeypatch.setattr(tc, "_make_launch", lambda *a, **k: planned.append(a[0].shape) or make(*a, **k))
    monkeypatch.setattr(tc, "_LAUNCHES", {})
    w = torch.randn(8, 4, 3, 1, 3)
    pads = ((1, 1), (0, 0), (1, 1))

    def run(x, out, offset):
        tc.conv3d(x, w, None, None, (1, 1, 1), pads, False, [(out, offset, 8)])
        expected = reference(x, w, torch.ones(8), torch.zeros(8), (1, 1, 1), pads, False, False)
        torch.testing.assert_close(out[:, offset:offset + 8].double(), expected, rtol=2e-5, atol=2e-5)

    for _ in range(2):  # new tensors, same layout: planned once, each call reads and writes its own
        run(_cl(torch.randn(1, 4, 3, 2, 5)), _cl(torch.zeros(1, 8, 3, 2, 5)), 0)
    assert len(planned) == 1
    run(_cl(torch.randn(1, 4, 3, 2, 5)), _cl(torch.zeros(1, 11, 3, 2, 5)), 3)  # another destination layout
    run(_cl(torch.randn(1, 4, 3, 2, 6)), _cl(torch.zeros(1, 8, 3, 2, 6)), 0)  # another shape
    assert len(planned) == 3
    assert tc.conv3d(_cl(torch.randn(1, 4, 3, 2, 5)), w, None, None, (1, 1, 1), pads, False).shape == (1, 8, 3, 2, 5)
    assert tc.conv3d(_cl(torch.randn(1, 4, 3, 2, 5)), w, None, None, (1, 1, 1), pads, False).shape == (1, 8, 3, 2, 5)
    assert len(planned) == 4  # an output of its own: planned once too
    with pytest.raises(ValueError, match="destination 0"):  # bad arguments still get their message
        tc.conv3d(_cl(torch.randn(1, 4, 3, 2, 5)), w, None, None, (1, 1, 1), pads, False, [("out", 0, 8)])


def test_half_precision_shift_is_converted_once_and_follows_changes():
    x = _cl(torch.randn(1, 8, 1, 2, 3, dtype=torch.float16))
    w = torch.randn(8, 8, 1, 1, 1, dtype=torch.float16)
    shift = torch.randn(8, dtype=torch.float16)
    args = ((1, 1, 1), ((0, 0),) * 3, False)
    for _ in range(2):
        assert torch.equal(tc.conv3d(x, w, None, shift, *args), tc.conv3d(x, w, None, shift.float(), *args))
        shift.add_(1.0)  # an in-place change is seen by the next call


# -- errors -----------------------------------------------------------------------------------------
def _simple(dtype=torch.float32, cout=8):
    x = _cl(torch.randn(1, 4, 2, 3, 3, dtype=dtype))
    w = torch.randn(cout, 4, 1, 1, 1, dtype=dtype)
    return x, w, torch.ones(cout), torch.zeros(cout)


def test_destinations_must_cover_cout_and_fit():
    x, w, scale, shift = _simple()
    out = _cl(torch.zeros(1, 8, 2, 3, 3))
    args = ((1, 1, 1), ((0, 0),) * 3, True)
    with pytest.raises(ValueError, match="add up to Cout"):
        tc.conv3d(x, w, scale, shift, *args, [(out, 0, 6)])
    with pytest.raises(ValueError, match="do not fit"):
        tc.conv3d(x, w, scale, shift, *args, [(out, 2, 8)])
    with pytest.raises(ValueError, match="destination 0 is torch.float16"):
        tc.conv3d(x, w, scale, shift, *args, [(out.half(), 0, 8)])
    with pytest.raises(ValueError, match="destination 0 must be Tensor"):
        tc.conv3d(x, w, scale, shift, *args, [(out[:, :, :1], 0, 8)])
    with pytest.raises(ValueError, match="channel stride 1"):
        tc.conv3d(x, w, scale, shift, *args, [(out.contiguous(), 0, 8)])
    with pytest.raises(ValueError, match="1 or 2 destinations"):
        tc.conv3d(x, w, scale, shift, *args, [(out, 0, 2)] * 4)
    assert (out == 0).all()


def test_bad_pool_scale_and_shapes_are_refused():
    x, w, scale, shift = _simple()
    out = _cl(torch.zeros(1, 8, 2, 3, 3))
    with pytest.raises(ValueError, match="1x1x1 kernel"):
        tc.conv3d(x, torch.randn(8, 4, 3, 3, 3), scale, shift, (1, 1, 1), ((1, 1),) * 3, True, [(out, 0, 8)],
                  pool=(3, 3, 3))
    with pytest.raises(ValueError, match="pool must be None or"):
        tc.conv3d(x, w, scale, shift, (1, 1, 1), ((0, 0),) * 3, True, [(out, 0, 8)], pool=(2, 2, 2))
    with pytest.raises(ValueError, match=r"scale must be float32 Tensor\[8\]"):
        tc.conv3d(x, w, scale[:4], shift, (1, 1, 1), ((0, 0),) * 3, True, [(out, 0, 8)])
    with pytest.raises(ValueError, match="weight has Cin 5"):
        tc.conv3d(x, torch.randn(8, 5, 1, 1, 1), scale, shift, (1, 1, 1), ((0, 0),) * 3, True, [(out, 0, 8)])
    with pytest.raises(ValueError, match="no output"):
        tc.conv3d(x, torch.randn(8, 4, 3, 5, 3), scale, shift, (1, 1, 1), ((0, 0),) * 3, True, [(out, 0, 8)])
    with pytest.raises(TypeError, match="float32, float16 and bfloat16"):
        tc.conv3d(x.double(), w.double(), scale, shift, (1, 1, 1), ((0, 0),) * 3, True, [(out.double(), 0, 8)])


def test_pack_weight_layout():
    w = torch.randn(20, 3, 2, 3, 4)
    p = tc.pack_weight(w)
    assert p.data.shape == (2 * 3 * 4 * 3, 32) and (p.data[:, 20:] == 0).all()
    # row (kt, kh, kw, c), column o
    assert p.data[((1 * 3 + 2) * 4 + 3) * 3 + 2, 17] == w[17, 2, 1, 2, 3]


# -- on a GPU ---------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("name", list(I3D_CASES) + list(GENERAL_CASES))
@pytest.mark.parametrize("dtype, tf32", [(torch.bfloat16, False), (torch.float16, False), (torch.float32, True),
                                         (torch.float32, False)], ids=["bf16", "fp16", "tf32", "fp32"])
def test_gpu_matches_reference(name, dtype, tf32):
    case = {**I3D_CASES, **GENERAL_CASES}[name]
    case = replace(case, n=case.n * 2, size=tuple(s * 3 for s in case.size))  # a few more programs per launch
    _, result, expected, inputs = run_case(case, dtype, allow_tf32=tf32, device="cuda")
    if dtype == torch.float32 and not tf32:
        torch.testing.assert_close(result.double(), expected, rtol=1e-4, atol=1e-4)
        return
    x, weight, scale, shift, pads = [t.cuda() if isinstance(t, torch.Tensor) else t for t in inputs]
    prev = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        torch_y = reference(x, weight, scale, shift, case.stride, pads, case.relu, case.pool, dtype=dtype).cpu()
    finally:
        torch.backends.cudnn.allow_tf32 = prev
    ours = (result.double() - expected).abs().max().item()
    torch_err = (torch_y.double() - expected).abs().max().item()
    assert ours <= 2 * torch_err + torch.finfo(dtype).tiny, (ours, torch_err)


# -- the Mixed-block composition used by benchmarks/bench_conv3d.py ---------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_fused_mixed_block_matches_unfused(dtype):
    # One GEMM for b0|b1a|b2a (b0 in place, b1a|b2a to scratch), b1b / b2b on scratch slices, the
    # pool fused into b3b, all writing channel slices of one output: against the plain units + cat.
    from i3d_fast.bench.conv3d_cuda import Block, BlockProviders, Conv

    shape, widths = (2, 24, 3, 4, 5), (8, 48, 16, 8, 8, 8)
    b0, b1a, b1b, b2a, b2b, b3b = widths
    n, c, *size = shape
    block = Block("Mixed_test", shape, widths, [
        Conv("b0", shape, b0), Conv("b1a", shape, b1a), Conv("b1b", (n, b1a, *size), b1b, (3, 3, 3)),
        Conv("b2a", shape, b2a), Conv("b2b", (n, b2a, *size), b2b, (3, 3, 3)), Conv("b3", shape, b3b, pool=True)])
    providers = BlockProviders(block, dtype, "cpu", torch.Generator().manual_seed(1))
    x = _cl(torch.randn(shape) - 0.5).to(dtype)
    ours = providers.ours(x)

    def unit(i, inp):  # float64 reference of one unit (folded BatchNorm)
        u = providers.units[i]
        return reference(inp, u.weight, u.scale, u.shift, u.conv.stride, u.conv.pads, u.conv.relu, u.conv.pool)

    expected = torch.cat([unit(0, x), unit(2, unit(1, x)), unit(4, unit(3, x)), unit(5, x)], 1)
    assert ours.shape == expected.shape and ours.is_contiguous(memory_format=torch.channels_last_3d)
    tol = 1e-4 if dtype == torch.float32 else 1e-2  # fp16: b1b/b2b read a rounded scratch
    torch.testing.assert_close(ours.double(), expected, rtol=tol, atol=tol)
    with torch.no_grad():  # the cuDNN-side provider (here ATen on the CPU) computes the same block
        torch.testing.assert_close(providers.cudnn(x).double(), expected, rtol=tol, atol=tol)


def test_cudnn_kernel_names_are_recognised():
    from i3d_fast.bench.conv3d_cuda import cudnn_kernel

    assert cudnn_kernel(["void at::native::vol2col_kernel<float>", "sm90_xmma_fprop_implicit_gemm_bf16"]) \
        == "sm90_xmma_fprop_implicit_gemm_bf16"
    assert cudnn_kernel(["void at::native::vol2col_kernel<float>", "ampere_sgemm_128x64_nn"]) is None


def test_why_unsupported_gives_reasons():
    x = _cl(torch.randn(1, 4, 2, 3, 3))
    none = ((0, 0),) * 3
    assert tc.why_unsupported(x, (8, 4, 1, 1, 1), (1, 1, 1), none) is None
    assert tc.why_unsupported(x, (8, 4, 1, 1, 1), (1, 1, 1), none, pool=(3, 3, 3)) is None
    assert "float32, float16 and bfloat16" in tc.why_unsupported(x.double(), (8, 4, 1, 1, 1), (1, 1, 1), none)
    assert "1x1x1 kernel" in tc.why_unsupported(x, (8, 4, 3, 3, 3), (1, 1, 1), ((1, 1),) * 3, pool=(3, 3, 3))
    assert "no output" in tc.why_unsupported(x, (8, 4, 3, 5, 3), (1, 1, 1), none)
    # kT + kH + kW > 30: no tap bits left, in any mode
    wide = _cl(torch.randn(1, 8, 1, 1, 40, dtype=torch.float16))
    assert tc.why_unsupported(wide, (8, 8, 1, 1, 28), (1, 1, 1), none) is None
    assert "kT + kH + kW" in tc.why_unsupported(wide, (8, 8, 1, 1, 31), (1, 1, 1), none)
    assert "kT + kH + kW" in tc.why_unsupported(wide.float(), (8, 8, 1, 1, 31), (1, 1, 1), none, allow_tf32=True)


def test_weight_cache_follows_data_swaps_and_dtype_changes():
    x, w, scale, shift = _simple()
    pads = ((0, 0),) * 3
    first = tc.conv3d(x, w, scale, shift, (1, 1, 1), pads, False)
    w.data = torch.zeros_like(w)  # same tensor object and version, new storage
    assert (tc.conv3d(x, w, scale, shift, (1, 1, 1), pads, False) == shift.view(1, -1, 1, 1, 1)).all()
    w.mul_(2)  # in-place: version bump
    w.data = first.new_ones(w.shape)
    expected = tc.conv3d(x, w.clone(), scale, shift, (1, 1, 1), pads, False)
    torch.testing.assert_close(tc.conv3d(x, w, scale, shift, (1, 1, 1), pads, False), expected)


def test_malformed_packed_weight_is_refused():
    x, w, scale, shift = _simple()
    out = _cl(torch.zeros(1, 8, 2, 3, 3))
    packed = tc.pack_weight(w)
    bad = tc.PackedWeight(packed.data[:, :8], packed.cout, packed.cin, packed.kernel)
    with pytest.raises(ValueError, match="packed weight data must be a contiguous"):
        tc.conv3d(x, bad, scale, shift, (1, 1, 1), ((0, 0),) * 3, True, [(out, 0, 8)])


def test_why_unsupported_checks_destinations():
    x = _cl(torch.randn(1, 4, 2, 3, 3))
    none = ((0, 0),) * 3
    out = _cl(torch.zeros(1, 8, 2, 3, 3))
    assert tc.why_unsupported(x, (8, 4, 1, 1, 1), (1, 1, 1), none, destinations=[(out, 0, 8)]) is None
    planar = torch.zeros(1, 8, 2, 3, 3)  # NCDHW: channel stride is not 1
    assert "channel stride 1" in tc.why_unsupported(x, (8, 4, 1, 1, 1), (1, 1, 1), none,
                                                    destinations=[(planar, 0, 8)])


def test_inference_mode_weights_are_packed_not_cached():
    x, w, scale, shift = _simple()
    pads = ((0, 0),) * 3
    with torch.inference_mode():
        w_inf = w.clone()  # an inference tensor: no version counter
        y = tc.conv3d(x, w_inf, scale, shift, (1, 1, 1), pads, False)
        w_inf.zero_()
        assert (tc.conv3d(x, w_inf, scale, shift, (1, 1, 1), pads, False) == 0).all()
    torch.testing.assert_close(y, tc.conv3d(x, w, scale, shift, (1, 1, 1), pads, False))
