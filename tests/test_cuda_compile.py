"""Every CUDA source (csrc/cuda/*.cu) compiles with nvcc for sm_80 and sm_90, warnings as errors.

The kernels are compiled just in time with NVRTC on GPU machines; this checks them where no GPU is.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))


def _nvcc():
    for candidate in (shutil.which("nvcc"), os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("source", SOURCES, ids=[s.name for s in SOURCES])
def test_cuda_source_compiles_without_warnings(source, arch, tmp_path):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (PATH or $CUDA_HOME/bin): the CUDA compile check needs the CUDA toolkit")
    cmd = [nvcc, "-std=c++17", f"-arch=sm_{arch}", "-c", "--Werror", "all-warnings", "-Xptxas", "-warn-spills",
           f"-I{ROOT / 'csrc'}", str(source), "-o", str(tmp_path / "out.o")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"


def test_there_are_cuda_sources():
    assert SOURCES, "csrc/cuda has no .cu files"
