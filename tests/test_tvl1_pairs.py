"""The synthetic TV-L1 pairs need no OpenCV (so `i3d-fast bench` runs without it) and are the pairs the
OpenCV recipe made: the same Gaussian-blurred texture, the same bicubic reflect-101 warp."""
import sys

import numpy as np
import pytest

from i3d_fast.bench import tvl1_pairs
from i3d_fast.bench.tvl1_pairs import KINDS, gaussian_blur, make_pair, motion, texture, warp


def test_pairs_without_opencv(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # as if OpenCV were not installed
    assert tvl1_pairs.opencv_missing() == "needs opencv-contrib-python-headless"
    for kind in KINDS:
        i0, i1, flow = make_pair(kind, 48, 64, seed=3)
        assert i0.dtype == i1.dtype == np.uint8 and i0.shape == i1.shape == (48, 64) and flow.shape == (2, 48, 64)
        # textured everywhere (no flat or black borders from the warp), the whole 20..235 range used
        assert 20 <= i1.min() <= 21 and 234 <= i1.max() <= 235 and i0.min() >= 15 and i0.max() <= 240
        assert min(np.abs(np.diff(i0.astype(int), axis=a)).mean() for a in (0, 1)) > 1.5
    assert np.hypot(*motion("large", 48, 64)).max() == pytest.approx(np.hypot(9.0, 4.5))
    assert np.hypot(*motion("sinusoidal", 48, 64)).max() == pytest.approx(3.0)


def test_pairs_equal_the_opencv_recipe():
    cv2 = pytest.importorskip("cv2", reason="opencv-contrib-python-headless (test extra) made the original pairs")
    rng = np.random.default_rng(0)
    for h, w in ((40, 48), (13, 90)):  # sigma 8 has 65 taps: wider than the image, mirrored repeatedly
        noise = rng.standard_normal((h, w))
        for sigma in (1.0, 3.0, 8.0):
            np.testing.assert_allclose(gaussian_blur(noise, sigma), cv2.GaussianBlur(noise, (0, 0), sigma),
                                       rtol=0, atol=1e-12)
    h, w = 96, 128
    base = texture(h, w, seed=3)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    for kind in KINDS:
        flow = motion(kind, h, w)
        expected = cv2.remap(base.astype(np.float32), (x + flow[0]).astype(np.float32),
                             (y + flow[1]).astype(np.float32), cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)
        np.testing.assert_allclose(warp(base, flow), expected, rtol=0, atol=1e-3)  # OpenCV samples in float32


def test_bench_tvl1_rows_without_opencv(monkeypatch):
    from i3d_fast.bench import tvl1 as bench_tvl1

    monkeypatch.setitem(sys.modules, "cv2", None)
    monkeypatch.setattr(bench_tvl1, "KINDS", ("translation",))
    rows = bench_tvl1._cpu_rows(quick=True)
    baseline = [r for r in rows if r.baseline]
    assert len(baseline) == 1 and baseline[0].timing is None
    assert baseline[0].note == "needs opencv-contrib-python-headless"
    ours = [r for r in rows if not r.baseline]
    assert ours and all(r.timing is not None for r in ours) and "EPE" in ours[0].extra
