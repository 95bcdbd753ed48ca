"""Builds the CPU extension ``i3d_fast._C`` from ``csrc/`` and ships the CUDA sources.

The extension is plain C++17 + pybind11 + OpenMP: no libtorch and no CUDA toolkit at build
time. Kernels take raw data pointers and sizes; ``i3d_fast/kernels/cpu`` wraps them for tensors.

CUDA sources (``csrc/cuda/*.cu`` and the shared ``csrc/common/*.h`` headers) are copied into the
package as ``i3d_fast/_csrc`` so they can be compiled just in time (NVRTC via CuPy) on a GPU machine.

Environment:
  I3D_FAST_PORTABLE=1   build for generic x86-64-v2 instead of ``-march=native`` (for wheels
                        that run on other machines).
"""
import glob
import os
import platform
import shutil

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def _arch_flags():
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    if os.environ.get("I3D_FAST_PORTABLE") == "1":
        return ["-march=x86-64-v2"]
    return ["-march=native"]


class BuildPyWithCudaSources(build_py):
    """Copies csrc/common and csrc/cuda into the package for just-in-time CUDA compilation."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "i3d_fast", "_csrc")
        for sub in ("common", "cuda"):
            src_dir = os.path.join(HERE, "csrc", sub)
            if os.path.isdir(src_dir):
                shutil.copytree(src_dir, os.path.join(target, sub), dirs_exist_ok=True)


sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))

ext = Pybind11Extension(
    "i3d_fast._C",
    sources,
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=["-O3", "-fopenmp", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-fno-math-errno"] + _arch_flags(),
    extra_link_args=["-fopenmp"],
)

setup(ext_modules=[ext], cmdclass={"build_ext": build_ext, "build_py": BuildPyWithCudaSources})
