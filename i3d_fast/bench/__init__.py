"""The benchmark suite behind ``i3d-fast bench``: built-in synthetic inputs, every provider timed
side by side in one run, a table on stdout and optionally JSON."""
from __future__ import annotations

from typing import Iterable, List

from . import conv3d, convert, model, pool3d, train, tvl1
from .plot import write_plots
from .report import Row, format_markdown, format_table, machine, summary, write_json, write_text

SUITES = {"pool3d": pool3d.run, "conv3d": conv3d.run, "model": model.run, "tvl1": tvl1.run,
          "train": train.run, "convert": convert.run}


def run(suites: Iterable[str] = tuple(SUITES), quick: bool = False, device: str = "cpu") -> List[Row]:
    rows: List[Row] = []
    for name in suites:
        rows.extend(SUITES[name](quick=quick, device=device))
    return rows


__all__ = ["SUITES", "Row", "format_markdown", "format_table", "machine", "run", "summary", "write_json", "write_plots",
           "write_text"]
