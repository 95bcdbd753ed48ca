"""The SASS main-loop reader and issue-bound ceiling (i3d_fast.kernels.triton.sass)."""
import pytest

from i3d_fast.kernels.triton import aot, sass


def _sass(body_lines, inner=False):
    """A kernel: a prologue, a loop of ``body_lines`` (optionally holding an inner loop), an epilogue."""
    lines, addr = [], 0

    def op(text):
        nonlocal addr
        lines.append(f"        /*{addr:04x}*/                   {text} ;")
        addr += 16

    op("S2R R0, SR_CTAID.X")
    op("@!P0 BRA `(.L_x_0)")
    lines.append(".L_x_1:")
    for text in body_lines:
        op(text)
    if inner:
        lines.append(".L_x_2:")
        op("IADD3 R1, R1, 0x1, RZ")
        op("@P2 BRA `(.L_x_2)")
    op("@P0 BRA `(.L_x_1)")
    lines.append(".L_x_0:")
    op("HMMA.16816.F32 R4, R8, R12, R4")  # outside every loop: not counted
    op("EXIT")
    return "\n".join(lines)


def test_main_loop_counts_its_body_and_mma():
    body = ["LDG.E.128 R8, desc[UR4][R2.64]"] + ["HMMA.16816.F32 R4, R8, R12, R4"] * 4 + ["IADD3 R2, R2, 0x40, RZ"]
    loop = sass.main_loop(_sass(body))
    assert (loop.instructions, loop.mma, loop.inner_loops, loop.tf32) == (len(body) + 1, 4, 0, False)
    assert loop.flop_per_warp == 4 * 2 * 16 * 8 * 16
    nested = sass.main_loop(_sass(body, inner=True))
    assert (nested.instructions, nested.inner_loops) == (len(body) + 3, 1)
    assert sass.main_loop(_sass(["IADD3 R2, R2, 0x40, RZ"])) is None  # no tensor-core loop


def test_ceiling_reproduces_the_reviewed_figures():
    # DIRECT 128x128x64, 8 warps, sm_90: 4 HGMMA.64x128x16 per warp (2 warpgroups) and 344 instructions
    # per K step -> 512 tensor cycles / 688 issue cycles = 74%; 128x64x64 with 4 warps and 475 -> 54%.
    body = ["HGMMA.64x128x16.F32 R24, gdesc[UR8].tnspB, R24"] * 4 + ["NOP"] * 339
    c = sass.issue_ceiling(sass.main_loop(_sass(body)), 90, 128, 128, 64, 8, registers=146, shared_bytes=98304)
    assert (c.instructions_per_k_step, c.mma_per_k_step, c.tensor_cycles, c.issue_cycles) == (344, 4, 512, 688)
    assert c.fraction == pytest.approx(0.744, abs=1e-3) and c.ctas_per_sm == 1
    body = ["HGMMA.64x64x16.F32 R24, gdesc[UR8].tnspB, R24"] * 8 + ["NOP"] * 466
    c = sass.issue_ceiling(sass.main_loop(_sass(body)), 90, 128, 64, 64, 4, registers=212, shared_bytes=73728)
    assert c.fraction == pytest.approx(256 / 475) and c.ctas_per_sm == 2
    # tf32 runs at half the 16-bit rate; a loop issuing fewer instructions than MMA cycles caps at 1.
    body = ["HMMA.1688.F32.TF32 R4, R8, R12, R4"] * 64
    c = sass.issue_ceiling(sass.main_loop(_sass(body)), 80, 128, 64, 32, 4, registers=128, shared_bytes=1024)
    assert c.tensor_cycles == 512 and c.fraction == 1.0


@pytest.mark.slow
def test_compiled_variant_main_loop_is_found():
    name = "conv3d.direct.fp16.vec.64x64x64-w4-s3"
    rows = {r["arch"]: r for r in aot.compile_all((80, 90), [name], jobs=2)}
    # 64x64x64 with 4 warps: 32 HMMA.16816 per warp per K step on sm_80, one HGMMA.64x64x16 per
    # warpgroup per 16 of K (4 per warp per K step) on sm_90.
    assert rows[80]["mma_per_k_step"] == 32 and rows[90]["mma_per_k_step"] == 4
    for r in rows.values():
        assert r["inner_loops"] == 0 and r["loop_mma"] > 0
        assert r["mma_per_k_step"] < r["instructions_per_k_step"] < 2000
        assert 0 < r["ceiling"] <= 1
