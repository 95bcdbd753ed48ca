"""Every shipped Triton pooling variant compiles ahead of time for sm_80 and sm_90 (no GPU needed)
without spilling, within the shared-memory limit, and covers what the launcher picks for I3D.

Compiles in a fresh interpreter: tests set TRITON_INTERPRET=1 (conftest.py), under which
@triton.jit, triton.language's own jit helpers included, make interpreter-only functions.
"""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

from i3d_fast.kernels.triton import aot  # noqa: E402
from i3d_fast.kernels.triton import pool3d as triton_pool3d  # noqa: E402

COMPILE_ALL = """
import json
from i3d_fast.kernels.triton import aot, pool3d
rows = []
for spec in pool3d.aot_specs():
    for arch in aot.ARCHS:
        r = aot.compile_spec(spec, arch)
        rows.append({"name": spec.name, "arch": arch, "registers": r.registers, "spill_bytes": r.spill_bytes,
                     "shared_bytes": r.shared_bytes, "log": r.ptxas_log})
print(json.dumps(rows))
"""


@pytest.fixture(scope="module")
def compiled():
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    done = subprocess.run([sys.executable, "-c", COMPILE_ALL], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return {(row["name"], row["arch"]): row for row in json.loads(done.stdout.splitlines()[-1])}


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


@pytest.mark.parametrize("arch", aot.ARCHS)
def test_compiles_without_spills(compiled, arch):
    for spec in triton_pool3d.aot_specs():
        row = compiled[(spec.name, arch)]
        assert row["spill_bytes"] == 0, (spec.name, arch, row["log"])
        assert 0 < row["registers"] <= 128, (spec.name, arch, row["registers"])
        assert row["shared_bytes"] <= aot.SHARED_LIMIT[arch]
