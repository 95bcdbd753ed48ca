"""Ahead-of-time report of every shipped Triton kernel variant, no GPU needed.

For each kernel/config/dtype in ``i3d_fast.kernels.triton.aot.all_specs()`` and each target
(sm_80, sm_90): registers per thread, shared memory per block, ptxas spill bytes and the number of
tensor-core instructions in the PTX (mma.sync on sm_80, wgmma.mma_async on sm_90).

    python benchmarks/kernel_report.py [--arch 80 90] [--filter SUBSTRING] [--jobs N]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")


def _compile(index: int, arch: int):
    from i3d_fast.kernels.triton import aot

    spec = aot.all_specs()[index]
    start = time.perf_counter()
    r = aot.compile_spec(spec, arch)
    return (spec.name, arch, r.registers, r.shared_bytes, aot.SHARED_LIMIT[arch], r.spill_bytes, r.mma, r.wgmma,
            spec.tensor_cores.get(arch, "-"), time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], choices=[80, 90])
    parser.add_argument("--filter", default="", help="only specs whose name contains this")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="compiler processes")
    args = parser.parse_args(argv)

    from i3d_fast.kernels.triton import aot

    specs = aot.all_specs()
    work = [(i, arch) for i, s in enumerate(specs) if args.filter in s.name for arch in args.arch]
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(args.jobs, 1), mp_context=get_context("spawn")) as pool:
        rows = list(pool.map(_compile, *zip(*work))) if work else []
    header = ("kernel/config/dtype", "arch", "regs", "smem B", "limit B", "spill B", "mma", "wgmma", "expects", "compile s")
    table = [header] + [(n, f"sm_{a}", str(r), str(s), str(lim), str(sp), str(mma), str(wg), exp, f"{t:.1f}")
                        for n, a, r, s, lim, sp, mma, wg, exp, t in rows]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    bad = [r for r in rows if r[5] or r[3] > r[4] or (r[8] == "mma" and not r[6]) or (r[8] == "wgmma" and not r[7])]
    print(f"\n{len(rows)} compiles of {len({r[0] for r in rows})} variants in {time.perf_counter() - start:.0f} s; "
          f"{len(bad)} with spills, too much shared memory or a missing tensor-core instruction")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
