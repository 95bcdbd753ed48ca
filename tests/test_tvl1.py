"""TV-L1: the reference against OpenCV 5 step by step, the C++ steps against the float64 reference,
the solvers' accuracy against OpenCV on synthetic pairs, the API and its errors."""
import numpy as np
import pytest
import torch

from i3d_fast.bench.tvl1_pairs import KINDS, epe, make_pair, opencv_flow
from i3d_fast.flow import TVL1Params, tvl1, tvl1_video
from i3d_fast.kernels.cpu import extension
from i3d_fast.kernels.cpu import tvl1 as cpu_tvl1
from i3d_fast.kernels.reference import tvl1 as ref

cv2 = pytest.importorskip("cv2", reason="opencv-contrib-python-headless (test extra) is the accuracy reference")


def _ptr(t):
    return t.data_ptr()


def _params(**kw):
    return TVL1Params(**kw)


# ---- the reference is OpenCV's algorithm: short runs agree to float rounding ----------------

STEP_CONFIGS = [
    # (OpenCV kwargs, our params): threshold only; + a second warp (bicubic at x + u); + divergence,
    # dual and median; + a pyramid level (resize, upsampling)
    (dict(nscales=1, warps=1, innnerIterations=1, outerIterations=1, medianFiltering=1),
     dict(nscales=1, warps=1, inner_iterations=1, outer_iterations=1, median_filtering=1)),
    (dict(nscales=1, warps=2, innnerIterations=1, outerIterations=1, medianFiltering=1),
     dict(nscales=1, warps=2, inner_iterations=1, outer_iterations=1, median_filtering=1)),
    (dict(nscales=1, warps=1, innnerIterations=3, outerIterations=2, medianFiltering=5),
     dict(nscales=1, warps=1, inner_iterations=3, outer_iterations=2, median_filtering=5)),
    (dict(nscales=2, warps=2, innnerIterations=2, outerIterations=1, medianFiltering=1),
     dict(nscales=2, warps=2, inner_iterations=2, outer_iterations=1, median_filtering=1)),
]


@pytest.mark.parametrize("cv_kwargs, ours", STEP_CONFIGS)
def test_reference_matches_opencv_step_by_step(cv_kwargs, ours):
    i0, i1, _ = make_pair("rotation", 40, 56, seed=1)
    expected = opencv_flow(i0, i1, **cv_kwargs)
    actual = ref.tvl1(torch.from_numpy(i0), torch.from_numpy(i1), _params(**ours), torch.float32).numpy()
    np.testing.assert_allclose(actual, expected, atol=2e-3, rtol=0)


def test_remap_bicubic_matches_opencv_inside_and_outside():
    rng = np.random.default_rng(0)
    img = (rng.random((12, 17)) * 255).astype(np.float32)
    mx = (rng.random((12, 17)) * 25 - 4).astype(np.float32)
    my = (rng.random((12, 17)) * 20 - 4).astype(np.float32)
    expected = cv2.remap(img, mx, my, cv2.INTER_CUBIC)
    (actual,) = ref.remap_bicubic([torch.from_numpy(img).double()], torch.from_numpy(mx).double(),
                                  torch.from_numpy(my).double())
    np.testing.assert_allclose(actual.numpy(), expected, atol=1e-3)


# ---- C++ steps against the float64 reference -------------------------------------------------

def test_cpu_resize_gradient_warp_median_match_reference():
    E = extension()
    g = torch.Generator().manual_seed(0)
    h, w = 19, 37  # odd sizes; w > 2 median blocks of 16 lanes, with a partial last block
    img = torch.rand(h, w, generator=g, dtype=torch.float64) * 255
    img32 = img.float()
    for dh, dw in ((15, 30), (24, 46)):  # down (pyramid) and up (flow) sampling
        sy, sx = h / dh, w / dw
        out = torch.empty(dh, dw)
        E.tvl1_resize(_ptr(img32), h, w, _ptr(out), dh, dw, sy, sx, 1.25)
        torch.testing.assert_close(out.double(), ref.resize_linear(img, dh, dw, sy, sx) * 1.25, atol=1e-3, rtol=1e-5)
    dx, dy = torch.empty(h, w), torch.empty(h, w)
    E.tvl1_centered_gradient(_ptr(img32), h, w, _ptr(dx), _ptr(dy))
    rdx, rdy = ref.centered_gradient(img)
    torch.testing.assert_close(dx.double(), rdx, atol=1e-4, rtol=0)
    torch.testing.assert_close(dy.double(), rdy, atol=1e-4, rtol=0)
    i0 = torch.rand(h, w, generator=g, dtype=torch.float64) * 255
    u1 = (torch.rand(h, w, generator=g, dtype=torch.float64) - 0.5) * 12  # some samples fall outside
    u2 = (torch.rand(h, w, generator=g, dtype=torch.float64) - 0.5) * 12
    outs = [torch.empty(h, w) for _ in range(3)]
    inputs = [t.float().contiguous() for t in (i0, img, rdx, rdy, u1, u2)]  # kept alive for the raw pointers
    E.tvl1_warp(*map(_ptr, inputs[:6]), h, w, *map(_ptr, outs))
    expected = ref.warp_terms(i0, img, rdx, rdy, u1.float().double(), u2.float().double())
    for got, want in zip(outs, (expected[0], expected[1], expected[3])):
        torch.testing.assert_close(got.double(), want, atol=5e-3, rtol=1e-4)
    for k in (3, 5):
        med = torch.empty(h, w)
        E.tvl1_median(_ptr(img32), _ptr(med), h, w, k)
        assert torch.equal(med, ref.median(img32, k)), f"{k}x{k} median differs"


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_cpu_fused_iterations_match_reference(threads):
    """The fused row sweep (and its band split over threads) equals the step-by-step reference."""
    g = torch.Generator().manual_seed(1)
    h, w = 23, 29
    rnd = lambda scale: (torch.rand(h, w, generator=g, dtype=torch.float64) - 0.5) * scale  # noqa: E731
    state = {"i1wx": rnd(40), "i1wy": rnd(40), "rho_c": rnd(30), "u1": rnd(4), "u2": rnd(4),
             "p11": rnd(1), "p12": rnd(1), "p21": rnd(1), "p22": rnd(1)}
    state["i1wx"][3, 4] = state["i1wy"][3, 4] = 0.0  # grad below FLT_EPSILON
    state["grad"] = state["i1wx"] ** 2 + state["i1wy"] ** 2
    ours = {k: v.float().contiguous() for k, v in state.items()}
    l_t, theta, taut = 0.15 * 0.3, 0.3, 0.25 / 0.3
    errors = extension().tvl1_iterate(*(_ptr(ours[k]) for k in ("i1wx", "i1wy", "rho_c", "u1", "u2", "p11", "p12",
                                                                "p21", "p22")), h, w, l_t, theta, taut, 4, threads)
    expected = [ref.iterate(state, l_t, theta, taut) for _ in range(4)]
    np.testing.assert_allclose(errors, expected, rtol=1e-4)
    for k in ("u1", "u2", "p11", "p12", "p21", "p22"):
        torch.testing.assert_close(ours[k].double(), state[k], atol=1e-4, rtol=1e-4)


def test_pyramid_sizes_match_reference():
    for h, w, n in ((256, 340, 5), (40, 56, 5), (17, 300, 5), (100, 100, 1)):
        assert [tuple(s) for s in extension().tvl1_pyramid_sizes(h, w, n, 0.8)] == ref.pyramid_sizes(h, w, n, 0.8)


@pytest.mark.parametrize("frames", ["uint8", "float"])
def test_cpu_solver_matches_float64_reference(frames):
    i0, i1, truth = make_pair("zoom", 40, 48, seed=2)
    if frames == "float":  # intensities in [0, 1]: both solvers scale them to 0..255 as OpenCV does
        i0, i1 = i0.astype(np.float32) / 255, i1.astype(np.float32) / 255
    ours = tvl1(i0, i1).numpy()
    oracle = tvl1(i0, i1, backend="reference").numpy()
    assert epe(ours, oracle) < 2e-3
    assert epe(ours, truth) < 0.5 * epe(np.zeros_like(truth), truth)


def test_cpu_iteration_counts_equal_the_float64_reference():
    """OpenCV's stopping rule (float eps^2 * pixels against the summed squared update, per outer and
    inner loop) runs the same number of inner iterations in the C++ solver as in the float64 oracle."""
    pairs = [make_pair(kind, 40, 48, seed=2) for kind in ("translation", "sinusoidal")]
    a = torch.from_numpy(np.stack([p[0] for p in pairs]))
    b = torch.from_numpy(np.stack([p[1] for p in pairs]))
    for params in (TVL1Params(), TVL1Params(epsilon=0.03, median_filtering=3)):
        counts = []
        cpu_tvl1.tvl1(a, b, params, iterations=counts)
        expected = []
        for x, y in zip(a, b):
            stats = {}
            ref.tvl1(x, y, params, torch.float64, stats)
            expected.append(stats["iterations"])
        assert counts == expected
        assert all(c < params.nscales * params.warps * params.inner_iterations * params.outer_iterations
                   for c in counts)  # the rule stopped early somewhere


# ---- accuracy against OpenCV 5 on every kind of motion ----------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_accuracy_within_opencv_plus_0005(kind):
    i0, i1, truth = make_pair(kind, 96, 128, seed=3)
    ours = tvl1(i0, i1).numpy()
    cv_epe = epe(opencv_flow(i0, i1), truth)
    assert epe(ours, truth) <= cv_epe + 0.005
    assert epe(ours, truth) < 0.5 * epe(np.zeros_like(truth), truth)


def test_batch_threads_and_single_pair_agree():
    pairs = [make_pair(k, 48, 64, seed=4) for k in ("translation", "rotation", "large")]
    a = np.stack([p[0] for p in pairs])
    b = np.stack([p[1] for p in pairs])
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(tvl1(a, b))
        one = [tvl1(x, y) for x, y in zip(a, b)]
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(results[0], results[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(results[0], torch.stack(one), atol=1e-5, rtol=0)


def test_float_frames_in_0_1_equal_uint8_frames():
    i0, i1, _ = make_pair("translation", 32, 40)
    as_u8 = tvl1(i0, i1)
    as_float = tvl1(torch.from_numpy(i0).double() / 255, torch.from_numpy(i1).float() / 255)
    torch.testing.assert_close(as_float, as_u8, atol=2e-3, rtol=0)


def test_video_helper_returns_t_minus_1_flows():
    i0, i1, _ = make_pair("translation", 32, 40)
    frames = torch.from_numpy(np.stack([i0, i1, i0, i1]))
    flows = tvl1_video(frames, batch_size=2)
    assert flows.shape == (3, 2, 32, 40) and flows.dtype == torch.float32
    torch.testing.assert_close(flows[1], tvl1(i1, i0), atol=0, rtol=0)


def test_params_opencv_names_and_validation():
    assert TVL1Params.from_kwargs(**{"lambda": 0.2, "nScales": 3}).lambda_ == 0.2
    assert TVL1Params() == TVL1Params(0.25, 0.15, 0.3, 5, 5, 0.01, 30, 10, 0.8, 5)
    for bad in (dict(tau=0.3), dict(scale_step=1.0), dict(nscales=0), dict(median_filtering=4),
                dict(epsilon=float("nan")), dict(warps=2.5)):
        with pytest.raises(ValueError, match="TVL1Params"):
            TVL1Params.from_kwargs(**bad)
    with pytest.raises(TypeError, match="unknown TV-L1 parameter 'gamma'"):
        TVL1Params.from_kwargs(gamma=0.1)


# ---- bad input: clear errors, nothing silent ---------------------------------------------------

def test_bad_input_errors():
    a = np.zeros((32, 32), np.uint8)
    with pytest.raises(ValueError, match="same shape"):
        tvl1(a, np.zeros((32, 33), np.uint8))
    with pytest.raises(ValueError, match="at least 16x16"):
        tvl1(a[:15], a[:15])
    with pytest.raises(ValueError, match=r"\[H, W\] or \[N, H, W\]"):
        tvl1(a[None, None], a[None, None])
    with pytest.raises(TypeError, match="uint8 or floating"):
        tvl1(a.astype(np.int16), a.astype(np.int16))
    with pytest.raises(TypeError, match="uint8 .* or floating"):
        tvl1(torch.zeros(32, 32, dtype=torch.int32), torch.zeros(32, 32, dtype=torch.int32))
    nan = torch.zeros(32, 32)
    nan[3, 4] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        tvl1(nan, torch.zeros(32, 32))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        tvl1(torch.full((32, 32), 200.0), torch.zeros(32, 32))
    with pytest.raises(ValueError, match="CPU or a CUDA device"):
        tvl1(torch.zeros(32, 32, device="meta"), torch.zeros(32, 32, device="meta"))
    with pytest.raises(TypeError, match="torch.Tensor or numpy.ndarray"):
        tvl1([[0] * 32] * 32, a)
    with pytest.raises(ValueError, match="unknown backend"):
        tvl1(a, a, backend="opencv")
    from i3d_fast.ops import NoBackendError

    if not torch.cuda.is_available():
        with pytest.raises(NoBackendError, match="cuda: needs a CUDA tensor"):
            tvl1(a, a, backend="cuda")
    with pytest.raises(ValueError, match="at least 2 frames"):
        tvl1_video(a[None])


@pytest.mark.gpu
def test_cuda_matches_cpu_on_a_batch():
    pairs = [make_pair(k, 64, 80, seed=5) for k in KINDS]
    a = torch.from_numpy(np.stack([p[0] for p in pairs]))
    b = torch.from_numpy(np.stack([p[1] for p in pairs]))
    on_gpu = tvl1(a.cuda(), b.cuda(), backend="cuda")
    assert on_gpu.device.type == "cuda" and on_gpu.shape == (len(KINDS), 2, 64, 80)
    on_cpu = tvl1(a, b, backend="cpu")
    for k, (_, _, truth) in enumerate(pairs):
        assert epe(on_gpu[k].cpu().numpy(), on_cpu[k].numpy()) < 0.01
        assert epe(on_gpu[k].cpu().numpy(), truth) <= epe(on_cpu[k].numpy(), truth) + 0.005


def test_solver_device_falls_back_to_the_cpu_without_cupy(monkeypatch):
    import warnings

    from i3d_fast.flow import solver
    from i3d_fast.kernels import cuda as cuda_kernels

    monkeypatch.setattr(solver, "_warned_no_cupy", False)
    monkeypatch.setattr(cuda_kernels, "cupy_missing", lambda: "CuPy is not installed (test)")
    with pytest.warns(RuntimeWarning, match=r"runs on the CPU, not on cuda:1: CuPy is not installed \(test\)"):
        assert solver.solver_device("cuda:1") == torch.device("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        assert solver.solver_device(torch.device("cuda")) == torch.device("cpu")
        assert solver.solver_device("cpu") == torch.device("cpu")
        monkeypatch.setattr(cuda_kernels, "cupy_missing", lambda: None)
        assert solver.solver_device("cuda:1") == torch.device("cuda:1")


@pytest.mark.gpu
def test_auto_solves_cuda_frames_on_the_cpu_without_cupy(monkeypatch):
    from i3d_fast.flow import solver
    from i3d_fast.kernels import cuda as cuda_kernels

    monkeypatch.setattr(solver, "_warned_no_cupy", False)
    monkeypatch.setattr(cuda_kernels, "cupy_missing", lambda: "CuPy is not installed (test)")
    i0, i1, _ = make_pair("rotation", 48, 64)
    with pytest.warns(RuntimeWarning, match="runs on the CPU"):
        got = tvl1(torch.from_numpy(i0).cuda(), torch.from_numpy(i1).cuda())
    assert got.is_cuda
    torch.testing.assert_close(got.cpu(), tvl1(i0, i1), rtol=0, atol=0)


def test_cuda_launcher_splits_batches_over_the_grid_z_limit(monkeypatch):
    """The pair index is blockIdx.z (at most 65535): larger batches are solved in slices, in order."""
    from i3d_fast.kernels.cuda import tvl1 as cuda_tvl1

    calls = []

    def solve(a, b, params, graphs):  # stands in for the launches: marks each slice
        calls.append(a.shape[0])
        return torch.full((a.shape[0], 2, *a.shape[1:]), float(len(calls)))

    monkeypatch.setattr(cuda_tvl1, "_solve", solve)
    monkeypatch.setattr(cuda_tvl1, "MAX_PAIRS", 3)
    frames = torch.zeros(7, 16, 16, dtype=torch.uint8)
    out = cuda_tvl1.tvl1(frames, frames, TVL1Params())
    assert calls == [3, 3, 1] and out.shape == (7, 2, 16, 16)
    assert out[:, 0, 0, 0].tolist() == [1, 1, 1, 2, 2, 2, 3]


@pytest.mark.gpu
def test_cuda_graph_replay_gives_the_launch_by_launch_flow():
    """Each level's outer iteration replayed as a CUDA graph: the same flow, bit for bit, as launching
    every kernel (the stopping rule is evaluated per pair on the device), without a capture warning."""
    import warnings

    from i3d_fast.kernels.cuda import tvl1 as cuda_tvl1

    pairs = [make_pair(k, 48, 64, seed=3) for k in KINDS]
    a = torch.from_numpy(np.stack([p[0] for p in pairs])).cuda()
    b = torch.from_numpy(np.stack([p[1] for p in pairs])).cuda()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        replayed = cuda_tvl1.tvl1(a, b, TVL1Params(), graphs=True)
    launched = cuda_tvl1.tvl1(a, b, TVL1Params(), graphs=False)
    assert torch.equal(replayed, launched)


@pytest.mark.gpu
def test_cuda_is_deterministic():
    """The stopping sum is per-block partial sums added in a fixed order: the same bits every run."""
    i0, i1, _ = make_pair("zoom", 96, 128, seed=6)
    a = torch.from_numpy(i0).cuda()[None].repeat(3, 1, 1)
    b = torch.from_numpy(i1).cuda()[None].repeat(3, 1, 1)
    first = tvl1(a, b, backend="cuda")
    for _ in range(2):
        assert torch.equal(tvl1(a, b, backend="cuda"), first)
    assert torch.equal(first[0], first[2])


@pytest.mark.gpu
def test_cuda_runs_on_the_current_stream():
    i0, i1, _ = make_pair("rotation", 48, 64)
    a, b = torch.from_numpy(i0).cuda(), torch.from_numpy(i1).cuda()
    expected = tvl1(a, b, backend="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = tvl1(a, b, backend="cuda")
    stream.synchronize()
    torch.testing.assert_close(got, expected)
