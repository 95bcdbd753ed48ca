"""Everything worth knowing from a few minutes on a GPU, in one command (see i3d_fast/bench/gpu_check.py):

    python benchmarks/gpu_check.py --out DIR [--budget-s 480] [--dry-run]
"""
import sys

from i3d_fast.bench.gpu_check import main

if __name__ == "__main__":
    sys.exit(main())
