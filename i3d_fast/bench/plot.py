"""Benchmark plots, one figure per suite, readable at 100% zoom (needs matplotlib, the ``bench`` extra).

A suite that compares providers with a baseline gets the speedup of every measured row over its case's
baseline, on a log axis with the 1x line. A breakdown suite (``*-layers``: the model's time per layer;
``*-profile``: the training step's time per op) gets its rows' times on a linear axis, so the big
shares stand out. Each bar is labelled "case: provider" (colour: provider). A figure holds at most :data:`ROWS_PER_FIGURE` bars (at most ~2000 px tall); a
longer suite continues in ``-2``, ``-3``, ... figures. Rows that were not measured are never drawn.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

from .._atomic import atomic_write
from .._optional import require
from .report import Row, machine, speedups

#: Bars per figure: 0.24 inch each at 100 dpi keeps a figure under ~2000 px.
ROWS_PER_FIGURE = 72
DPI = 100
LABEL_CHARS = 110


def _is_breakdown(suite: str) -> bool:
    return suite.endswith("-layers") or suite.endswith("-profile")


def _label(case: str, provider: str) -> str:
    """"case: provider" in at most LABEL_CHARS characters, shortening the case first (the provider is
    what tells the bars of one case apart)."""
    room = LABEL_CHARS - len(provider) - 2
    if room < 20:
        provider = provider[: LABEL_CHARS - 25] + "..."
        room = 20
    return f"{case if len(case) <= room else case[: room - 3] + '...'}: {provider}"


def _bars(rows: List[Row]) -> Dict[str, List[Tuple[str, str, float, str]]]:
    """Per suite, the bars to draw: (label, provider, value, annotation)."""
    ratio = speedups(rows)
    bars: Dict[str, List[Tuple[str, str, float, str]]] = {}
    for i, r in enumerate(rows):
        if r.timing is None:
            continue
        if _is_breakdown(r.suite):
            bars.setdefault(r.suite, []).append(
                (_label(r.case, r.provider), r.provider, r.timing.median_ms,
                 f"{r.timing.median_ms:.3g} ms" + (f"  {r.note}" if r.note else "")))
        elif i in ratio and not r.baseline:
            bars.setdefault(r.suite, []).append(
                (_label(r.case, r.provider), r.provider, ratio[i], f"{ratio[i]:.2f}x"))
    return bars


def suite_plot_paths(path: str, suites: List[str]) -> List[str]:
    """Where :func:`write_plots` writes the first figure of each suite: ``<stem>-<suite>.png`` beside ``path``."""
    p = Path(path)
    return [str(p.with_name(f"{p.stem}-{suite}{p.suffix or '.png'}")) for suite in suites]


def write_plots(rows: List[Row], path: str) -> List[str]:
    """Writes one PNG per suite (``<stem>-<suite>.png`` beside ``path``, continued in ``...-<suite>-2.png``
    when a suite has more than :data:`ROWS_PER_FIGURE` bars) atomically; returns the paths written."""
    matplotlib = require("matplotlib", "bench", "the benchmark plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = _bars(rows)
    if not bars:
        raise ValueError("no measured rows to plot")
    info = machine()
    where = f"{info['cpu']}, {info['threads']} threads, torch {info['torch']}" + (
        f", {info['cuda']}" if info.get("cuda") else "")
    written = []
    for suite, first in zip(bars, suite_plot_paths(path, list(bars))):
        items = bars[suite]
        providers = list(dict.fromkeys(provider for _, provider, _, _ in items))
        colours = {p: f"C{k % 10}" for k, p in enumerate(providers)}
        pages = [items[k:k + ROWS_PER_FIGURE] for k in range(0, len(items), ROWS_PER_FIGURE)]
        for page_no, page in enumerate(pages, 1):
            fig, ax = plt.subplots(figsize=(13, 1.6 + 0.24 * len(page)))
            ys = list(range(len(page)))
            values = [v for _, _, v, _ in page]
            colour = [colours[p] for _, p, _, _ in page]
            if _is_breakdown(suite):
                ax.barh(ys, values, color=colour, height=0.7)
            else:  # bars grow from the 1x line: right = faster than the baseline, left = slower
                ax.barh(ys, [v - 1.0 for v in values], left=1.0, color=colour, height=0.7)
            for y, (_, _, v, note) in zip(ys, page):  # notes right of the bar (or of the 1x line)
                ax.text(v if _is_breakdown(suite) else max(v, 1.0), y, " " + note, va="center", fontsize=8)
            ax.set_yticks(ys)
            ax.set_yticklabels([label for label, _, _, _ in page], fontsize=8)
            ax.invert_yaxis()
            if _is_breakdown(suite):
                ax.set_xlabel("median time, ms")
                ax.set_xlim(0, max(values) * 1.35)
            else:
                ax.set_xscale("log")
                ax.axvline(1.0, color="0.3", lw=1)
                ax.set_xlim(min(min(values), 1.0) / 1.3, max(max(values), 1.0) * 1.6)
                ax.set_xlabel("speedup over the case's baseline (log scale; right of the line = faster)")
            part = f" ({page_no}/{len(pages)})" if len(pages) > 1 else ""
            ax.set_title(f"i3d-fast bench, suite {suite}{part}: {where}", fontsize=9)
            fig.tight_layout()
            out = first if page_no == 1 else first[: -len(Path(first).suffix)] + f"-{page_no}{Path(first).suffix}"
            try:
                with atomic_write(out) as f:
                    fig.savefig(f, dpi=DPI, format="png")
            finally:
                plt.close(fig)
            written.append(out)
    return written
