"""Benchmarks the tvl1 suite: same as `i3d-fast bench --suite tvl1` (pass --quick, --json PATH, --threads N).

Compares EPE and speed with OpenCV's cv2.optflow.DualTVL1OpticalFlow (opencv-contrib-python-headless)
on the same pairs with the same thread count, in one run."""
import sys

from i3d_fast.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--suite", "tvl1", *sys.argv[1:]]))
