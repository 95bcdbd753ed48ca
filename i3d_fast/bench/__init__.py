"""The benchmark suite behind ``i3d-fast bench``: built-in synthetic inputs, every provider timed
side by side in one run, a table on stdout and optionally JSON."""
from __future__ import annotations

import os
from typing import Iterable, List

from ..kernels.cpu.autotune import CACHE_ENV
from . import conv3d, convert, model, pool3d, train, tvl1
from .plot import write_plots
from .report import Row, format_markdown, format_table, machine, summary, write_json, write_text

SUITES = {"pool3d": pool3d.run, "conv3d": conv3d.run, "model": model.run, "tvl1": tvl1.run,
          "train": train.run, "convert": convert.run}


def run(suites: Iterable[str] = tuple(SUITES), quick: bool = False, device: str = "cpu") -> List[Row]:
    """Every row of ``suites``. Kernel timings stay in memory for the run and its subprocesses (each run
    times its own choices in its warm-ups, not ones an earlier process stored; the train suite's
    first-step rows point their subprocesses at a file of their own)."""
    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = "0"
    try:
        rows: List[Row] = []
        for name in suites:
            rows.extend(SUITES[name](quick=quick, device=device))
        return rows
    finally:
        if before is None:
            del os.environ[CACHE_ENV]
        else:
            os.environ[CACHE_ENV] = before


__all__ = ["SUITES", "Row", "format_markdown", "format_table", "machine", "run", "summary", "write_json", "write_plots",
           "write_text"]
