"""Every shipped Triton kernel variant (``aot.all_specs()``) compiles for sm_80 and sm_90 without a
GPU: the expected tensor-core instruction is in the PTX (mma.sync on sm_80, wgmma.mma_async on
sm_90), ptxas reports no spills, and shared memory fits the target."""
import pytest

from i3d_fast.kernels.triton import aot

SPECS = aot.all_specs()
KEYS = [(spec.name, arch) for spec in SPECS for arch in aot.ARCHS]


@pytest.fixture(scope="module")
def compiled(request):
    """Compiles (in two worker processes) the (spec, arch) pairs that this session selected."""
    wanted = {item.callspec.params["key"] for item in request.session.items
              if item.module.__name__ == __name__ and hasattr(item, "callspec") and "key" in item.callspec.params}
    rows = aot.compile_all(sorted({arch for _, arch in wanted}), sorted({name for name, _ in wanted}), jobs=2)
    return {(r["name"], r["arch"]): r for r in rows}


def test_specs_are_unique_and_expect_tensor_cores():
    assert len({s.name for s in SPECS}) == len(SPECS)
    conv = [s for s in SPECS if s.name.startswith("conv3d.")]
    assert conv, "conv3d ships no variant"
    for s in conv:
        expected = {} if ".ieee." in s.name else {80: "mma", 90: "wgmma"}
        assert s.tensor_cores == expected, s.name


def test_every_config_the_heuristic_can_pick_is_compiled():
    # choose_config picks from SHIPPED only; every SHIPPED config of every variant is an AOT spec.
    from i3d_fast.kernels.triton import conv3d as tc

    names = {s.name for s in SPECS}
    for (mode, precision, aligned), configs in tc.SHIPPED.items():
        for config in configs:
            assert (f"conv3d.{tc.MODE_NAMES[mode]}.{precision}.{'vec' if aligned else 'any'}.{config.name}"
                    in names)
        for m in (1, 392, 25_088, 1_000_000):
            for cout in (16, 64, 96, 192, 400, 624):
                for cin in (None, 16, 24, 48, 96, 144, 480, 832):
                    assert tc.choose_config(mode, precision, aligned, m, cout, cin=cin) in configs


@pytest.mark.slow
@pytest.mark.parametrize("key", KEYS, ids=[f"{name}-sm{arch}" for name, arch in KEYS])
def test_compiles_without_spills(compiled, key):
    r = compiled[key]
    assert r["spill_bytes"] == 0, r
    assert r["shared_bytes"] <= aot.SHARED_LIMIT[r["arch"]], r
    if r["expects"]:
        assert r[r["expects"]] > 0, f"no {r['expects']} instruction in the PTX: {r}"
    if r["arch"] == 90 and r["expects"] == "wgmma":
        assert r["mma"] == 0, "sm_90 PTX falls back to mma.sync"
