"""Static issue-bound ceiling of a GEMM kernel's main loop, read from its SASS (no GPU needed).

The main loop is the innermost backward branch whose body holds tensor-core instructions (HMMA on
sm_80, HGMMA on sm_90). Every warp issues every instruction of the body once per iteration, so with
one instruction issued per cycle by each of an SM's 4 warp schedulers, a CTA of ``w`` warps needs at
least ``w * instructions / 4`` cycles per iteration, while the SM's tensor cores need
``2 * BLOCK_M * BLOCK_N * BLOCK_K * (K steps per iteration) / peak`` cycles. The ceiling is the
ratio (at most 1): the fraction of tensor-core peak the loop can reach if nothing but instruction
issue held it back. Resident CTAs do not change it (both sides scale with them).

Assumed dense tensor-core throughput per SM per cycle (FLOP, a multiply-add counting 2):

* sm_80 (A100): fp16/bf16 2048, tf32 1024 (312 / 156 TFLOPS at 1.41 GHz, 108 SMs);
* sm_90 (H100 SXM): fp16/bf16 4096, tf32 2048 (989 / 495 TFLOPS at 1.83 GHz, 132 SMs).

With these, DIRECT 128x128x64 (8 warps) at 344 instructions per K step per warp on sm_90 gives
512 / 688 = 74%, the figure of the issue's review.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from typing import List, Optional, Tuple

#: Dense 16-bit (fp16/bf16) tensor-core FLOP per cycle per SM; tf32 runs at half this rate.
PEAK_FLOP_PER_CYCLE_16BIT = {80: 2048, 90: 4096}
#: Warp schedulers per SM, each issuing at most one instruction per cycle.
SCHEDULERS_PER_SM = 4
#: Registers and shared memory per SM (bytes), for the resident-CTA count.
REGISTERS_PER_SM = 65536
SHARED_PER_SM = {80: 164 * 1024, 90: 228 * 1024}
MAX_WARPS_PER_SM = {80: 64, 90: 64}
#: Shared memory the driver reserves per CTA (bytes).
SHARED_RESERVED_PER_CTA = 1024

_INSTRUCTION = re.compile(r"/\*([0-9a-f]+)\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_BRANCH = re.compile(r"\bBRA\b.*?`\((\.L_x_\d+)\)")
_HMMA = re.compile(r"\bHMMA\.(\d+)\.")
_HGMMA = re.compile(r"\bHGMMA\.(\d+)x(\d+)x(\d+)\.")
#: HMMA shape suffixes: m, n, k.
_HMMA_SHAPES = {"16816": (16, 8, 16), "1688": (16, 8, 8), "1684": (16, 8, 4)}


def tool(name: str) -> str:
    """Path of ``cuobjdump`` / ``nvdisasm``: Triton's bundled copy, else the CUDA toolkit's."""
    import triton

    for base in (os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin"),
                 "/usr/local/cuda/bin"):
        path = os.path.join(base, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"no {name} in Triton's bundle or /usr/local/cuda/bin")


def disassemble(cubin: bytes) -> str:
    """The SASS text of a cubin (``nvdisasm -c``: code only, branch targets as ``.L_x_N`` labels)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        done = subprocess.run([tool("nvdisasm"), "-c", path], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"nvdisasm failed:\n{done.stderr}")
    return done.stdout


@dataclass(frozen=True)
class MainLoop:
    """The main loop of one kernel, as one warp issues it per iteration."""

    instructions: int
    mma: int  # tensor-core instructions (HMMA / HGMMA) in the body
    #: FLOP of those instructions per warp: an HMMA's are its warp's own; an HGMMA's are shared by
    #: the 4 warps of its warpgroup, so each warp is credited a quarter.
    flop_per_warp: float
    tf32: bool
    inner_loops: int  # backward branches nested in the body (their bodies are counted once)


def main_loop(sass: str) -> Optional[MainLoop]:
    """The innermost loop of ``sass`` (one kernel's disassembly) holding tensor-core instructions,
    or None when no loop holds any."""
    labels = {}
    code: List[Tuple[int, str]] = []
    for line in sass.splitlines():
        label = _LABEL.match(line.strip())
        if label:
            labels[label.group(1)] = len(code)
            continue
        m = _INSTRUCTION.search(line)
        if m:
            code.append((int(m.group(1), 16), m.group(2)))
    loops = []  # (first, last) instruction indices of each backward branch's body
    for i, (_, text) in enumerate(code):
        b = _BRANCH.search(text)
        if b and b.group(1) in labels and labels[b.group(1)] <= i:
            loops.append((labels[b.group(1)], i))
    best = None
    for first, last in loops:
        body = [text for _, text in code[first:last + 1]]
        if not any(_HMMA.search(t) or _HGMMA.search(t) for t in body):
            continue
        if best is None or last - first < best[1] - best[0]:
            best = (first, last)
    if best is None:
        return None
    first, last = best
    mma, flop, tf32 = 0, 0.0, False
    for _, text in code[first:last + 1]:
        h, g = _HMMA.search(text), _HGMMA.search(text)
        if h:
            if h.group(1) not in _HMMA_SHAPES:
                raise ValueError(f"unknown HMMA shape in {text!r}")
            m_, n_, k_ = _HMMA_SHAPES[h.group(1)]
            flop += 2 * m_ * n_ * k_
        elif g:
            flop += 2 * int(g.group(1)) * int(g.group(2)) * int(g.group(3)) / 4
        else:
            continue
        mma += 1
        tf32 = tf32 or ".TF32" in text
    inner = sum(1 for f, l in loops if first <= f and l <= last and (f, l) != best)
    return MainLoop(instructions=last - first + 1, mma=mma, flop_per_warp=flop, tf32=tf32, inner_loops=inner)


@dataclass(frozen=True)
class Ceiling:
    """Issue-bound ceiling of one compiled variant's main loop."""

    instructions_per_k_step: float  # per warp
    mma_per_k_step: float  # tensor-core instructions per K step per warp
    tensor_cycles: float  # per K step per CTA
    issue_cycles: float  # per K step per CTA
    fraction: float  # min(1, tensor_cycles / issue_cycles)
    ctas_per_sm: int  # resident CTAs (registers, shared memory, warps), for reference


def ctas_per_sm(arch: int, registers: int, shared_bytes: int, num_warps: int) -> int:
    """Resident CTAs per SM from registers (rounded to 8 per thread), shared memory and warps."""
    regs = -(-max(registers, 1) // 8) * 8
    by_regs = REGISTERS_PER_SM // (regs * 32 * num_warps)
    by_smem = SHARED_PER_SM[arch] // (shared_bytes + SHARED_RESERVED_PER_CTA)
    return max(0, min(by_regs, by_smem, MAX_WARPS_PER_SM[arch] // num_warps))


def issue_ceiling(loop: MainLoop, arch: int, block_m: int, block_n: int, block_k: int, num_warps: int,
                  registers: int, shared_bytes: int) -> Ceiling:
    """:class:`Ceiling` of ``loop`` for a CTA of ``num_warps`` warps computing a
    ``block_m x block_n`` tile ``block_k`` deep per K step."""
    step_flop = 2 * block_m * block_n * block_k
    k_steps = loop.flop_per_warp * num_warps / step_flop  # K steps per loop iteration
    if k_steps <= 0:
        raise ValueError("main loop has no tensor-core work")
    peak = PEAK_FLOP_PER_CYCLE_16BIT[arch] / (2 if loop.tf32 else 1)
    per_step = loop.instructions / k_steps
    tensor = step_flop / peak
    issue = num_warps * per_step / SCHEDULERS_PER_SM
    return Ceiling(instructions_per_k_step=per_step, mma_per_k_step=loop.mma / k_steps, tensor_cycles=tensor,
                   issue_cycles=issue, fraction=min(1.0, tensor / issue),
                   ctas_per_sm=ctas_per_sm(arch, registers, shared_bytes, num_warps))
