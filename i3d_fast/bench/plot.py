"""The benchmark plot: per case, each provider's median time (bars, log scale) with its 20-80% quantile
range, the baseline in grey and speedups written beside the bars. Needs matplotlib (``bench`` extra)."""
from __future__ import annotations

from typing import Dict, List, Tuple

from .._atomic import atomic_write
from .._optional import require
from .report import Row, machine, speedups


def write_plot(rows: List[Row], path: str, title: str = "") -> None:
    """Writes the PNG plot of ``rows`` to ``path`` atomically. Rows that were not measured are listed
    under the plot, never drawn."""
    matplotlib = require("matplotlib", "bench", "the benchmark plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratio = speedups(rows)
    measured = [(i, r) for i, r in enumerate(rows) if r.timing is not None]
    if not measured:
        raise ValueError("no measured rows to plot")
    providers: List[str] = []
    for _, r in measured:
        if not r.baseline and r.provider not in providers:
            providers.append(r.provider)
    colours: Dict[str, str] = {p: f"C{k % 10}" for k, p in enumerate(providers)}
    cases: List[Tuple[str, str]] = []
    for _, r in measured:
        if (r.suite, r.case) not in cases:
            cases.append((r.suite, r.case))

    height = 0.8
    fig, ax = plt.subplots(figsize=(11, 1.4 + 0.3 * len(measured) + 0.45 * len(cases)))
    y = 0.0
    ticks, labels = [], []
    for suite, case in cases:
        group = [(i, r) for i, r in measured if (r.suite, r.case) == (suite, case)]
        group.sort(key=lambda item: not item[1].baseline)
        ax.text(0.005, y - 0.55, f"[{suite}] {case}", transform=ax.get_yaxis_transform(), fontsize=7,
                fontweight="bold", va="bottom")
        for i, r in group:
            t = r.timing
            colour = "0.6" if r.baseline else colours[r.provider]
            ax.barh(y, t.median_ms, height=height, color=colour,
                    xerr=[[t.median_ms - t.q20_ms], [t.q80_ms - t.median_ms]], error_kw={"lw": 0.8, "capsize": 2})
            note = f" {t.median_ms:.3g} ms" + ("" if r.baseline or i not in ratio else f"  {ratio[i]:.2f}x")
            ax.text(t.q80_ms, y, note, va="center", fontsize=7)
            ticks.append(y)
            labels.append(r.provider + (" (baseline)" if r.baseline else ""))
            y += 1
        y += 0.9
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_ylim(y - 0.9, -1.6)
    ax.set_xscale("log")
    ax.set_xlabel("median time per call, ms (log scale; whiskers: 20-80% quantiles)")
    handles = [plt.Rectangle((0, 0), 1, 1, color="0.6")] + [plt.Rectangle((0, 0), 1, 1, color=colours[p])
                                                            for p in providers]
    ax.legend(handles, ["baseline"] + providers, fontsize=7, loc="lower right")
    info = machine()
    ax.set_title(title or f"i3d-fast bench: {info['cpu']}, {info['threads']} threads, torch {info['torch']}"
                 + (f", {info['cuda']}" if info.get("cuda") else ""), fontsize=9)
    skipped = [f"{r.case} / {r.provider}: not measured{' (' + r.note + ')' if r.note else ''}"
               for r in rows if r.timing is None]
    if skipped:
        fig.text(0.01, 0.005, "\n".join(skipped[:8]), fontsize=6, va="bottom")
    fig.tight_layout(rect=(0, 0.02 * min(len(skipped), 8), 1, 1))
    try:
        with atomic_write(path) as f:
            fig.savefig(f, dpi=120, format="png")
    finally:
        plt.close(fig)
