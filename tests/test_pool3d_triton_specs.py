"""The shipped Triton pooling variants cover every kernel, dtype and I3D channel configuration the
launcher can pick. (That each one compiles for sm_80 / sm_90 without spills is checked for every
shipped kernel by tests/test_triton_aot.py.)"""
import pytest

pytest.importorskip("triton")

from i3d_fast.kernels.triton import pool3d as triton_pool3d  # noqa: E402


def test_specs_cover_every_kernel_dtype_and_i3d_block_config():
    specs = triton_pool3d.aot_specs()
    names = {spec.name for spec in specs}
    assert len(names) == len(specs)
    assert {spec.fn for spec in specs} == {triton_pool3d._pool_kernel, triton_pool3d._argmax_kernel,
                                            triton_pool3d._max_grad_kernel, triton_pool3d._avg_grad_kernel}
    for channels in triton_pool3d.I3D_CHANNELS:
        block_p, block_c = triton_pool3d.block_config(channels)
        tag = f"p{block_p}c{block_c}"
        for dtype in ("fp32", "fp16", "bf16"):
            for name in ("pool3d_max", "pool3d_avg", "pool3d_avg_grad"):
                assert f"{name}_{dtype}_{tag}" in names
            for name in ("pool3d_argmax", "pool3d_max_grad"):
                for index in ("u8", "i32"):
                    assert f"{name}_{dtype}_{index}_{tag}" in names
