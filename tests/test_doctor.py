"""``i3d-fast doctor`` and the warning when the C++ extension is missing."""
import sys

import pytest
import torch

from i3d_fast import cli, ops
from i3d_fast.kernels import cpu as cpu_kernels


def test_doctor_lists_every_op_and_backend(capsys):
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    for op in ("conv3d", "conv3d_bn_relu", "max_pool3d", "flow.tvl1"):
        assert op in out
    assert "C++ extension i3d_fast._C:" in out and "ISA:" in out
    assert "triton" in out and "no: needs a CUDA tensor" in out  # the reason, not just "no"
    assert "reference  available" in out
    assert "kernel timings: in memory only" in out  # the tests keep them in memory (conftest)
    assert "malloc: the C library's default" in out  # and glibc's default malloc


def test_doctor_counts_the_timing_file_of_this_build(tmp_path, monkeypatch, capsys):
    import json

    from i3d_fast.kernels.cpu import autotune

    monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path))
    assert cli.main(["doctor"]) == 0
    assert "(none yet:" in capsys.readouterr().out
    autotune.cache_path().write_text(json.dumps({"fingerprint": autotune.fingerprint(), "verdicts": {"a": [1, 2]},
                                                 "choices": {"b": [["onednn", 1.0]], "c": [["onednn", 1.0]]}}))
    assert cli.main(["doctor"]) == 0
    assert "(3 measured configurations for this build)" in capsys.readouterr().out


@pytest.fixture
def without_extension(monkeypatch):
    """i3d_fast._C made unimportable (as in a source checkout without a build)."""
    import i3d_fast

    monkeypatch.setitem(sys.modules, "i3d_fast._C", None)
    monkeypatch.delattr(i3d_fast, "_C", raising=False)
    cpu_kernels._load.cache_clear()
    cpu_kernels._profiled.cache_clear()
    yield
    monkeypatch.undo()
    cpu_kernels._load.cache_clear()
    cpu_kernels._profiled.cache_clear()


def test_missing_extension_warns_once_and_falls_back(without_extension, capsys):
    x = torch.randn(1, 4, 4, 6, 6)
    with pytest.warns(RuntimeWarning, match="i3d_fast._C .the C\\+\\+ CPU kernels. is not built.*doctor"):
        y = ops.max_pool3d(x, 3, 1, "same")
    torch.testing.assert_close(y, ops.max_pool3d(x, 3, 1, "same", backend="reference"))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second use stays quiet
        ops.max_pool3d(x, 3, 1, "same")
    assert cli.main(["doctor"]) == 0
    assert "NOT BUILT" in capsys.readouterr().out
