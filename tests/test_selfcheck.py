"""First-use self-check of the Triton kernels (i3d_fast.ops.selfcheck), on CPU tensors through the
interpreter with I3D_FAST_SELFCHECK=1: a variant made to disagree on purpose warns once, names
itself, and its calls give ATen's result from then on; a correct variant is checked once and keeps
running Triton; I3D_FAST_SELFCHECK=0 turns the check off."""
import warnings

import pytest
import torch

from i3d_fast.kernels.triton import conv3d as triton_conv3d
from i3d_fast.kernels.triton import pool3d as triton_pool3d
from i3d_fast.ops import conv3d, max_pool3d, selfcheck
from i3d_fast.ops.conv3d import inception_block_op
from i3d_fast.ops.selfcheck import SelfCheckWarning

CL = torch.channels_last_3d


@pytest.fixture(autouse=True)
def _checking(monkeypatch):
    monkeypatch.setenv(selfcheck.ENV, "1")
    selfcheck.reset()
    yield
    selfcheck.reset()


def _corrupt_conv(monkeypatch, when=lambda x, pool: True):
    """Makes the Triton conv launcher add 1 to what it writes when ``when(x, pool)``; returns the
    list of the input shapes it was called with."""
    original, calls = triton_conv3d.conv3d, []

    def corrupted(x, weight, scale, shift, stride, pads, relu, destinations=None, pool=None, allow_tf32=False,
                  config=None):
        calls.append(tuple(x.shape))
        result = original(x, weight, scale, shift, stride, pads, relu, destinations, pool, allow_tf32, config)
        if when(x, pool):
            for out, offset, count in destinations or [(result, 0, result.shape[1])]:
                out[:, offset:offset + count] += 1
        return result

    monkeypatch.setattr(triton_conv3d, "conv3d", corrupted)
    return calls


def _warnings(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    return result, [w for w in caught if issubclass(w.category, SelfCheckWarning)]


def test_a_disagreeing_conv_variant_warns_once_and_runs_on_aten(monkeypatch):
    calls = _corrupt_conv(monkeypatch, when=lambda x, pool: pool is None)
    x = (torch.randn(2, 3, 4, 6, 5)).contiguous(memory_format=CL)  # Cin 3: the FOLD variant
    w, shift = torch.randn(8, 3, 3, 3, 3), torch.randn(8)
    y, caught = _warnings(lambda: conv3d(x, w, None, shift, relu=True, backend="triton"))
    assert len(caught) == 1 and calls == [(1, 3, 4, 4, 4)]  # the check only, on a cut of the call
    (variant, device, why), = selfcheck.verdicts()
    assert variant.startswith("conv3d ") and " ieee " in variant and "max abs error" in why
    message = str(caught[0].message)
    assert f"Triton conv3d variant {variant[len('conv3d '):]} on cpu (Triton interpreter)" in message
    assert "runs on ATen" in message
    assert torch.equal(y, conv3d(x, w, None, shift, relu=True, backend="aten"))
    again, caught = _warnings(lambda: conv3d(x, w, None, shift, relu=True, backend="triton"))
    assert caught == [] and len(calls) == 1 and torch.equal(again, y)  # not checked again, still ATen


def test_a_correct_variant_is_checked_once_and_keeps_running_triton(monkeypatch):
    calls = _corrupt_conv(monkeypatch, when=lambda x, pool: False)
    x = torch.randn(2, 5, 3, 4, 4).contiguous(memory_format=CL)
    w = torch.randn(6, 5, 3, 3, 3)
    expected = conv3d(x, w, padding="same", backend="reference")
    y, caught = _warnings(lambda: conv3d(x, w, padding="same", backend="triton"))
    assert caught == [] and len(calls) == 2  # the check, then the call itself
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)
    conv3d(x, w, padding="same", backend="triton")
    assert len(calls) == 3
    (variant, _, why), = selfcheck.verdicts()
    assert variant.startswith("conv3d fold ieee unaligned ") and why is None


def test_the_cut_runs_the_calls_own_tile_config(monkeypatch):
    """A large call's tile (here 128x128x64, as with many programs per SM) is what the cut is run
    with, although choose_config would give so small a problem the smallest tile."""
    monkeypatch.setattr(triton_conv3d, "DEFAULT_SMS", 1)  # 2 programs count as a full GPU
    original, configs = triton_conv3d.conv3d, []

    def spy(x, weight, scale, shift, stride, pads, relu, destinations=None, pool=None, allow_tf32=False,
            config=None):
        configs.append((tuple(x.shape), None if config is None else config.name))
        return original(x, weight, scale, shift, stride, pads, relu, destinations, pool, allow_tf32, config)

    monkeypatch.setattr(triton_conv3d, "conv3d", spy)
    x = torch.randn(1, 16, 4, 8, 8).half().contiguous(memory_format=CL)  # 256 rows: two 128-row tiles
    w = (torch.randn(128, 16, 1, 1, 1) / 4).half()
    out = torch.empty((1, 128, 4, 8, 8), dtype=torch.half).contiguous(memory_format=CL)
    plan = triton_conv3d.plan_config(x, w, (1, 1, 1), ((0, 0),) * 3, [(out, 0, 128)])
    smallest = triton_conv3d.SHIPPED[plan[:3]][-1].name
    assert plan.config.name != smallest  # the premise: this call runs a larger tile than the smallest
    y, caught = _warnings(lambda: conv3d(x, w, backend="triton"))
    assert caught == [] and configs == [((1, 16, 3, 3, 3), plan.config.name), ((1, 16, 4, 8, 8), None)]
    assert [v for v, _, _ in selfcheck.verdicts()] == [f"conv3d direct fp16 aligned {plan.config.name}"]
    torch.testing.assert_close(y.double(), conv3d(x.double(), w.double(), backend="reference"), rtol=1e-2,
                               atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_inception_block_falls_back_per_variant_and_keeps_its_channel_slices(monkeypatch, dtype):
    """The fused model's Mixed block (destinations are channel slices of the block output and of a
    scratch tensor, which the check writes views of): with every variant but the fused pool corrupted,
    one warning per corrupted variant, the pool branch stays on Triton and the block is still right;
    with nothing corrupted, no warning and Triton's own output."""
    widths = [8, 8, 16, 8, 8, 8]
    b0, b1a, b1b, b2a, b2b, b3b = widths
    cin = 16
    x = torch.randn(1, cin, 3, 4, 4).to(dtype).contiguous(memory_format=CL)
    weights = [torch.randn(b0 + b1a + b2a, cin, 1, 1, 1), torch.randn(b1b, b1a, 3, 3, 3),
               torch.randn(b2b, b2a, 3, 3, 3), torch.randn(b3b, cin, 1, 1, 1)]
    weights = [(w / w[0].numel() ** 0.5).to(dtype).contiguous(memory_format=CL) for w in weights]
    shifts = [torch.randn(w.shape[0]).to(dtype) for w in weights]
    expected = inception_block_op(x.double(), [w.double() for w in weights], [s.double() for s in shifts], widths,
                                  False, "reference")
    tol = 1e-4 if dtype == torch.float32 else 1e-2
    monkeypatch.setenv(selfcheck.ENV, "0")
    plain = inception_block_op(x, weights, shifts, widths, False, "triton")
    monkeypatch.setenv(selfcheck.ENV, "1")

    calls = _corrupt_conv(monkeypatch, when=lambda x, pool: False)
    y, caught = _warnings(lambda: inception_block_op(x, weights, shifts, widths, False, "triton"))
    variants = [v for v, _, why in selfcheck.verdicts() if why is None]
    assert caught == [] and torch.equal(y, plain) and len(calls) == 4 + len(variants)
    assert len(variants) == len(selfcheck.verdicts()) >= 2 and sum(" pool " in v for v in variants) == 1

    selfcheck.reset()
    calls = _corrupt_conv(monkeypatch, when=lambda x, pool: pool is None)
    y, caught = _warnings(lambda: inception_block_op(x, weights, shifts, widths, False, "triton"))
    assert len(caught) == len(variants) - 1 and not any(" pool " in str(w.message) for w in caught)
    torch.testing.assert_close(y.double(), expected, rtol=tol, atol=tol)
    assert len(calls) == len(variants) + 1  # every check, then the pool branch itself


def test_pool_backward_variant_falls_back_alone(monkeypatch):
    original = triton_pool3d.pool3d_backward
    monkeypatch.setattr(triton_pool3d, "pool3d_backward", lambda *args: original(*args) * 2)
    x = torch.randn(2, 5, 4, 5, 6, requires_grad=True)
    y, caught = _warnings(lambda: max_pool3d(x, 3, 2, "same", backend="triton"))
    assert caught == []  # the forward agrees
    torch.testing.assert_close(y, max_pool3d(x.detach(), 3, 2, "same", backend="reference"), rtol=0, atol=0)
    g = torch.randn(y.shape)
    _, caught = _warnings(lambda: y.backward(g))
    assert len(caught) == 1 and "Triton pool3d variant backward max float32 uint8 taps" in str(caught[0].message)
    ref = x.detach().clone().requires_grad_(True)
    max_pool3d(ref, 3, 2, "same", backend="aten").backward(g)
    assert torch.equal(x.grad, ref.grad)


def test_off_switch_and_default(monkeypatch):
    calls = _corrupt_conv(monkeypatch)
    x = torch.randn(1, 3, 3, 4, 4).contiguous(memory_format=CL)
    w = torch.randn(4, 3, 1, 1, 1)
    plain = conv3d(x, w, backend="reference")
    for setting in ("0", "auto"):  # off; the default checks CUDA devices only (these are CPU tensors)
        monkeypatch.setenv(selfcheck.ENV, setting)
        y, caught = _warnings(lambda: conv3d(x, w, backend="triton"))
        assert caught == [] and torch.allclose(y, plain + 1, atol=1e-5)
    assert len(calls) == 2 and selfcheck.verdicts() == []
    monkeypatch.setenv(selfcheck.ENV, "yes")
    with pytest.raises(ValueError, match="I3D_FAST_SELFCHECK='yes': expected 0 .*, 1 .* or auto"):
        conv3d(x, w, backend="triton")


def test_a_variant_that_raises_counts_as_a_disagreement(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr(triton_conv3d, "conv3d", broken)
    x = torch.randn(1, 3, 3, 4, 4).contiguous(memory_format=CL)
    w = torch.randn(4, 3, 1, 1, 1)
    y, caught = _warnings(lambda: conv3d(x, w, backend="triton"))
    assert len(caught) == 1 and "raised RuntimeError: no kernel image" in str(caught[0].message)
    assert torch.equal(y, conv3d(x, w, backend="aten"))


def test_disagreement():
    y = torch.tensor([[1.0, -2.0, float("nan")]])
    assert selfcheck.disagreement(y.half(), y.double(), "fp16") is None
    assert selfcheck.disagreement(y + 0.001, y, "bf16") is None
    assert "max abs error 0.5" in selfcheck.disagreement(y + 0.5, y, "bf16")
    assert "finite in one result" in selfcheck.disagreement(torch.tensor([[1.0, 2.0, 3.0]]), y, "ieee")
    assert "shape (3,)" in selfcheck.disagreement(y[0], y, "ieee")


def test_doctor_names_the_setting_and_failed_variants(monkeypatch):
    from i3d_fast import doctor

    assert doctor._selfcheck_line().startswith("every Triton call (I3D_FAST_SELFCHECK=1")
    _corrupt_conv(monkeypatch)
    x = torch.randn(1, 3, 3, 4, 4).contiguous(memory_format=CL)
    _warnings(lambda: conv3d(x, torch.randn(4, 3, 1, 1, 1), backend="triton"))
    assert "FAILED (runs on ATen): conv3d " in doctor._selfcheck_line()
    monkeypatch.setenv(selfcheck.ENV, "0")
    assert doctor._selfcheck_line().startswith("off (I3D_FAST_SELFCHECK=0")
