"""The ``i3d-fast`` command line: one entry point, a subcommand per job."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def _bench(args: argparse.Namespace) -> int:
    import torch

    from . import bench

    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    info = bench.machine()
    print(f"i3d-fast bench on {device}: {info['cpu']}, {info['threads']} threads, torch {info['torch']}"
          + (f", GPU {info['cuda']}" if device == "cuda" else ""), flush=True)
    rows = bench.run(args.suite or list(bench.SUITES), quick=args.quick, device=device)
    print(bench.format_table(rows))
    if args.json:
        bench.write_json(rows, args.json)
        print(f"wrote {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="i3d-fast", description="Fast two-stream I3D: kernels, models and tools.")
    parser.add_argument("--version", action="version", version=f"i3d-fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from .bench import SUITES

    p = sub.add_parser("bench", help="benchmark the kernels and the model on this machine (synthetic inputs)",
                       description="Times every i3d_fast kernel and model path against its ATen baseline on "
                                   "built-in synthetic inputs, side by side in one run, and prints a table "
                                   "(median and 20/80%% quantiles in ms, speedup over the baseline).")
    p.add_argument("--quick", action="store_true", help="smaller inputs and fewer runs (about a minute)")
    p.add_argument("--suite", action="append", choices=sorted(SUITES), help="run only this suite (repeatable)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's default)")
    p.add_argument("--cpu", action="store_true", help="benchmark the CPU even when a GPU is present")
    p.add_argument("--json", metavar="PATH", help="also write the rows and machine info as JSON")
    p.set_defaults(func=_bench)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
