"""Ahead-of-time report of every shipped Triton kernel variant; no GPU needed.

For each kernel/config/dtype in ``i3d_fast.kernels.triton.aot.all_specs()`` and each target
(sm_80, sm_90): registers per thread, shared memory per block (and the target's limit), ptxas spill
bytes, the tensor-core instructions in the PTX (mma.sync on sm_80, wgmma.mma_async on sm_90), and
from the cubin's SASS the main loop (innermost loop with HMMA / HGMMA): its instructions per K step
per warp, MMA instructions per K step per warp, and the issue-bound ceiling in % of tensor-core peak
(assumptions in ``i3d_fast.kernels.triton.sass``), with the resident CTAs per SM.
Exits non-zero if any variant spills, exceeds shared memory or lacks its tensor-core instruction.

    python benchmarks/kernel_report.py [--arch 80 90] [--filter SUBSTRING] [--jobs N]
"""
from __future__ import annotations

import argparse
import sys
import time

from i3d_fast.kernels.triton import aot


def problems(row) -> list:
    """What is wrong with one compiled variant (empty when nothing)."""
    found = []
    if row["spill_bytes"]:
        found.append(f"{row['spill_bytes']} spill bytes")
    if row["shared_bytes"] > row["shared_limit"]:
        found.append("shared memory over the limit")
    if row["expects"] and not row[row["expects"]]:
        found.append(f"no {row['expects']} instruction")
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(aot.ARCHS), choices=list(aot.ARCHS))
    parser.add_argument("--filter", default="", help="only variants whose name contains this")
    parser.add_argument("--jobs", type=int, default=2, help="compiler processes")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    names = [s.name for s in aot.all_specs() if args.filter in s.name]
    rows = aot.compile_all(args.arch, names, args.jobs)
    header = ("kernel/config/dtype", "arch", "regs", "smem B", "limit B", "spill B", "mma", "wgmma", "expects",
              "instr/K", "MMA/K", "ceiling %", "CTA/SM", "compile s")

    def opt(v, fmt="{}"):
        return "-" if v is None else fmt.format(v)

    table = [header] + [(r["name"], f"sm_{r['arch']}", str(r["registers"]), str(r["shared_bytes"]),
                         str(r["shared_limit"]), str(r["spill_bytes"]), str(r["mma"]), str(r["wgmma"]),
                         r["expects"] or "-", opt(r["instructions_per_k_step"]) + ("*" if r["inner_loops"] else ""),
                         opt(r["mma_per_k_step"]), opt(None if r["ceiling"] is None else 100 * r["ceiling"], "{:.0f}"),
                         opt(r["ctas_per_sm"]), f"{r['seconds']:.1f}") for r in rows]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    bad = [(r["name"], r["arch"], problems(r)) for r in rows if problems(r)]
    print(f"\n{len(rows)} compiles of {len({r['name'] for r in rows})} variants in {time.perf_counter() - start:.0f} s; "
          f"{len(bad)} with problems")
    if any(r["inner_loops"] for r in rows):
        print("* the main loop holds an inner loop whose body is counted once (a lower bound)")
    for name, arch, found in bad:
        print(f"  {name} sm_{arch}: {', '.join(found)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
