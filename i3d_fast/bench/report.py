"""Benchmark rows, the printed table and the JSON file."""
from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import torch

from .. import malloc
from .._atomic import atomic_write
from .._cpu import cpu_flags, cpu_model
from .timing import Timing


@dataclass
class Row:
    suite: str
    case: str
    provider: str
    timing: Optional[Timing]  # None: not measured (see note)
    baseline: bool = False
    note: str = ""
    extra: Dict[str, float] = field(default_factory=dict)


def machine() -> Dict[str, object]:
    info: Dict[str, object] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "malloc": malloc.setting(),
    }
    return info


def speedups(rows: List[Row]) -> Dict[int, float]:
    """Row index -> baseline median / row median, for rows whose case has a measured baseline."""
    base = {(r.suite, r.case): r.timing.median_ms for r in rows if r.baseline and r.timing}
    return {i: base[(r.suite, r.case)] / r.timing.median_ms
            for i, r in enumerate(rows) if r.timing and (r.suite, r.case) in base}


def format_table(rows: List[Row]) -> str:
    ratio = speedups(rows)
    header = ("suite", "case", "provider", "median ms", "q20 ms", "q80 ms", "speedup", "note")
    lines = [header]
    for i, r in enumerate(rows):
        t = r.timing
        lines.append((r.suite, r.case, r.provider + (" (baseline)" if r.baseline else ""),
                      f"{t.median_ms:.2f}" if t else "not measured", f"{t.q20_ms:.2f}" if t else "",
                      f"{t.q80_ms:.2f}" if t else "", f"{ratio[i]:.2f}x" if i in ratio else "",
                      "; ".join([r.note] * bool(r.note) + [f"{k} {v:g}" for k, v in r.extra.items()])))
    widths = [max(len(str(line[c])) for line in lines) for c in range(len(header))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines)


def summary(rows: List[Row]) -> str:
    """Per suite: the geometric-mean speedup of i3d_fast's measured rows (every non-baseline row when
    no provider is named i3d_fast) over their case's baseline, the best and worst case, and how many
    rows were not measured (collapsed to one line)."""
    ratio = speedups(rows)
    lines = []
    for suite in dict.fromkeys(r.suite for r in rows):
        compared = [(ratio[i], r) for i, r in enumerate(rows) if r.suite == suite and i in ratio and not r.baseline]
        # i3d_fast's own rows when the suite names them (others are alternative baselines)
        picked = [(v, r) for v, r in compared if "i3d_fast" in r.provider] or compared
        # rows without a timing are "not measured", except a suite's own summary rows (they carry values)
        missing = [r for r in rows if r.suite == suite and r.timing is None and not r.extra]
        if picked:
            geomean = math.exp(sum(math.log(v) for v, _ in picked) / len(picked))
            best, worst = max(picked, key=lambda p: p[0]), min(picked, key=lambda p: p[0])
            lines.append(f"{suite}: {len(picked)} comparisons, geomean speedup {geomean:.2f}x; "
                         f"best {best[0]:.2f}x ({best[1].case}: {best[1].provider}); "
                         f"worst {worst[0]:.2f}x ({worst[1].case}: {worst[1].provider})")
        elif not missing:
            lines.append(f"{suite}: {sum(r.timing is not None for r in rows if r.suite == suite)} rows, no baseline")
        if missing:
            notes = sorted({r.note for r in missing if r.note})
            lines.append(f"{suite}: {len(missing)} rows not measured ({'; '.join(notes)[:160]})")
    return "\n".join(lines)


def format_markdown(rows: List[Row]) -> str:
    """Every row as a Markdown table (to paste into an issue or a README)."""
    ratio = speedups(rows)
    lines = ["| suite | case | provider | median ms | speedup | note |", "|---|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        note = "; ".join([r.note] * bool(r.note) + [f"{k} {v:g}" for k, v in r.extra.items()])
        lines.append(f"| {r.suite} | {r.case} | {r.provider}{' (baseline)' if r.baseline else ''} | "
                     f"{f'{r.timing.median_ms:.2f}' if r.timing else 'not measured'} | "
                     f"{f'{ratio[i]:.2f}x' if i in ratio else ''} | {note.replace('|', '/')} |")
    return "\n".join(lines)


def write_json(rows: List[Row], path: str) -> None:
    """Writes machine info and every row (with speedups) atomically."""
    ratio = speedups(rows)
    payload = {"machine": machine(),
               "rows": [{**asdict(r), "speedup": ratio.get(i)} for i, r in enumerate(rows)]}
    write_text(json.dumps(payload, indent=2), path)


def write_text(text: str, path: str) -> None:
    """Writes ``text`` to ``path`` atomically (temp file beside it, then rename)."""
    with atomic_write(path, "w") as f:
        f.write(text)
