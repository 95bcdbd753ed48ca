"""Benchmarks the model suite: same as `i3d-fast bench --suite model` (pass --quick, --json PATH, --threads N)."""
import sys

from i3d_fast.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--suite", "model", *sys.argv[1:]]))
