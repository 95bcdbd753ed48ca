"""Every CUDA source (csrc/cuda/*.cu) compiles with nvcc for sm_80 and sm_90, warnings as errors, and
every kernel keeps its values in registers: 0 bytes of stack frame (no local memory) and no spills
under ptxas. What is compiled is the code string NVRTC gets on a GPU machine (headers inlined, no
include path).

The kernels are compiled just in time with NVRTC on GPU machines; this checks them where no GPU is.
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from i3d_fast.kernels.cuda import source_code

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))


def _nvcc():
    for candidate in (shutil.which("nvcc"), os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


def _inlined(source, tmp_path):
    """The source as the JIT compiles it, written to a file."""
    path = tmp_path / source.name
    path.write_text(source_code(source.name))
    return path


def _compile(cmd):
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))}\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("source", SOURCES, ids=[s.name for s in SOURCES])
def test_cuda_source_compiles_without_warnings(source, arch, tmp_path):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (PATH or $CUDA_HOME/bin): the CUDA compile check needs the CUDA toolkit")
    _compile([nvcc, "-std=c++17", f"-arch=sm_{arch}", "-c", "--Werror", "all-warnings", "-Xptxas", "-warn-spills",
              str(_inlined(source, tmp_path)), "-o", str(tmp_path / "out.o")])


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("source", SOURCES, ids=[s.name for s in SOURCES])
def test_cuda_kernels_use_no_stack_frame(source, arch, tmp_path):
    """PTX from nvcc, then Triton's bundled ptxas -v: every kernel reports 0 bytes stack frame and
    0 bytes spilled (arrays such as the median's window must live in registers)."""
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (PATH or $CUDA_HOME/bin): the CUDA compile check needs the CUDA toolkit")
    try:
        from i3d_fast.kernels.triton.aot import ptxas_path

        ptxas = ptxas_path()
    except (ImportError, FileNotFoundError) as exc:
        pytest.skip(f"Triton's bundled ptxas is not available ({exc})")
    ptx = tmp_path / "out.ptx"
    _compile([nvcc, "-std=c++17", f"-arch=sm_{arch}", "-ptx", str(_inlined(source, tmp_path)), "-o", str(ptx)])
    report = _compile([ptxas, "-v", f"-arch=sm_{arch}", str(ptx), "-o", str(tmp_path / "out.cubin")])
    kernels = re.findall(r"Function properties for (\w+)\s*\n\s*(\d+) bytes stack frame, (\d+) bytes spill stores, "
                         r"(\d+) bytes spill loads", report)
    entries = set(re.findall(r"\.visible \.entry (\w+)\(", ptx.read_text()))
    assert entries and entries <= {k[0] for k in kernels}, report
    used = {name: (int(stack), int(stores), int(loads)) for name, stack, stores, loads in kernels if name in entries}
    assert used == {name: (0, 0, 0) for name in entries}, report


def test_there_are_cuda_sources():
    assert SOURCES, "csrc/cuda has no .cu files"


def test_headers_are_inlined_into_the_code_string(tmp_path):
    """CuPy caches compiled modules by code string: a header change must change the string."""
    (tmp_path / "common").mkdir()
    (tmp_path / "cuda").mkdir()
    (tmp_path / "common" / "a.h").write_text('#pragma once\n#include "common/b.h"\nint a = B;\n')
    (tmp_path / "common" / "b.h").write_text("#pragma once\n#define B 1\n")
    (tmp_path / "cuda" / "k.cu").write_text('// k\n#include "common/a.h"\n#include "common/b.h"\n#include <x.h>\nint k;\n')
    code = source_code("k.cu", tmp_path)
    assert code.split("\n") == ["// k", '#line 1 "common/a.h"', "", '#line 1 "common/b.h"', "", "#define B 1", "",
                                 '#line 3 "common/a.h"', "int a = B;", "", '#line 3 "cuda/k.cu"',
                                 '#line 4 "cuda/k.cu"', "#include <x.h>", "int k;", ""]
    (tmp_path / "common" / "b.h").write_text("#pragma once\n#define B 2\n")
    assert "#define B 2" in source_code("k.cu", tmp_path)
    real = source_code("tvl1.cu")
    assert '#include "common' not in real and "network_median" in real
