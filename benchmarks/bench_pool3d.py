"""Benchmarks the pool3d suite: same as `i3d-fast bench --suite pool3d` (pass --quick, --json PATH, --threads N)."""
import sys

from i3d_fast.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--suite", "pool3d", *sys.argv[1:]]))
