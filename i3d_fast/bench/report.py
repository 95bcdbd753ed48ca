"""Benchmark rows, the printed table and the JSON file."""
from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import torch

from .._atomic import atomic_write
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
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu"] = names[0]
    except OSError:
        pass
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
