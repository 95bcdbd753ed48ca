"""Ahead-of-time compilation of Triton kernels for NVIDIA targets, without a GPU.

Used by the tests (every shipped kernel/config/dtype compiles for sm_80 and sm_90, uses tensor cores
where it should, and does not spill) and by ``benchmarks/kernel_report.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

from . import sass

ARCHS = (80, 90)


@dataclass(frozen=True)
class AotSpec:
    """One launchable variant of a kernel: its signature (arg -> Triton type, "constexpr" for
    compile-time args), the constexpr values, and launch options."""

    name: str
    fn: object
    signature: Dict[str, str]
    constexprs: Dict[str, object]
    num_warps: int = 4
    num_stages: int = 2
    #: Tensor-core instruction expected in the PTX per arch ("mma" on sm_80, "wgmma" on sm_90), or None.
    tensor_cores: Dict[int, str] = field(default_factory=dict)
    #: Pointer args the launcher passes 16-byte aligned (Triton specializes such pointers at run
    #: time; compiling them with the same divisibility hint makes the AOT build the one that runs).
    aligned: Tuple[str, ...] = ()
    #: Further compiler options the launcher passes too (e.g. ``{"enable_fp_fusion": True}``).
    options: Dict[str, object] = field(default_factory=dict)
    #: (BLOCK_M, BLOCK_N, BLOCK_K) of a GEMM kernel's K step, for the main loop's issue-bound
    #: ceiling (:mod:`.sass`); None for kernels without one.
    gemm_tile: Optional[Tuple[int, int, int]] = None


@dataclass
class AotResult:
    spec: AotSpec
    arch: int
    registers: int
    shared_bytes: int
    spill_bytes: int
    mma: int
    wgmma: int
    ptxas_log: str
    #: The main loop's issue-bound ceiling (None without a tensor-core loop or a ``gemm_tile``).
    ceiling: Optional["sass.Ceiling"] = None
    loop: Optional["sass.MainLoop"] = None


def ptxas_path() -> str:
    """Triton's bundled ptxas that accepts its PTX (the system ptxas may be older than the PTX ISA)."""
    import triton

    base = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    for name in ("ptxas-blackwell", "ptxas"):
        path = os.path.join(base, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"no ptxas in {base}")


def _ptxas_report(ptx: str, arch: int) -> str:
    target = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        done = subprocess.run([ptxas_path(), "-v", f"-arch={target}", src, "-o", os.path.join(tmp, "k.cubin")],
                              capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ptxas failed for {target}:\n{done.stderr}")
    return done.stderr + done.stdout


def compile_spec(spec: AotSpec, arch: int) -> AotResult:
    """Compiles ``spec`` for sm_``arch`` and reads registers, shared memory, spills and MMA counts."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    attrs = {(spec.fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in spec.aligned}
    src = ASTSource(fn=spec.fn, signature=spec.signature, constexprs=spec.constexprs, attrs=attrs)
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                            options={"num_warps": spec.num_warps, "num_stages": spec.num_stages, **spec.options})
    ptx = kernel.asm["ptx"]
    log = _ptxas_report(ptx, arch)
    registers = [int(v) for v in re.findall(r"Used (\d+) registers", log)]
    spills = [int(a) + int(b) for a, b in re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)]
    result = AotResult(spec=spec, arch=arch, registers=max(registers, default=0), shared_bytes=kernel.metadata.shared,
                       spill_bytes=sum(spills), mma=len(re.findall(r"\bmma\.sync", ptx)),
                       wgmma=len(re.findall(r"\bwgmma\.mma_async", ptx)), ptxas_log=log)
    if spec.tensor_cores:
        result.loop = sass.main_loop(sass.disassemble(kernel.asm["cubin"]))
        if result.loop is not None and spec.gemm_tile is not None:
            result.ceiling = sass.issue_ceiling(result.loop, arch, *spec.gemm_tile, spec.num_warps,
                                                result.registers, result.shared_bytes)
    return result


#: Shared memory per block that each target allows (bytes, opt-in maximum).
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


def all_specs() -> List[AotSpec]:
    """Every Triton kernel variant the library ships, from each kernel module's ``aot_specs()``."""
    import importlib
    import pkgutil

    from . import __path__ as package_path

    specs: List[AotSpec] = []
    for info in pkgutil.iter_modules(package_path):
        if info.name == "aot":
            continue
        module = importlib.import_module(f"{__package__}.{info.name}")
        if hasattr(module, "aot_specs"):
            specs.extend(module.aot_specs())
    return specs


def _compile_one(index: int, arch: int) -> Dict[str, object]:
    spec = all_specs()[index]
    start = time.perf_counter()
    r = compile_spec(spec, arch)
    c = r.ceiling
    return {"name": spec.name, "arch": arch, "registers": r.registers, "shared_bytes": r.shared_bytes,
            "shared_limit": SHARED_LIMIT[arch], "spill_bytes": r.spill_bytes, "mma": r.mma, "wgmma": r.wgmma,
            "expects": spec.tensor_cores.get(arch), "seconds": round(time.perf_counter() - start, 2),
            "loop_instructions": r.loop.instructions if r.loop else None,
            "loop_mma": r.loop.mma if r.loop else None,
            "inner_loops": r.loop.inner_loops if r.loop else None,
            "instructions_per_k_step": round(c.instructions_per_k_step, 1) if c else None,
            "mma_per_k_step": round(c.mma_per_k_step, 2) if c else None,
            "ceiling": round(c.fraction, 4) if c else None,
            "ctas_per_sm": c.ctas_per_sm if c else None}


def compile_all(archs=ARCHS, names: Optional[Iterable[str]] = None, jobs: int = 2) -> List[Dict[str, object]]:
    """Compiles the specs of :func:`all_specs` named in ``names`` (all when None) for each arch, in
    a fresh process (kernels imported under TRITON_INTERPRET=1 cannot be compiled) with ``jobs``
    compiler processes. Returns one dict per (spec, arch): name, arch, registers, shared_bytes,
    shared_limit, spill_bytes, mma, wgmma, expects (the tensor-core instruction expected), seconds,
    and from the SASS (None where the kernel has no tensor-core loop): loop_instructions, loop_mma,
    inner_loops, instructions_per_k_step and mma_per_k_step (per warp), ceiling (issue-bound
    fraction of tensor-core peak, see :mod:`.sass`), ctas_per_sm."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", __name__, "--jobs", str(jobs), "--arch", *[str(a) for a in archs]]
    if names is not None:
        cmd += ["--names", *names]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"AOT compilation failed ({' '.join(cmd)}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)


def _main() -> None:
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from i3d_fast.kernels.triton import aot

    parser = argparse.ArgumentParser(description="Compile shipped Triton kernels; JSON rows on stdout.")
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS))
    parser.add_argument("--names", nargs="*", help="spec names (default: all)")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    specs = aot.all_specs()
    unknown = set(args.names or ()) - {s.name for s in specs}
    if unknown:
        parser.error(f"unknown spec names: {sorted(unknown)}")
    work = [(i, arch) for i, s in enumerate(specs) if args.names is None or s.name in args.names
            for arch in args.arch]
    with ProcessPoolExecutor(max_workers=max(args.jobs, 1), mp_context=get_context("spawn")) as pool:
        rows = list(pool.map(aot._compile_one, *zip(*work))) if work else []
    json.dump(rows, sys.stdout)


if __name__ == "__main__":
    _main()
