"""Conv3d on CUDA: every I3D conv layer and every Mixed block, i3d_fast's Triton kernels vs cuDNN.

    python benchmarks/bench_conv3d.py [--quick] [--batch N] [--dtypes bf16 fp16] [--out DIR]

channels_last_3d, bf16 and fp16, cudnn.benchmark on; the baseline is cuDNN Conv3d + BatchNorm + ReLU
(per block: the four branches and torch.cat), checked with the profiler to really run a cuDNN kernel.
Prints medians with 20/80% quantiles and speedups, writes CSV, JSON and a plot under --out.
Design target on an H100: >= 1.3x cuDNN Conv3d+BN+ReLU. Without a CUDA GPU it says so and exits
with status 2; it never prints a GPU number that was not measured.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile

import torch

from i3d_fast.bench import conv3d_cuda as suite
from i3d_fast.bench.report import format_table, machine, speedups, write_json

TARGET = 1.3


def _atomic_path(path: str):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    os.close(fd)
    return tmp


def write_csv(rows, path: str) -> None:
    ratio = speedups(rows)
    tmp = _atomic_path(path)
    with open(tmp, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["case", "provider", "baseline", "median_ms", "q20_ms", "q80_ms", "runs", "speedup",
                      "tflops", "note"])
        for i, r in enumerate(rows):
            t = r.timing
            out.writerow([r.case, r.provider, r.baseline, t.median_ms, t.q20_ms, t.q80_ms, t.runs,
                          ratio.get(i, ""), r.extra.get("TFLOP/s", ""), r.note])
    os.replace(tmp, path)


def plot(rows, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratio = speedups(rows)
    ours = [(r.case, ratio[i]) for i, r in enumerate(rows) if r.provider == suite.OURS and i in ratio]
    fig, ax = plt.subplots(figsize=(8, max(4, 0.18 * len(ours))))
    ax.barh([c for c, _ in ours], [s for _, s in ours], color=["tab:green" if s >= 1 else "tab:red" for _, s in ours])
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.axvline(TARGET, color="tab:blue", linestyle="--", linewidth=0.8, label=f"target {TARGET}x")
    ax.set_xlabel(f"speedup over {suite.BASELINE} (median)")
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="y", labelsize=5)
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    fig.tight_layout()
    tmp = _atomic_path(path)
    fig.savefig(tmp, dpi=150, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 frames instead of 64, fewer runs")
    parser.add_argument("--batch", type=int, default=1, help="clips per batch (default 1)")
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp16"], choices=sorted(suite.DTYPES))
    parser.add_argument("--layers-only", action="store_true")
    parser.add_argument("--blocks-only", action="store_true")
    parser.add_argument("--out", default="bench-out/conv3d", help="directory for conv3d.csv, .json and .png")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print("bench_conv3d: needs a CUDA GPU and this machine has none (torch.cuda.is_available() is False); "
              "nothing was measured.", file=sys.stderr)
        return 2
    info = machine()
    title = f"{info['cuda']}, torch {info['torch']}, batch {args.batch}"
    print(f"bench_conv3d on {title}", flush=True)
    rows = suite.run(args.quick, "cuda", args.batch, tuple(args.dtypes), layers=not args.blocks_only,
                     blocks=not args.layers_only)
    print(format_table(rows))
    os.makedirs(args.out, exist_ok=True)
    write_csv(rows, os.path.join(args.out, "conv3d.csv"))
    write_json(rows, os.path.join(args.out, "conv3d.json"))
    try:
        plot(rows, os.path.join(args.out, "conv3d.png"), title)
    except ImportError as e:
        print(f"no plot ({e}); pip install matplotlib", file=sys.stderr)
    print(f"wrote {args.out}/conv3d.csv, .json" + ("" if not os.path.exists(os.path.join(args.out, "conv3d.png"))
                                                    else ", .png"))
    print(f"\ngeometric-mean speedup over {suite.BASELINE} (design target {TARGET}x on an H100):")
    for group, value in sorted(suite.geomean_speedups(rows).items()):
        print(f"  {group}: {value:.2f}x ({'meets' if value >= TARGET else 'below'} the target)")
    missing = [r.case for r in rows if r.baseline and not r.note.startswith("cuDNN kernel")]
    if missing:
        print(f"\n{len(missing)} baselines ran no cuDNN kernel (see notes): {missing[:3]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
